"""How the gateway authenticates to the IdP: parsing each method, and the exact request it sends."""

from __future__ import annotations

import base64
import time
import typing as t
import urllib.parse

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway_app.auth.client_auth import ASSERTION_TYPE
from gateway_app.auth.client_auth import ClientAuthSettings
from gateway_app.auth.client_auth import build_client_auth
from gateway_app.auth.introspection import IntrospectionSettings
from gateway_app.auth.introspection import IntrospectionValidator
from gateway_app.config.secrets import Secret
from gateway_app.config.secrets import SecretStore
from gateway_app.config.secrets import SecretValue
from gateway_app.errors import ConfigError
from tests.factories import introspection_settings
from tests.support.clocks import FakeClock

URL = "http://idp.test/realms/demo/protocol/openid-connect/token/introspect"
CLIENT_ID = "gateway client:1"
SECRET = "p@ss word/é+:" + "x" * 40            # long enough for HS256..HS512
TOKEN = "opaque-token-1234"


def _pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def secret_store() -> SecretStore:
    def secret(name: str, value: str, key: str = "client-secret") -> Secret:
        return Secret(name, "gloo-system", {key: SecretValue(value, f"gloo-system/{name}")})

    return SecretStore([
        secret("client-secret", SECRET),
        secret("short-secret", "short"),
        secret("rsa-key", _pem(RSA_KEY), key="tls.key"),
        secret("ec-key", _pem(EC_KEY), key="tls.key"),
        secret("not-a-key", "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n", key="tls.key"),
        secret("idp-token", "static-bearer-token"),
        secret("api-key", "key-123"),
    ])


def make_settings(**fields) -> IntrospectionSettings:
    defaults = {"introspectionUrl": URL, "clientId": CLIENT_ID,
                "clientSecretRef": {"name": "client-secret", "namespace": "gloo-system"}}
    return introspection_settings(secret_store(), **{**defaults, **fields})


def applied(settings: IntrospectionSettings,
            clock: t.Callable[[], float] = time.time) -> tuple[dict[str, str], dict[str, str]]:
    data: dict[str, str] = {}
    headers: dict[str, str] = {}
    build_client_auth(settings.client_auth, clock=clock).apply(data, headers)
    return data, headers


RSA_JWT = {"clientSecretRef": None,
           "clientAuthentication": {"method": "private_key_jwt", "privateKeyRef": {"name": "rsa-key"},
                                    "keyId": "key-1"}}
EC_JWT = {"clientSecretRef": None,
          "clientAuthentication": {"method": "private_key_jwt", "privateKeyRef": {"name": "ec-key"},
                                   "signingAlgorithm": "ES256", "audience": "https://idp.test/realms/demo"}}


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "method"),
    [
        ({}, "client_secret_basic"),
        ({"clientAuthentication": {"method": "client_secret_post"}}, "client_secret_post"),
        ({"clientAuthentication": {"method": "client_secret_jwt"}}, "client_secret_jwt"),
        (RSA_JWT, "private_key_jwt"),
        ({"clientSecretRef": None, "clientAuthentication": {"method": "bearer", "tokenRef": {"name": "idp-token"}}},
         "bearer"),
        ({"clientSecretRef": None, "clientAuthentication": {
            "method": "header", "headerName": "X-Api-Key", "valueRef": {"name": "api-key"}}}, "header"),
        ({"clientSecretRef": None, "clientAuthentication": {"method": "none"}}, "none"),
        ({"clientSecretRef": None, "disableClientSecret": True}, "none"),
        ({"clientId": None, "clientSecretRef": None}, "none"),
    ],
    ids=["id and secret default to basic", "post", "client_secret_jwt", "private_key_jwt", "bearer", "header",
         "explicit none", "gloo disableClientSecret", "no credentials at all"],
)
def test_each_method_is_parsed(fields, method):
    assert make_settings(**fields).client_auth.method == method


