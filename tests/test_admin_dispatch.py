"""Admin endpoints are dispatched on the path routing reads, and answer to one spelling only.

An ingress that keeps ``/__gateway/*`` away from the public must see every request that reaches
an admin endpoint: an encoded or doubled spelling of the prefix never does (red team, finding 4),
and no admin answer is a redirect built from the client's ``Host`` (finding 6).
"""

from __future__ import annotations

import pytest

from tests.factories import open_route_yaml


@pytest.fixture
def client(make_app):
    return make_app({"vs.yaml": open_route_yaml("http://upstream.test:8000")}).test_client()


@pytest.mark.parametrize("path", ["/__gateway/config", "/__gateway/health/live", "/__gateway/metrics"])
def test_admin_endpoints_answer_to_their_own_spelling(client, path):
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("path", ["/%5f_gateway/config", "/%5F%5Fgateway/health/ready", "/__gateway/%63onfig",
                                  "/__gateway//config", "/__gateway/./config", "/x/../__gateway/config",
                                  # red team pass 2, finding 2: leading and trailing slashes
                                  "//__gateway/config", "///__gateway/metrics", "/__gateway/config/",
                                  "http://gw.test//__gateway/config"])
def test_another_spelling_of_an_admin_path_is_not_found_and_never_forwarded(client, requests_mock, path):
    upstream = requests_mock.get("http://upstream.test:8000/__gateway/config", text="upstream")
    response = client.get("/", environ_overrides={"RAW_URI": path})     # the request target as sent

    assert (response.status_code, response.json["error"]) == (404, "not_found")
    assert not upstream.called


def test_an_encoded_slash_in_the_admin_prefix_is_refused_as_in_routed_paths(client):
    response = client.get("/__gateway%2fconfig")

    assert (response.status_code, response.json["error"]) == (400, "path_invalid")


def test_an_admin_path_never_redirects_to_the_clients_host(client):
    response = client.get("/__gateway//health/live", headers={"Host": "evil.example.com"})

    assert response.status_code == 404
    assert "Location" not in response.headers


def test_options_on_an_admin_endpoint_is_a_json_405(client):
    response = client.options("/__gateway/metrics")

    assert (response.status_code, response.json["error"]) == (405, "method_not_allowed")
