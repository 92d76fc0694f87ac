"""Introspection over real TLS: a local HTTPS IdP on 127.0.0.1 with a CA generated per session."""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import typing as t

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request
from werkzeug.wrappers import Response

from gateway_app.auth.introspection import IntrospectionValidator
from gateway_app.auth.introspection import parse_introspection_settings
from gateway_app.config.fields import Node
from gateway_app.config.secrets import empty_store
from gateway_app.errors import IdentityProviderError
from tls_material import TlsMaterial
from tls_material import write_tls_material

TOKEN = "opaque-tls-token"


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> TlsMaterial:
    return write_tls_material(tmp_path_factory.mktemp("tls"))


@Request.application
def _introspection_endpoint(request: Request) -> Response:
    active = request.method == "POST" and request.form.get("token") == TOKEN
    body = {"active": True, "sub": "alice"} if active else {"active": False}
    return Response(json.dumps(body), mimetype="application/json")


@contextlib.contextmanager
def https_idp(material: TlsMaterial, *, require_client_cert: bool = False) -> t.Iterator[str]:
    """Serve the endpoint over HTTPS on a free 127.0.0.1 port; yields its URL."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(material.server_cert, material.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(material.ca_cert)
    server = make_server("127.0.0.1", 0, _introspection_endpoint, threaded=True, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}/introspect"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def validator_for(url: str, **tls: t.Any) -> IntrospectionValidator:
    data = {"introspectionUrl": url, "timeout": "3s", "retries": 0}
    if tls:
        data["tls"] = {key: str(value) if not isinstance(value, bool) else value for key, value in tls.items()}
    node = Node(data, "conf/auth.yaml: AuthConfig gloo-system/tls", "spec.introspection")
    return IntrospectionValidator(parse_introspection_settings(node, empty_store(), "gloo-system"))


@contextlib.contextmanager
def closing(validator: IntrospectionValidator) -> t.Iterator[IntrospectionValidator]:
    try:
        yield validator
    finally:
        validator.close()


def test_server_is_trusted_with_the_configured_ca_bundle(material):
    with https_idp(material) as url, closing(validator_for(url, caBundle=material.ca_cert)) as validator:
        assert validator.validate(TOKEN).subject == "alice"


def test_server_is_not_trusted_without_the_ca_bundle(material, caplog):
    with https_idp(material) as url, closing(validator_for(url)) as validator:
        with pytest.raises(IdentityProviderError) as caught:
            validator.validate(TOKEN)
    assert "TLS" in str(caught.value)
    assert TOKEN not in caplog.text


def test_server_is_not_trusted_with_an_unrelated_ca_bundle(material):
    with https_idp(material) as url, closing(validator_for(url, caBundle=material.other_ca_cert)) as validator:
        with pytest.raises(IdentityProviderError):
            validator.validate(TOKEN)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_insecure_skip_verify_connects_and_warns_once_at_construction(material, caplog):
    caplog.set_level(logging.WARNING, logger="gateway_app.auth.introspection")
    with https_idp(material) as url:
        with closing(validator_for(url, insecureSkipVerify=True)) as validator:
            assert f"TLS verification disabled for {url}" in caplog.text
            assert validator.validate(TOKEN).subject == "alice"


def test_mutual_tls_succeeds_with_the_client_certificate(material):
    with https_idp(material, require_client_cert=True) as url:
        validator = validator_for(url, caBundle=material.ca_cert, clientCertificate=material.client_cert,
                                  clientKey=material.client_key)
        with closing(validator):
            assert validator.validate(TOKEN).subject == "alice"


def test_mutual_tls_fails_without_a_client_certificate(material):
    with https_idp(material, require_client_cert=True) as url:
        with closing(validator_for(url, caBundle=material.ca_cert)) as validator:
            with pytest.raises(IdentityProviderError):
                validator.validate(TOKEN)