def test_assertion_audience_defaults_to_the_introspection_url():
    assert make_settings(**RSA_JWT).client_auth.audience == URL
    assert make_settings(**EC_JWT).client_auth.audience == "https://idp.test/realms/demo"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"clientAuthentication": {"method": "magic"}}, "clientAuthentication.method: must be one of"),
        ({"clientSecretRef": None, "clientAuthentication": {"method": "client_secret_post"}},
         "clientSecretRef: is required with client authentication method client_secret_post"),
        ({"clientId": None, "clientAuthentication": {"method": "client_secret_basic"}},
         "clientId: is required with client authentication method client_secret_basic"),
        ({"disableClientSecret": True, "clientAuthentication": {"method": "client_secret_basic"}},
         "disableClientSecret: contradicts"),
        ({"disableClientSecret": True}, "clientSecretRef: is not used: disableClientSecret is true"),
        ({"clientAuthentication": {"method": "bearer", "tokenRef": {"name": "idp-token"}}},
         "clientSecretRef: is not used: client authentication method is bearer"),
        ({"clientAuthentication": {"method": "client_secret_basic", "tokenRef": {"name": "idp-token"}}},
         "clientAuthentication.tokenRef: is only used with method bearer"),
        ({"clientAuthentication": {"method": "client_secret_basic", "color": "red"}},
         "clientAuthentication.color: unknown field"),
        ({"clientSecretRef": {"name": "short-secret"}, "clientAuthentication": {"method": "client_secret_jwt"}},
         "HS256 needs a client secret of at least 32 bytes"),
        ({"clientAuthentication": {"method": "client_secret_jwt", "signingAlgorithm": "RS256"}},
         "client_secret_jwt needs one of HS256"),
        ({"clientSecretRef": None, "clientAuthentication": {"method": "private_key_jwt"}},
         "missing required field 'privateKeyRef'"),
        ({"clientSecretRef": None, "clientAuthentication": {
            "method": "private_key_jwt", "privateKeyRef": {"name": "not-a-key"}}},
         "privateKeyRef: is not an unencrypted PEM private key"),
        ({"clientSecretRef": None, "clientAuthentication": {
            "method": "private_key_jwt", "privateKeyRef": {"name": "rsa-key"}, "signingAlgorithm": "ES256"}},
         "signingAlgorithm: ES256 needs an EC key on curve secp256r1"),
        ({"clientSecretRef": None, "clientAuthentication": {
            "method": "private_key_jwt", "privateKeyRef": {"name": "ec-key"}, "signingAlgorithm": "none"}},
         "private_key_jwt needs one of"),
        ({"clientId": None, "clientSecretRef": None, "clientAuthentication": {
            "method": "private_key_jwt", "privateKeyRef": {"name": "rsa-key"}}},
         "clientId: is required with client authentication method private_key_jwt"),
        ({"clientSecretRef": None, "clientAuthentication": {"method": "bearer"}}, "missing required field 'tokenRef'"),
        ({"clientSecretRef": None, "clientAuthentication": {
            "method": "header", "headerName": "X Api Key", "valueRef": {"name": "api-key"}}},
         "is not a valid header name"),
    ],
    ids=[
        "an unknown method is rejected",
        "post without a secret is rejected",
        "basic without a client id is rejected",
        "disableClientSecret with a secret method is rejected",
        "a secret that disableClientSecret ignores is rejected",
        "a secret that bearer ignores is rejected",
        "a field of another method is rejected",
        "an unknown field is rejected",
        "a short HS256 secret is rejected (RFC 7518)",
        "client_secret_jwt with an asymmetric algorithm is rejected",
        "private_key_jwt without a key is rejected",
        "a private key that is not PEM is rejected",
        "an algorithm that does not fit the key is rejected",
        "alg none is rejected",
        "private_key_jwt without a client id is rejected",
        "bearer without a token is rejected",
        "an invalid header name is rejected",
    ],
)
def test_unusable_client_authentication_is_a_config_error(fields, message):
    with pytest.raises(ConfigError) as caught:
        make_settings(**fields)
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


def test_repr_of_client_auth_settings_and_objects_hides_credentials():
    for fields in ({}, RSA_JWT):
        settings = make_settings(**fields)
        text = repr(settings) + repr(build_client_auth(settings.client_auth))
        assert SECRET not in text
        assert "PRIVATE KEY" not in text


