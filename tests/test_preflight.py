"""The decision on a request's head, before its body is read (``environ[PREFLIGHT]``, asked by the worker)."""

from __future__ import annotations

import logging
import typing as t

import pytest
from werkzeug.test import EnvironBuilder

from gateway_app.preflight import PREFLIGHT
from gateway_app.preflight import PREFLIGHT_AUTHENTICATED
from gateway_app.preflight import PREFLIGHT_PASSED
from gateway_app.preflight import PREFLIGHT_PRINCIPAL
from gateway_app.preflight import PREFLIGHT_UNFINISHED

CONFIG = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: idp, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://idp.test/introspect
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /secure}]
      routeAction: {single: {url: 'http://upstream.test:8000'}}
      options: {extauth: {configRef: {name: idp, namespace: gloo-system}}}
    - matchers: [{prefix: /small}]
      routeAction: {single: {url: 'http://upstream.test:8000'}}
      options: {maxRequestBodyBytes: 100}
    - matchers: [{prefix: /}]
      routeAction: {single: {url: 'http://upstream.test:8000'}}
"""


@pytest.fixture
def app(make_app: t.Callable[..., t.Any]) -> t.Any:
    return make_app({"vs.yaml": CONFIG})


def preflight(app: t.Any, path: str, length: int = 1000, **headers: str) -> tuple[str, dict, bytes]:
    """Call the app as the worker does for a head whose body has not all arrived: (status, environ, body)."""
    environ = EnvironBuilder(path=path, method="POST", headers={"Host": "api.example.com", **headers}).get_environ()
    environ["CONTENT_LENGTH"] = str(length)          # declared, not sent: the body has not arrived
    environ[PREFLIGHT] = True
    answer: list[str] = []
    chunks = app(environ, lambda status, headers, exc_info=None: answer.append(status))
    body = b"".join(chunks)
    getattr(chunks, "close", lambda: None)()
    return answer[0], environ, body


def test_a_request_that_would_go_on_is_marked_passed_without_forwarding_or_a_record(app, requests_mock,
                                                                                    access_records):
    status, environ, _ = preflight(app, "/open/upload")
    assert status.startswith("204") and environ[PREFLIGHT] == PREFLIGHT_PASSED
    assert not requests_mock.called and not access_records


def test_a_request_with_a_validated_token_is_marked_authenticated(app, requests_mock, access_records):
    """Its body outranks anonymous ones for the worker's buffers (the worker's ``_make_room``)."""
    idp = requests_mock.post("http://idp.test/introspect", json={"active": True, "sub": "alice"})
    status, environ, _ = preflight(app, "/secure/upload", Authorization="Bearer tok-alice-1234")
    assert status.startswith("204") and environ[PREFLIGHT] == PREFLIGHT_AUTHENTICATED
    assert idp.call_count == 1 and not access_records
    principal = environ[PREFLIGHT_PRINCIPAL]          # opaque: a hash of the subject, never the subject
    assert len(principal) == 16 and "alice" not in principal
    _, again, _ = preflight(app, "/secure/other", Authorization="Bearer tok-alice-1234")
    assert again[PREFLIGHT_PRINCIPAL] == principal


def test_a_passed_request_the_worker_ends_itself_is_recorded_once_with_the_workers_answer(
        app, requests_mock, access_records):
    """Red team 11: a 408 after a passed head had no access record. The worker answers it (408, 503)
    and calls ``PREFLIGHT_UNFINISHED``; the record names the route, the subject and that answer."""
    requests_mock.post("http://idp.test/introspect", json={"active": True, "sub": "alice"})
    status, environ, _ = preflight(app, "/secure/upload", Authorization="Bearer tok-alice-1234")
    assert status.startswith("204") and not access_records
    environ[PREFLIGHT_UNFINISHED](408, "body_too_slow")
    [record] = access_records
    assert record.fields["status"] == 408 and record.fields["reason"] == "body_too_slow"
    assert record.fields["auth"] == "allowed" and record.fields["sub"] == "alice"
    assert record.fields["route"] and record.fields["path"] == "/secure/upload" and record.fields["method"] == "POST"


def test_a_request_refused_on_its_head_leaves_nothing_for_the_worker_to_record(app):
    _, environ, _ = preflight(app, "/secure/upload")
    assert PREFLIGHT_UNFINISHED not in environ


def test_a_request_without_a_credential_names_no_principal(app):
    _, environ, _ = preflight(app, "/open/upload")
    assert environ[PREFLIGHT] == PREFLIGHT_PASSED and PREFLIGHT_PRINCIPAL not in environ


def test_a_request_refused_on_its_head_gets_its_answer_and_one_record(app, requests_mock, access_records):
    status, environ, body = preflight(app, "/secure/upload")
    assert status.startswith("403") and b"token_missing" in body and environ[PREFLIGHT] is True
    assert not requests_mock.called and len(access_records) == 1


def test_a_declared_size_above_the_routes_limit_is_refused_413_on_the_head(app, requests_mock):
    status, _, _ = preflight(app, "/small/upload", length=101)
    assert status.startswith("413") and not requests_mock.called


def test_an_admin_path_is_passed_without_running_its_endpoint(app, caplog):
    with caplog.at_level(logging.DEBUG):
        status, environ, body = preflight(app, "/__gateway/config")
    assert status.startswith("204") and environ[PREFLIGHT] == PREFLIGHT_PASSED and body == b""
