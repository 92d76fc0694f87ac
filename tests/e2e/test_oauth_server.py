"""The test OAuth server itself, through real HTTP against gunicorn."""

from __future__ import annotations

import time

import jwt
import pytest
import requests

from tests.support.servers import ServerProcess
from tests.support.servers import free_port
from tests.support.servers import oauth_server

from .conftest import token

TIMEOUT = 10



def introspect(http: requests.Session, oauth: ServerProcess, access_token: str,
               path: str = "/admin/oauth2/introspect", auth: tuple[str, str] | None = ("my-client", "secret"),
               ) -> requests.Response:
    return http.post(oauth.url + path, data={"token": access_token}, auth=auth, timeout=TIMEOUT)


def jwks_key(http: requests.Session, oauth: ServerProcess, kid: str) -> jwt.PyJWK:
    jwks = http.get(oauth.url + "/.well-known/jwks.json", timeout=TIMEOUT).json()
    return jwt.PyJWKSet.from_dict(jwks)[kid]


def published_kids(http: requests.Session, oauth: ServerProcess) -> list[str]:
    return [k["kid"] for k in http.get(oauth.url + "/.well-known/jwks.json", timeout=TIMEOUT).json()["keys"]]


def test_client_credentials_grant_returns_a_hydra_shaped_opaque_token(http, oauth):
    response = http.post(oauth.url + "/oauth2/token", data={"grant_type": "client_credentials"},
                         auth=("my-client", "secret"), timeout=TIMEOUT)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "scope", "token_type"}
    assert body["access_token"].startswith("ory_at_")
    assert (body["expires_in"], body["scope"], body["token_type"]) == (3600, "", "bearer")


def test_client_secret_post_is_accepted_and_scopes_are_granted_as_asked(http, oauth):
    response = http.post(oauth.url + "/oauth2/token", timeout=TIMEOUT, data={
        "grant_type": "client_credentials", "client_id": "my-client", "client_secret": "secret",
        "scope": "petstore tracks"})

    assert response.status_code == 200
    assert response.json()["scope"] == "petstore tracks"


def test_scope_outside_the_clients_allowed_scopes_is_invalid_scope(http, oauth):
    response = http.post(oauth.url + "/oauth2/token", auth=("jwt-client", "jwt-secret"), timeout=TIMEOUT,
                         data={"grant_type": "client_credentials", "scope": "petstore openid"})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


def test_wrong_client_secret_is_rejected_with_401(http, oauth):
    response = http.post(oauth.url + "/oauth2/token", data={"grant_type": "client_credentials"},
                         auth=("my-client", "not-the-secret"), timeout=TIMEOUT)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize("path", ["/admin/oauth2/introspect", "/oauth2/introspect"],
                         ids=["hydra admin path", "public path"])
def test_introspection_with_client_auth_reports_an_active_token_of_my_client(http, oauth, path):
    access_token = token(oauth, "my-client", "secret", scope="petstore")

    body = introspect(http, oauth, access_token, path=path).json()

    assert body["active"] is True
    assert (body["sub"], body["client_id"], body["scope"]) == ("my-client", "my-client", "petstore")
    assert (body["token_type"], body["token_use"], body["iss"]) == ("Bearer", "access_token", oauth.url + "/")
    assert body["exp"] - body["iat"] == 3600
    assert body["nbf"] == body["iat"]
    assert body["aud"] == []


def test_introspection_accepts_client_secret_post(http, oauth):
    access_token = token(oauth, "my-client", "secret")

    response = http.post(oauth.url + "/admin/oauth2/introspect", timeout=TIMEOUT, data={
        "token": access_token, "client_id": "jwt-client", "client_secret": "jwt-secret"})

    assert response.json()["active"] is True


def test_introspection_without_client_auth_is_rejected_with_401(http, oauth):
    access_token = token(oauth, "my-client", "secret")

    response = introspect(http, oauth, access_token, auth=None)

    assert response.status_code == 401
    assert "active" not in response.json()


def test_unknown_token_introspects_as_inactive(http, oauth):
    assert introspect(http, oauth, "qwertyuio23456789").json() == {"active": False}


def test_revoked_token_introspects_as_inactive(http, oauth):
    access_token = token(oauth, "my-client", "secret")

    revoked = http.post(oauth.url + "/oauth2/revoke", data={"token": access_token},
                        auth=("my-client", "secret"), timeout=TIMEOUT)

    assert revoked.status_code == 200
    assert introspect(http, oauth, access_token).json() == {"active": False}


def test_another_client_cannot_revoke_my_clients_token(http, oauth):
    access_token = token(oauth, "my-client", "secret")

    response = http.post(oauth.url + "/oauth2/revoke", data={"token": access_token},
                         auth=("jwt-client", "jwt-secret"), timeout=TIMEOUT)

    assert response.status_code == 400
    assert introspect(http, oauth, access_token).json()["active"] is True


def test_expired_token_introspects_as_inactive(http, oauth):
    registered = http.post(oauth.url + "/admin/clients", timeout=TIMEOUT, json={
        "client_id": "short-lived", "client_secret": "s3cret", "grant_types": ["client_credentials"],
        "token_lifetime": 1})
    assert registered.status_code == 201
    access_token = token(oauth, "short-lived", "s3cret")
    assert introspect(http, oauth, access_token).json()["active"] is True

    time.sleep(1.1)

    assert introspect(http, oauth, access_token).json() == {"active": False}