def test_build_client_auth_refuses_settings_without_their_credentials():
    with pytest.raises(ConfigError):
        build_client_auth(ClientAuthSettings(method="client_secret_basic", client_id="x"))


# -- applying each method ------------------------------------------------------------------


def test_basic_form_urlencodes_id_and_secret_before_base64():
    data, headers = applied(make_settings())
    assert data == {}
    scheme, encoded = headers["Authorization"].split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode("ascii") == (
        "gateway+client%3A1:p%40ss+word%2F%C3%A9%2B%3A" + "x" * 40)


def test_post_puts_id_and_secret_in_the_form():
    data, headers = applied(make_settings(clientAuthentication={"method": "client_secret_post"}))
    assert data == {"client_id": CLIENT_ID, "client_secret": SECRET}
    assert "Authorization" not in headers


def test_client_secret_jwt_sends_a_fresh_hs256_assertion():
    settings = make_settings(clientAuthentication={"method": "client_secret_jwt", "keyId": "k7"})
    clock = FakeClock(int(time.time()))             # PyJWT checks exp against the real clock below
    first, headers = applied(settings, clock)
    second, _ = applied(settings, clock)
    assert headers == {}
    assert first["client_assertion_type"] == ASSERTION_TYPE
    assert jwt.get_unverified_header(first["client_assertion"])["alg"] == "HS256"
    assert jwt.get_unverified_header(first["client_assertion"])["kid"] == "k7"
    claims = jwt.decode(first["client_assertion"], SECRET, algorithms=["HS256"], audience=URL)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["exp"] - claims["iat"] == 60
    assert claims["iat"] == clock.now
    assert claims["jti"] != jwt.decode(second["client_assertion"], SECRET, algorithms=["HS256"], audience=URL)["jti"]


def test_client_secret_jwt_signed_with_another_secret_fails_verification():
    data, _ = applied(make_settings(clientAuthentication={"method": "client_secret_jwt"}))
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(data["client_assertion"], "y" * 64, algorithms=["HS256"], audience=URL)


@pytest.mark.parametrize(("fields", "public_key", "algorithm", "audience"),
                         [(RSA_JWT, RSA_KEY.public_key(), "RS256", URL),
                          (EC_JWT, EC_KEY.public_key(), "ES256", "https://idp.test/realms/demo")],
                         ids=["RS256 with the default audience", "ES256 with a configured audience"])
def test_private_key_jwt_sends_an_assertion_verifiable_with_the_public_key(fields, public_key, algorithm, audience):
    data, headers = applied(make_settings(**fields))
    assert headers == {}
    assert data["client_assertion_type"] == ASSERTION_TYPE
    assert jwt.get_unverified_header(data["client_assertion"])["alg"] == algorithm
    claims = jwt.decode(data["client_assertion"], public_key, algorithms=[algorithm], audience=audience,
                        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]})
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["exp"] - claims["iat"] == 60


def test_assertion_uses_the_injected_clock():
    settings = make_settings(clientAuthentication={"method": "client_secret_jwt"})
    data: dict[str, str] = {}
    build_client_auth(settings.client_auth, clock=lambda: 1_000.0).apply(data, {})
    claims = jwt.decode(data["client_assertion"], SECRET, algorithms=["HS256"], audience=URL,
                        options={"verify_exp": False, "verify_iat": False})
    assert (claims["iat"], claims["exp"]) == (1000, 1060)


def test_bearer_sends_the_static_token():
    data, headers = applied(make_settings(clientSecretRef=None, clientAuthentication={
        "method": "bearer", "tokenRef": {"name": "idp-token"}}))
    assert (data, headers) == ({}, {"Authorization": "Bearer static-bearer-token"})


def test_header_sends_the_named_header():
    data, headers = applied(make_settings(clientSecretRef=None, clientAuthentication={
        "method": "header", "headerName": "X-Api-Key", "valueRef": {"name": "api-key"}}))
    assert (data, headers) == ({}, {"X-Api-Key": "key-123"})


