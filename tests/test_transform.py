"""Header templates (Gloo ``transformationTemplate``) compiled once, rendered per request."""

from __future__ import annotations

import pytest

from gateway_app.auth.state import AuthState
from gateway_app.errors import ConfigError
from gateway_app.transform import HeaderTemplate
from gateway_app.transform import HeaderTransforms
from gateway_app.transform import compile_template
from tests.factories import incoming_request

SEED_TEMPLATE = '{{ dynamic_metadata("config_0:sub", "envoy.filters.http.ext_authz")}}'
REQUEST = incoming_request(host="h", headers={"x-tenant": "acme", "x-customer": "forged"}, send_host=False)


def render(text: str, metadata: dict | None = None) -> str:
    template = HeaderTemplate(name="x", parts=compile_template(text))
    return template.render(REQUEST, AuthState(metadata=metadata or {}))


def test_the_seed_template_renders_the_sub_of_config_0():
    assert render(SEED_TEMPLATE, {"config_0": {"sub": "my-client"}}) == "my-client"


@pytest.mark.parametrize("text, expected", [
    ('{{dynamic_metadata("config_0:sub")}}', "my-client"),
    ('user={{ dynamic_metadata("config_0:sub") }};tenant={{ header("X-Tenant") }}', "user=my-client;tenant=acme"),
    ('{{ request_header("x-tenant") }}', "acme"),
    ('{{ dynamic_metadata("config_1:sub") }}', ""),
    ('{{ dynamic_metadata("config_0:sub:deeper") }}', ""),
    ('{{ dynamic_metadata("config_0:address:city") }}', "Lyon"),
    ('{{ dynamic_metadata("config_0:groups") }}', "dev,ops"),
    ('{{ dynamic_metadata("config_0:age") }}', "42"),
    ('{{ dynamic_metadata("config_0:admin") }}', "true"),
    ('{{ dynamic_metadata("config_0:address") }}', '{"city":"Lyon","country":"FR"}'),
    ("static", "static"),
], ids=["namespace argument optional", "literals around calls", "request_header", "missing config: empty",
        "path through a string: empty", "nested path", "array comma-joined", "number as JSON",
        "boolean as JSON", "object as JSON", "plain text"])
def test_template_rendering(text, expected):
    metadata = {"config_0": {"sub": "my-client", "groups": ["dev", "ops"], "age": 42, "admin": True,
                             "address": {"country": "FR", "city": "Lyon"}}}
    assert render(text, metadata) == expected


@pytest.mark.parametrize("text, message", [
    ('{{ dynamic_metadata("config_0:sub", "other.filter") }}', "namespace must be"),
    ('{{ dynamic_metadata("") }}', "needs a key"),
    ('{{ body() }}', "unsupported template expression"),
    ('{{ env("HOME") }}', "unsupported template function env"),
    ('{{ dynamic_metadata("config_0:sub") ', "unbalanced"),
    ('x }}', "unbalanced"),
], ids=["foreign metadata namespace", "empty key", "call without string argument", "unknown function",
        "unclosed braces", "stray closing braces"])
def test_bad_templates_are_config_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        compile_template(text, where="conf/vs.yaml: VirtualService default/vs: spec...x-customer")


def test_metadata_is_rendered_as_header_text():
    """The one encoding of claims (gateway_app.header_values.header_text), inside a template's literal text."""
    transforms = HeaderTransforms((HeaderTemplate("x-who", compile_template(
        'user={{ dynamic_metadata("config_0:name") }}')),))
    headers: dict[str, str] = {}
    transforms.render(REQUEST, AuthState(metadata={"config_0": {"name": "山田\r\nx: y"}}), headers)
    assert headers == {"x-who": "user=UTF-8''%E5%B1%B1%E7%94%B0%0D%0Ax%3A%20y"}


def test_empty_render_sets_no_header():
    transforms = HeaderTransforms((HeaderTemplate("x-customer", compile_template(SEED_TEMPLATE)),))
    headers: dict[str, str] = {}
    transforms.render(REQUEST, AuthState(), headers)
    assert headers == {}
    assert transforms.header_names == {"x-customer"}


def test_headers_to_append_appends_to_the_value_already_set_instead_of_overwriting_it():
    transforms = HeaderTransforms((HeaderTemplate("x-tags", compile_template("first")),
                                   HeaderTemplate("x-tags", compile_template("second"), append=True),
                                   HeaderTemplate("x-new", compile_template("only"), append=True)))
    headers: dict[str, str] = {"x-from-claims": "c"}
    transforms.render(REQUEST, AuthState(), headers)
    assert headers == {"x-from-claims": "c", "x-tags": "first,second", "x-new": "only"}


def test_route_templates_override_virtual_host_templates_for_the_same_header():
    host = HeaderTransforms((HeaderTemplate("x-a", compile_template("host-a")),
                             HeaderTemplate("x-b", compile_template("host-b"))))
    route = HeaderTransforms((HeaderTemplate("x-b", compile_template("route-b")),))
    headers: dict[str, str] = {}
    host.merged_with(route).render(REQUEST, AuthState(), headers)
    assert headers == {"x-a": "host-a", "x-b": "route-b"}
    assert host.merged_with(None) is host