def test_registered_client_gets_tokens_in_its_format(http, oauth):
    response = http.post(oauth.url + "/admin/clients", timeout=TIMEOUT, json={
        "client_id": "tracks-app", "client_secret": "tracks-secret", "grant_types": ["client_credentials"],
        "scope": "tracks", "token_format": "jwt", "signing_alg": "ES256", "token_lifetime": 60})

    assert response.status_code == 201
    assert response.json()["client_id"] == "tracks-app"
    access_token = token(oauth, "tracks-app", "tracks-secret", scope="tracks")
    assert jwt.get_unverified_header(access_token)["alg"] == "ES256"
    assert jwt.decode(access_token, options={"verify_signature": False})["exp"] - int(time.time()) <= 60


def test_registration_with_an_unknown_token_format_is_rejected_with_400(http, oauth):
    response = http.post(oauth.url + "/admin/clients", timeout=TIMEOUT,
                         json={"client_id": "odd", "client_secret": "x", "token_format": "macaroon"})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"


@pytest.mark.parametrize(("client_id", "secret", "alg"),
                         [("jwt-client", "jwt-secret", "RS256"), ("jwt-es-client", "jwt-es-secret", "ES256")],
                         ids=["RS256 client", "ES256 client"])
def test_jwt_client_tokens_verify_against_the_jwks(http, oauth, client_id, secret, alg):
    access_token = token(oauth, client_id, secret, scope="petstore tracks")
    header = jwt.get_unverified_header(access_token)

    claims = jwt.decode(access_token, jwks_key(http, oauth, header["kid"]), algorithms=[alg],
                        audience=client_id, issuer=oauth.url + "/",
                        options={"require": ["exp", "iat", "nbf", "jti", "sub", "client_id", "scope"]})

    assert (header["typ"], header["alg"]) == ("at+jwt", alg)
    assert (claims["sub"], claims["client_id"], claims["scope"]) == (client_id, client_id, "petstore tracks")
    assert claims["nbf"] == claims["iat"] and claims["exp"] - claims["iat"] == 3600


def test_jwt_token_with_a_tampered_payload_fails_verification(http, oauth):
    access_token = token(oauth, "jwt-client", "jwt-secret")
    head, _, signature = access_token.split(".")
    forged_payload = jwt.utils.base64url_encode(b'{"sub":"admin"}').decode()
    key = jwks_key(http, oauth, jwt.get_unverified_header(access_token)["kid"])

    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{head}.{forged_payload}.{signature}", key, algorithms=["RS256"],
                   options={"verify_aud": False})


def test_jwt_tokens_are_introspected_and_revoked_too(http, oauth):
    access_token = token(oauth, "jwt-client", "jwt-secret", scope="tracks")
    assert introspect(http, oauth, access_token).json()["aud"] == ["jwt-client"]

    http.post(oauth.url + "/oauth2/revoke", data={"token": access_token},
              auth=("jwt-client", "jwt-secret"), timeout=TIMEOUT)

    assert introspect(http, oauth, access_token).json() == {"active": False}


def test_key_rotation_publishes_a_new_kid_and_signs_with_it(http, oauth):
    before = published_kids(http, oauth)

    rotated = http.post(oauth.url + "/admin/keys/rotate", params={"alg": "RS256"}, timeout=TIMEOUT).json()

    after = published_kids(http, oauth)
    assert rotated["kid"] not in before
    assert after == before + [rotated["kid"]]
    assert jwt.get_unverified_header(token(oauth, "jwt-client", "jwt-secret"))["kid"] == rotated["kid"]


def test_rotation_with_retire_unpublishes_the_old_keys_of_that_algorithm(http, oauth):
    old_es_kid = jwt.get_unverified_header(token(oauth, "jwt-es-client", "jwt-es-secret"))["kid"]

    rotated = http.post(oauth.url + "/admin/keys/rotate", params={"alg": "ES256", "retire": "1"},
                        timeout=TIMEOUT).json()

    kids = published_kids(http, oauth)
    assert rotated["kid"] in kids
    assert old_es_kid not in kids
    assert any(kid.startswith("rs256-") for kid in kids)


def test_stats_count_introspection_token_and_jwks_calls(http, oauth):
    access_token = token(oauth, "my-client", "secret")
    http.post(oauth.url + "/admin/stats/reset", timeout=TIMEOUT)

    for _ in range(3):
        introspect(http, oauth, access_token)
    token(oauth, "my-client", "secret")
    published_kids(http, oauth)

    stats = http.get(oauth.url + "/admin/stats", timeout=TIMEOUT).json()
    assert stats == {"introspection_calls": 3, "token_calls": 1, "jwks_calls": 1}


def test_discovery_document_names_this_servers_endpoints(http, oauth):
    document = http.get(oauth.url + "/.well-known/openid-configuration", timeout=TIMEOUT).json()

    assert document["issuer"] == oauth.url + "/"
    assert document["jwks_uri"] == oauth.url + "/.well-known/jwks.json"
    assert document["token_endpoint"] == oauth.url + "/oauth2/token"
    assert document["introspection_endpoint"] == oauth.url + "/oauth2/introspect"
    assert document["revocation_endpoint"] == oauth.url + "/oauth2/revoke"


def test_one_server_on_two_ports_shares_its_tokens(http, tmp_path):
    admin_port = free_port()
    with oauth_server(tmp_path, extra_args=["--port", str(admin_port)]) as public:
        access_token = token(public, "my-client", "secret")

        response = http.post(f"http://127.0.0.1:{admin_port}/admin/oauth2/introspect",
                             data={"token": access_token}, auth=("my-client", "secret"), timeout=TIMEOUT)

    assert response.json()["active"] is True
    assert response.json()["iss"] == public.url + "/"
