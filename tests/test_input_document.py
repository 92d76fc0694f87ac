from __future__ import annotations

import dataclasses
import typing as t

import pytest

from gateway_app.auth.state import AuthState
from gateway_app.auth.state import TokenInfo
from gateway_app.incoming import IncomingRequest
from gateway_app.policy.input_document import build_input
from gateway_app.policy.input_document import parse_path
from tests.factories import incoming_request


@dataclasses.dataclass(frozen=True)
class Route:
    name: str = "petstore"
    labels: t.Mapping[str, str] = dataclasses.field(default_factory=lambda: {"usagePlans": "dev-portal"})
    api_product_id: str | None = "petstore"
    usage_plan: str | None = "gold"


def make_request(**overrides: t.Any) -> IncomingRequest:
    fields: dict[str, t.Any] = {
        "scheme": "https",
        "host": "api.example.com:8443",
        "path": "/api/pets",
        "query_string": "limit=1&tag=a&tag=b",
        "headers": {"authorization": "Bearer abc.def.ghi", "x-team": "blue"},
        "query": {"limit": ["1"], "tag": ["a", "b"]},
        "remote_addr": "10.0.0.7",
        "request_id": "req-42",
    }
    return incoming_request(**{**fields, **overrides})


def jwt_state(claims: dict[str, t.Any] | None = None) -> AuthState:
    state = AuthState(metadata={"config_0": {"sub": "my-client"}})
    state.accept_token(TokenInfo(claims=claims or {"sub": "my-client", "scope": "openid petstore"}, kind="jwt"))
    return state


def test_input_has_the_gloo_and_opa_envoy_shapes_field_by_field():
    document = build_input(make_request(), Route(), jwt_state())

    http = {
        "method": "GET",
        "path": "/api/pets?limit=1&tag=a&tag=b",
        "host": "api.example.com:8443",
        "headers": {"host": "api.example.com:8443", "authorization": "Bearer abc.def.ghi", "x-team": "blue"},
        "scheme": "https",
        "query": "limit=1&tag=a&tag=b",
        "id": "req-42",
        "protocol": "HTTP/1.1",
    }
    attributes = {
        "request": {"http": http},
        "metadata_context": {"filter_metadata": {"io.solo.gloo.apimanagement": {
            "api_product_id": "petstore", "usagePlan": "gold", "usage_plan": "gold"}}},
        "context_extensions": {"usagePlans": "dev-portal"},
        "source": {"address": {"socketAddress": {"address": "10.0.0.7"}}},
    }
    assert document == {
        "check_request": {"attributes": attributes},
        "state": {"jwtAccessToken": {"sub": "my-client", "scope": "openid petstore"},
                  "dynamicMetadata": {"config_0": {"sub": "my-client"}}},
        "http_request": {key: http[key] for key in ("method", "path", "host", "headers", "query")},
        "attributes": attributes,
        "parsed_path": ["api", "pets"],
        "parsed_query": {"limit": ["1"], "tag": ["a", "b"]},
        "version": {"ext_authz": "v3", "encoding": "protojson"},
    }


def test_gloo_and_opa_envoy_shapes_share_one_attributes_object():
    document = build_input(make_request(), Route(), jwt_state())

    assert document["attributes"] is document["check_request"]["attributes"]
    assert document["http_request"]["headers"] is document["attributes"]["request"]["http"]["headers"]


def test_path_without_query_has_no_question_mark():
    document = build_input(make_request(query_string="", query={}), Route(), jwt_state())

    http = document["attributes"]["request"]["http"]
    assert (http["path"], http["query"], document["parsed_query"]) == ("/api/pets", "", {})


def test_authorization_header_is_passed_as_sent_for_policies_that_parse_it():
    document = build_input(make_request(), Route(), jwt_state())

    assert document["attributes"]["request"]["http"]["headers"]["authorization"] == "Bearer abc.def.ghi"


def test_headers_are_a_copy_so_the_request_stays_untouched():
    request = make_request()
    document = build_input(request, Route(), jwt_state())

    assert document["http_request"]["headers"] is not request.headers


def test_state_omits_token_claims_that_do_not_exist():
    document = build_input(make_request(), Route(), AuthState())

    assert document["state"] == {"dynamicMetadata": {}}


def test_introspection_claims_go_under_state_introspection():
    state = AuthState()
    state.accept_token(TokenInfo(claims={"active": True, "sub": "svc"}, kind="introspection"))

    document = build_input(make_request(), Route(), state)

    assert document["state"] == {"introspection": {"active": True, "sub": "svc"}, "dynamicMetadata": {}}


@pytest.mark.parametrize(("route_product", "expected"), [
    ("petstore", "petstore"),
    (None, ""),
], ids=["the route's product", "no product is an empty string"])
def test_api_product_id_comes_from_the_route(route_product, expected):
    document = build_input(make_request(), Route(api_product_id=route_product), jwt_state())

    metadata = document["check_request"]["attributes"]["metadata_context"]["filter_metadata"]
    assert metadata["io.solo.gloo.apimanagement"]["api_product_id"] == expected


def test_missing_usage_plan_and_labels_are_empty_not_absent():
    document = build_input(make_request(), Route(labels={}, usage_plan=None), jwt_state())

    attributes = document["attributes"]
    apimanagement = attributes["metadata_context"]["filter_metadata"]["io.solo.gloo.apimanagement"]
    assert (apimanagement["usagePlan"], apimanagement["usage_plan"]) == ("", "")
    assert attributes["context_extensions"] == {}


def test_source_address_is_absent_when_the_client_address_is_unknown():
    document = build_input(make_request(remote_addr=""), Route(), jwt_state())

    assert "source" not in document["attributes"]


@pytest.mark.parametrize(("path", "segments"), [
    ("/", []),
    ("/api/pets", ["api", "pets"]),
    ("//api//pets/", ["api", "pets"]),
    ("/files/a%20b/c%2Fd", ["files", "a b", "c/d"]),
], ids=["root has no segments", "plain segments", "empty segments are dropped", "segments are percent-decoded"])
def test_parsed_path_splits_on_slash_and_decodes(path, segments):
    assert parse_path(path) == segments
    assert build_input(make_request(path=path), Route(), jwt_state())["parsed_path"] == segments


def test_parsed_query_is_read_from_the_query_string_when_not_given_parsed():
    request = make_request(query_string="a=1&a=2&empty=&flag", query={})

    document = build_input(request, Route(), jwt_state())

    assert document["parsed_query"] == {"a": ["1", "2"], "empty": [""], "flag": [""]}


def test_protocol_is_taken_from_the_request_when_it_knows_it():
    @dataclasses.dataclass(frozen=True)
    class Http2Request(IncomingRequest):
        protocol: str = "HTTP/2"

    request = Http2Request(**dataclasses.asdict(make_request()))

    assert build_input(request, Route(), jwt_state())["attributes"]["request"]["http"]["protocol"] == "HTTP/2"