def test_none_adds_nothing():
    assert applied(make_settings(clientSecretRef=None, disableClientSecret=True)) == ({}, {})


# -- through the validator: the exact request the IdP receives ------------------------------


def _send(requests_mock, settings: IntrospectionSettings):
    requests_mock.post(URL, json={"active": True, "sub": "alice", "exp": time.time() + 60})
    validator = IntrospectionValidator(settings)
    try:
        validator.validate(TOKEN)
    finally:
        validator.close()
    request = requests_mock.last_request
    assert request.method == "POST" and request.url == URL
    assert request.headers["Accept"] == "application/json"
    return urllib.parse.parse_qs(request.text), request.headers


def test_idp_receives_basic_credentials(requests_mock):
    form, headers = _send(requests_mock, make_settings())
    assert form == {"token": [TOKEN], "token_type_hint": ["access_token"]}
    user, password = base64.b64decode(headers["Authorization"].split(" ")[1]).decode().split(":")
    assert (urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)) == (CLIENT_ID, SECRET)


def test_idp_receives_post_credentials_in_the_form(requests_mock):
    form, headers = _send(requests_mock, make_settings(clientAuthentication={"method": "client_secret_post"}))
    assert form == {"token": [TOKEN], "token_type_hint": ["access_token"],
                    "client_id": [CLIENT_ID], "client_secret": [SECRET]}
    assert "Authorization" not in headers


@pytest.mark.parametrize(("fields", "key", "algorithm"),
                         [({"clientAuthentication": {"method": "client_secret_jwt"}}, SECRET, "HS256"),
                          (RSA_JWT, RSA_KEY.public_key(), "RS256")],
                         ids=["client_secret_jwt", "private_key_jwt"])
def test_idp_receives_a_signed_client_assertion(requests_mock, fields, key, algorithm):
    form, headers = _send(requests_mock, make_settings(**fields))
    assert form["token"] == [TOKEN]
    assert form["client_assertion_type"] == [ASSERTION_TYPE]
    claims = jwt.decode(form["client_assertion"][0], key, algorithms=[algorithm], audience=URL)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert "client_secret" not in form
    assert "Authorization" not in headers


def test_idp_receives_bearer_and_header_credentials(requests_mock):
    _, headers = _send(requests_mock, make_settings(clientSecretRef=None, clientAuthentication={
        "method": "bearer", "tokenRef": {"name": "idp-token"}}))
    assert headers["Authorization"] == "Bearer static-bearer-token"
    _, headers = _send(requests_mock, make_settings(clientSecretRef=None, clientAuthentication={
        "method": "header", "headerName": "X-Api-Key", "valueRef": {"name": "api-key"}}))
    assert headers["X-Api-Key"] == "key-123"
    assert "Authorization" not in headers


def test_idp_receives_no_credentials_with_disable_client_secret(requests_mock):
    form, headers = _send(requests_mock, make_settings(clientSecretRef=None, disableClientSecret=True))
    assert form == {"token": [TOKEN], "token_type_hint": ["access_token"]}
    assert "Authorization" not in headers


@pytest.mark.parametrize(("fields", "header"),
                         [({}, "authorization"),
                          ({"clientSecretRef": None, "clientAuthentication": {
                              "method": "header", "headerName": "X-Api-Key", "valueRef": {"name": "api-key"}}},
                           "x-api-key")],
                         ids=["basic owns Authorization", "header owns its header name"])
def test_extra_header_that_client_auth_sets_is_a_config_error(fields, header):
    with pytest.raises(ConfigError) as caught:
        make_settings(headers={header: "from-config"}, **fields)
    assert "is set by client authentication method" in str(caught.value)


def test_extra_authorization_header_is_allowed_when_client_auth_does_not_use_it(requests_mock):
    _, headers = _send(requests_mock, make_settings(clientAuthentication={"method": "client_secret_post"},
                                                    headers={"Authorization": "Bearer from-config"}))
    assert headers["Authorization"] == "Bearer from-config"
