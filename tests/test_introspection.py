"""RFC 7662 introspection: settings, the request sent to the IdP, outcomes, retries and caching."""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
import urllib.parse

import pytest
import requests

from gateway_app.auth.introspection import IntrospectionSettings
from gateway_app.auth.introspection import IntrospectionValidator
from gateway_app.cache import TTLCache
from gateway_app.cache import hash_key
from gateway_app.config.secrets import Secret
from gateway_app.config.secrets import SecretStore
from gateway_app.config.secrets import SecretValue
from gateway_app.errors import ConfigError
from gateway_app.errors import IdentityProviderError
from gateway_app.errors import InvalidTokenError
from gateway_app.metrics import REGISTRY
from tests.factories import AUTH_CONFIG_WHERE as WHERE
from tests.factories import INTROSPECTION_PATH as PATH
from tests.factories import introspection_settings
from tests.support.caches import RecordingCache

URL = "http://idp.test/admin/oauth2/introspect"
KEYCLOAK_URL = "http://idp.test/realms/demo/protocol/openid-connect/token/introspect"
SECRET = "s3cr:t/+é? with space"
OTHER_SECRET = "a-different-secret"
TOKEN = "opaque-token-AAAA.BBBB-1234"
NOW = 1_700_000_000.0


def secret_store() -> SecretStore:
    return SecretStore([
        Secret("client-secret", "gloo-system", {"client-secret": SecretValue(SECRET, "gloo-system/client-secret")}),
        Secret("other-secret", "gloo-system", {"client-secret": SecretValue(OTHER_SECRET, "gloo-system/other")}),
    ])


def make_settings(**fields) -> IntrospectionSettings:
    """Settings from a YAML-like mapping; a field given as None is removed."""
    defaults = {"introspectionUrl": URL, "clientId": "my client",
                "clientSecretRef": {"name": "client-secret", "namespace": "gloo-system"}}
    return introspection_settings(secret_store(), **{**defaults, **fields})


def idp_attempts(idp: str) -> float:
    """Introspection requests sent to ``idp`` (``host:port``), as the metrics count them."""
    return REGISTRY.get_sample_value("gateway_idp_requests_total", {"idp": idp, "kind": "introspection"}) or 0.0


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_validator(clock, sleeps):
    """Build validators on the fake clock (cache included); closes them afterwards."""
    made: list[IntrospectionValidator] = []

    def build(settings: IntrospectionSettings | None = None, cache=None, **kwargs) -> IntrospectionValidator:
        settings = settings or make_settings()
        if cache is None:
            cache = TTLCache(settings.max_cache_entries, clock=clock)
        validator = IntrospectionValidator(settings, cache=cache, clock=clock, sleep=sleeps.append, **kwargs)
        made.append(validator)
        return validator

    yield build
    for validator in made:
        validator.close()


def active_answer(**claims) -> dict:
    return {"active": True, "sub": "alice", "client_id": "web", "scope": "read write",
            "exp": NOW + 3600, "iat": NOW - 10, **claims}


def form_of(request) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(request.text, keep_blank_values=True)


# -- settings ------------------------------------------------------------------------------


def test_minimal_settings_use_gloo_defaults():
    settings = make_settings(clientId=None, clientSecretRef=None)
    assert settings.introspection_url == URL
    assert settings.client_auth.method == "none"
    assert settings.token_type_hint == "access_token"
    assert settings.timeout == 5.0
    assert settings.retries == 2
    assert settings.retry_backoff == pytest.approx(0.1)
    assert settings.cache_timeout == 600.0
    assert settings.negative_cache_timeout == 5.0
    assert settings.max_cache_entries == 10_000
    assert settings.max_token_length == 8192
    assert settings.user_id_attribute_name == "sub"
    assert settings.tls.verify is True


def test_client_id_with_secret_defaults_to_client_secret_basic():
    settings = make_settings()
    assert settings.client_id == "my client"
    assert settings.client_auth.method == "client_secret_basic"
    assert settings.client_auth.client_secret.reveal() == SECRET


def test_durations_and_counts_are_read_from_the_users_units():
    settings = make_settings(timeout="250ms", retries=0, retryBackoff="1s", cacheTimeout="2m",
                             negativeCacheTimeout=0, maxCacheEntries=5, maxTokenLength=100, leeway="3s",
                             userIdAttributeName="client_id")
    assert (settings.timeout, settings.retries, settings.retry_backoff) == (0.25, 0, 1.0)
    assert (settings.cache_timeout, settings.negative_cache_timeout) == (120.0, 0.0)
    assert (settings.max_cache_entries, settings.max_token_length, settings.leeway) == (5, 100, 3.0)
    assert settings.user_id_attribute_name == "client_id"


def test_keycloak_introspection_url_is_accepted():
    assert make_settings(introspectionUrl=KEYCLOAK_URL).introspection_url == KEYCLOAK_URL


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"introspectionUrl": None}, "missing required field 'introspectionUrl'"),
        ({"introspectionUrl": "ftp://idp.test/introspect"}, "must be an http:// or https:// URL"),
        ({"introspectionUrl": "http:///introspect"}, "has no host"),
        ({"introspectionUrl": "http://user:pw@idp.test/x"}, "must not contain credentials"),
        ({"introspectionUrl": "http://idp.test:99999/x"}, "is not a valid URL"),
        ({"colour": "blue"}, f"{PATH}.colour: unknown field"),
        ({"timeout": "soon"}, "expected a duration"),
        ({"retries": -1}, "must be at least 0"),
        ({"maxCacheEntries": 0}, "must be at least 1"),
        ({"leeway": "2m"}, "must be at most 60s"),
        ({"clientSecretRef": None}, "clientSecretRef: is required with clientId"),
        ({"clientSecretRef": {"name": "missing"}}, "Secret gloo-system/missing not found"),
        ({"headers": {"Content-Type": "text/plain"}}, "cannot be overridden"),
        ({"headers": {"X-Bad": "a\r\nInjected: yes"}}, "must not contain a line break"),
        ({"tls": {"caBundle": "/nonexistent/ca.pem"}, "introspectionUrl": "https://idp.test/x"},
         "tls.caBundle: file '/nonexistent/ca.pem' does not exist"),
        ({"tls": {"insecureSkipVerify": True}}, "only applies to an https:// introspectionUrl"),
        ({"tls": {"verifyHostname": False}, "introspectionUrl": "https://idp.test/x"},
         "tls.verifyHostname: unknown field"),
    ],
    ids=[
        "a missing URL is rejected",
        "a non-http scheme is rejected",
        "a URL without host is rejected",
        "credentials in the URL are rejected",
        "a bad port is rejected",
        "an unknown field is rejected with its path",
        "a bad duration is rejected",
        "negative retries are rejected",
        "an empty cache is rejected",
        "a large leeway is rejected",
        "a client id without a secret is rejected",
        "a dangling secret reference is rejected",
        "overriding a header the gateway sets is rejected",
        "header injection is rejected",
        "a missing TLS file is rejected",
        "tls on a plain http URL is rejected",
        "an unknown tls field is rejected",
    ],
)
def test_bad_settings_raise_config_error_naming_the_field(fields, message):
    with pytest.raises(ConfigError) as caught:
        make_settings(**fields)
    assert message in str(caught.value)
    assert WHERE in str(caught.value)


def test_client_id_with_disable_client_secret_needs_no_secret():
    settings = make_settings(clientSecretRef=None, disableClientSecret=True)
    assert settings.client_auth.method == "none"
    assert settings.client_id == "my client"


def test_repr_of_settings_hides_the_client_secret():
    settings = make_settings()
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


def test_fingerprint_is_stable_for_equal_settings_and_ignores_timeouts():
    assert make_settings().fingerprint == make_settings().fingerprint
    assert make_settings().fingerprint == make_settings(timeout="1s", cacheTimeout=5, retries=0).fingerprint


@pytest.mark.parametrize(
    "fields",
    [
        {"introspectionUrl": KEYCLOAK_URL},
        {"clientId": "someone-else"},
        {"clientSecretRef": {"name": "other-secret"}},
        {"clientAuthentication": {"method": "client_secret_post"}},
        {"tokenTypeHint": "refresh_token"},
        {"headers": {"X-Tenant": "blue"}},
    ],
    ids=["url", "client id", "secret", "auth method", "token type hint", "extra headers"],
)
def test_fingerprint_changes_with_each_setting_that_changes_the_answer(fields):
    assert make_settings(**fields).fingerprint != make_settings().fingerprint


@pytest.mark.parametrize(
    "fields",
    [{"timeout": "1s"}, {"cacheTimeout": 5}, {"retries": 0}, {"leeway": "1s"}, {"maxCacheEntries": 3},
     {"introspectionUrl": "https://idp.test/x", "tls": {"insecureSkipVerify": True}}],
    ids=["timeout", "cache timeout", "retries", "leeway", "cache size", "tls"],
)
def test_config_digest_changes_with_settings_the_fingerprint_ignores(fields):
    assert make_settings(**fields).config_digest != make_settings().config_digest
    assert make_settings().config_digest == make_settings().config_digest


def test_fingerprint_does_not_contain_the_secret():
    assert SECRET not in make_settings().fingerprint


# -- the request ---------------------------------------------------------------------------


def test_request_is_a_form_post_with_token_hint_accept_and_basic_auth(requests_mock, make_validator):
    requests_mock.post(URL, json=active_answer())
    make_validator().validate(TOKEN)
    request = requests_mock.last_request
    assert request.method == "POST"
    assert request.url == URL
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Accept"] == "application/json"
    assert form_of(request) == {"token": [TOKEN], "token_type_hint": ["access_token"]}
    scheme, encoded = request.headers["Authorization"].split(" ", 1)
    assert scheme == "Basic"
    client_id, secret = base64.b64decode(encoded).decode("ascii").split(":")
    assert client_id == "my+client"                       # form-urlencoded per RFC 6749 §2.3.1
    assert urllib.parse.unquote_plus(secret) == SECRET
    assert ":" not in secret and "/" not in secret and " " not in secret


def test_custom_token_type_hint_is_sent(requests_mock, make_validator):
    requests_mock.post(URL, json=active_answer())
    make_validator(make_settings(tokenTypeHint="refresh_token")).validate(TOKEN)
    assert form_of(requests_mock.last_request)["token_type_hint"] == ["refresh_token"]


def test_empty_token_type_hint_omits_the_parameter(requests_mock, make_validator):
    requests_mock.post(URL, json=active_answer())
    make_validator(make_settings(tokenTypeHint="")).validate(TOKEN)
    assert form_of(requests_mock.last_request) == {"token": [TOKEN]}


def test_extra_headers_are_sent_to_the_idp(requests_mock, make_validator):
    requests_mock.post(URL, json=active_answer())
    make_validator(make_settings(headers={"X-Tenant": "blue", "X-Version": 2})).validate(TOKEN)
    assert requests_mock.last_request.headers["X-Tenant"] == "blue"
    assert requests_mock.last_request.headers["X-Version"] == "2"


def test_keycloak_shaped_url_is_called_as_configured(requests_mock, make_validator):
    requests_mock.post(KEYCLOAK_URL, json=active_answer())
    make_validator(make_settings(introspectionUrl=KEYCLOAK_URL)).validate(TOKEN)
    assert requests_mock.last_request.url == KEYCLOAK_URL


def test_redirects_from_the_idp_are_not_followed(requests_mock, make_validator):
    requests_mock.post(URL, status_code=302, headers={"Location": "http://elsewhere.test/introspect"})
    other = requests_mock.post("http://elsewhere.test/introspect", json=active_answer())
    with pytest.raises(IdentityProviderError):
        make_validator().validate(TOKEN)
    assert other.call_count == 0


# -- outcomes ------------------------------------------------------------------------------


def test_active_answer_becomes_token_info_with_claims_and_expiry(requests_mock, make_validator):
    requests_mock.post(URL, json=active_answer(aud=["api"]))
    info = make_validator().validate(TOKEN)
    assert info.kind == "introspection"
    assert info.claims["sub"] == "alice"
    assert info.claims["aud"] == ["api"]
    assert info.subject == "alice"
    assert info.scopes == ["read", "write"]
    assert info.expires_at == NOW + 3600


def test_active_answer_without_exp_has_no_expiry(requests_mock, make_validator):
    requests_mock.post(URL, json={"active": True, "sub": "alice"})
    assert make_validator().validate(TOKEN).expires_at is None


def test_inactive_token_is_rejected_as_token_inactive(requests_mock, make_validator):
    requests_mock.post(URL, json={"active": False})
    with pytest.raises(InvalidTokenError) as caught:
        make_validator().validate(TOKEN)
    assert caught.value.reason == "token_inactive"
    assert caught.value.status_code == 403


def test_active_answer_with_past_exp_is_rejected_as_token_expired(requests_mock, make_validator):
    requests_mock.post(URL, json=active_answer(exp=NOW - 1))
    with pytest.raises(InvalidTokenError) as caught:
        make_validator().validate(TOKEN)
    assert caught.value.reason == "token_expired"


def test_active_answer_with_future_nbf_is_rejected_as_not_yet_valid(requests_mock, make_validator):
    requests_mock.post(URL, json=active_answer(nbf=NOW + 60))
    with pytest.raises(InvalidTokenError) as caught:
        make_validator().validate(TOKEN)
    assert caught.value.reason == "token_not_yet_valid"


def test_leeway_accepts_a_token_that_expired_within_it(requests_mock, make_validator):
    requests_mock.post(URL, json=active_answer(exp=NOW - 2, nbf=NOW + 2))
    info = make_validator(make_settings(leeway="3s")).validate(TOKEN)
    assert info.claims["sub"] == "alice"


@pytest.mark.parametrize(
    "response",
    [
        {"status_code": 500, "text": "oops"},
        {"status_code": 200, "text": "<html><body>Login</body></html>", "headers": {"Content-Type": "text/html"}},
        {"status_code": 200, "text": "not json", "headers": {"Content-Type": "application/json"}},
        {"status_code": 200, "text": '{"active": true}', "headers": {"Content-Type": "text/plain"}},
        {"status_code": 200, "json": {"active": "true"}},
        {"status_code": 200, "json": {"active": 1}},
        {"status_code": 200, "json": {"sub": "alice"}},
        {"status_code": 200, "json": [{"active": True}]},
        {"status_code": 200, "text": '{"active": true, "exp": NaN}'},
        {"status_code": 401, "json": {"error": "invalid_client"}},
        {"status_code": 404, "text": "no such realm"},
        {"status_code": 204},
    ],
    ids=[
        "a 500 is an IdP error",
        "an HTML login page is an IdP error",
        "a body that is not JSON is an IdP error",
        "JSON served as text/plain is an IdP error",
        "active as the string true is an IdP error",
        "active as a number is an IdP error",
        "a missing active is an IdP error",
        "a JSON list is an IdP error",
        "a NaN exp is an IdP error",
        "a 401 for our client credentials is an IdP error",
        "a 404 is an IdP error",
        "an empty 204 is an IdP error",
    ],
)
def test_unusable_idp_answers_fail_closed_with_503(requests_mock, make_validator, response):
    requests_mock.post(URL, **response)
    with pytest.raises(IdentityProviderError) as caught:
        make_validator(make_settings(retries=0)).validate(TOKEN)
    assert caught.value.status_code == 503


@pytest.mark.parametrize("error", [requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout],
                         ids=["connect timeout", "read timeout"])
def test_idp_timeout_is_an_idp_error(requests_mock, make_validator, error):
    requests_mock.post(URL, exc=error)
    with pytest.raises(IdentityProviderError) as caught:
        make_validator(make_settings(retries=0)).validate(TOKEN)
    assert "timed out" in str(caught.value)


def test_connection_refused_is_an_idp_error_after_retries(make_validator, sleeps):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    validator = make_validator(make_settings(introspectionUrl=f"http://127.0.0.1:{port}/introspect",
                                             timeout="2s", retries=1))
    attempts_before = idp_attempts(f"127.0.0.1:{port}")
    with pytest.raises(IdentityProviderError) as caught:
        validator.validate(TOKEN)
    assert "connection failed" in str(caught.value)
    assert idp_attempts(f"127.0.0.1:{port}") == attempts_before + 2
    assert sleeps == [pytest.approx(0.1)]


def test_slow_idp_is_cut_off_by_the_timeout(make_validator):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)                               # accepts connections, never answers
        port = silent.getsockname()[1]
        validator = make_validator(make_settings(introspectionUrl=f"http://127.0.0.1:{port}/introspect",
                                                 timeout="200ms", retries=0))
        with pytest.raises(IdentityProviderError) as caught:
            validator.validate(TOKEN)                  # hangs, rather than passes, without the timeout
    assert "timed out" in str(caught.value)


# -- retries -------------------------------------------------------------------------------


def test_5xx_is_retried_up_to_the_bound_with_exponential_backoff(requests_mock, make_validator, sleeps):
    idp = requests_mock.post(URL, status_code=503, text="busy")
    validator = make_validator(make_settings(retries=2, retryBackoff="100ms"))
    with pytest.raises(IdentityProviderError) as caught:
        validator.validate(TOKEN)
    assert caught.value.status_code == 503
    assert idp.call_count == 3
    assert sleeps == [pytest.approx(0.1), pytest.approx(0.2)]


def test_backoff_is_capped_at_two_seconds(requests_mock, make_validator, sleeps):
    requests_mock.post(URL, status_code=502)
    with pytest.raises(IdentityProviderError):
        make_validator(make_settings(retries=4, retryBackoff="1s")).validate(TOKEN)
    assert sleeps == [1.0, 2.0, 2.0, 2.0]


def test_a_retry_that_succeeds_returns_the_token(requests_mock, make_validator):
    idp = requests_mock.post(URL, [{"status_code": 500}, {"json": active_answer()}])
    assert make_validator().validate(TOKEN).subject == "alice"
    assert idp.call_count == 2


def test_connection_errors_are_retried(requests_mock, make_validator):
    idp = requests_mock.post(URL, [{"exc": requests.exceptions.ConnectionError}, {"json": active_answer()}])
    assert make_validator().validate(TOKEN).subject == "alice"
    assert idp.call_count == 2


@pytest.mark.parametrize("status", [400, 401, 403, 429], ids=["400", "401", "403", "429"])
def test_4xx_is_not_retried(requests_mock, make_validator, sleeps, status):
    idp = requests_mock.post(URL, status_code=status, json={"error": "invalid_client"})
    with pytest.raises(IdentityProviderError):
        make_validator(make_settings(retries=3)).validate(TOKEN)
    assert idp.call_count == 1
    assert sleeps == []


# -- caching -------------------------------------------------------------------------------


def test_cache_hit_does_not_call_the_idp(requests_mock, make_validator):
    idp = requests_mock.post(URL, json=active_answer())
    validator = make_validator()
    first = validator.validate(TOKEN)
    second = validator.validate(TOKEN)
    assert first.claims == second.claims
    assert idp.call_count == 1


def test_cached_entry_expires_at_the_tokens_exp_when_sooner(requests_mock, make_validator, clock):
    idp = requests_mock.post(URL, [{"json": active_answer(exp=NOW + 30)}, {"json": {"active": False}}])
    validator = make_validator(make_settings(cacheTimeout="10m"))
    validator.validate(TOKEN)
    clock.advance(29)
    validator.validate(TOKEN)
    assert idp.call_count == 1
    clock.advance(2)
    with pytest.raises(InvalidTokenError) as caught:
        validator.validate(TOKEN)
    assert caught.value.reason == "token_inactive"
    assert idp.call_count == 2


def test_cached_entry_expires_at_cache_timeout_when_sooner(requests_mock, make_validator, clock):
    idp = requests_mock.post(URL, json=active_answer(exp=NOW + 3600))
    validator = make_validator(make_settings(cacheTimeout="10s"))
    validator.validate(TOKEN)
    clock.advance(9.5)
    validator.validate(TOKEN)
    assert idp.call_count == 1
    clock.advance(1)
    validator.validate(TOKEN)
    assert idp.call_count == 2


def test_cache_hits_do_not_extend_an_entrys_life(requests_mock, make_validator, clock):
    idp = requests_mock.post(URL, json=active_answer(exp=NOW + 3600))
    validator = make_validator(make_settings(cacheTimeout="10s"))
    validator.validate(TOKEN)
    for _ in range(4):
        clock.advance(2)
        validator.validate(TOKEN)
    assert idp.call_count == 1
    clock.advance(2.5)                                 # 10.5 s after the IdP answered
    validator.validate(TOKEN)
    assert idp.call_count == 2


def test_cache_hit_rechecks_exp_against_now(requests_mock, make_validator, clock):
    cache = RecordingCache()                           # keeps entries past their TTL
    idp = requests_mock.post(URL, json=active_answer(exp=NOW + 30))
    validator = make_validator(cache=cache)
    validator.validate(TOKEN)
    clock.advance(31)
    with pytest.raises(InvalidTokenError) as caught:
        validator.validate(TOKEN)
    assert caught.value.reason == "token_expired"
    assert idp.call_count == 1


def test_inactive_answer_is_cached_only_for_negative_cache_timeout(requests_mock, make_validator, clock):
    idp = requests_mock.post(URL, json={"active": False})
    validator = make_validator(make_settings(negativeCacheTimeout="5s"))
    for _ in range(2):
        with pytest.raises(InvalidTokenError):
            validator.validate(TOKEN)
    assert idp.call_count == 1
    clock.advance(5.5)
    with pytest.raises(InvalidTokenError):
        validator.validate(TOKEN)
    assert idp.call_count == 2


def test_zero_timeouts_disable_both_caches(requests_mock, make_validator):
    idp = requests_mock.post(URL, [{"json": active_answer()}, {"json": active_answer()},
                                   {"json": {"active": False}}, {"json": {"active": False}}])
    validator = make_validator(make_settings(cacheTimeout=0, negativeCacheTimeout=0))
    validator.validate(TOKEN)
    validator.validate(TOKEN)
    for _ in range(2):
        with pytest.raises(InvalidTokenError):
            validator.validate(TOKEN)
    assert idp.call_count == 4


def test_idp_errors_are_not_cached(requests_mock, make_validator):
    idp = requests_mock.post(URL, [{"status_code": 500}, {"json": active_answer()}])
    validator = make_validator(make_settings(retries=0))
    with pytest.raises(IdentityProviderError):
        validator.validate(TOKEN)
    assert validator.validate(TOKEN).subject == "alice"
    assert idp.call_count == 2


def test_cache_key_is_a_hash_of_settings_and_token_never_the_token(requests_mock, make_validator):
    requests_mock.post(URL, json=active_answer())
    cache = RecordingCache()
    settings = make_settings()
    make_validator(settings, cache=cache).validate(TOKEN)
    assert list(cache.entries) == [hash_key(settings.fingerprint, TOKEN)]
    assert TOKEN not in next(iter(cache.entries))
    assert cache.entries[hash_key(settings.fingerprint, TOKEN)]["active"] is True


def test_validators_with_different_settings_never_share_entries(requests_mock, make_validator, clock):
    idp = requests_mock.post(URL, json=active_answer())
    shared = TTLCache(100, clock=clock)
    make_validator(make_settings(), cache=shared).validate(TOKEN)
    make_validator(make_settings(clientId="other-client"), cache=shared).validate(TOKEN)
    assert idp.call_count == 2


def test_a_validator_rebuilt_with_the_same_settings_reuses_the_cache(requests_mock, make_validator, clock):
    idp = requests_mock.post(URL, json=active_answer())
    shared = TTLCache(100, clock=clock)
    make_validator(make_settings(), cache=shared).validate(TOKEN)
    make_validator(make_settings(), cache=shared).validate(TOKEN)
    assert idp.call_count == 1


def test_default_cache_is_bounded_by_max_cache_entries(requests_mock):
    idp = requests_mock.post(URL, json=active_answer(exp=time.time() + 3600))
    validator = IntrospectionValidator(make_settings(maxCacheEntries=2))
    try:
        for token in ("token-one", "token-two", "token-three", "token-one"):
            validator.validate(token)
    finally:
        validator.close()
    assert idp.call_count == 4


def test_a_cache_hit_returns_the_same_token_info(requests_mock, make_validator):
    requests_mock.post(URL, json=active_answer(roles=["reader"]))
    validator = make_validator()
    assert validator.validate(TOKEN) is validator.validate(TOKEN)


def test_token_info_claims_are_a_private_copy_of_the_cache_entry(requests_mock, make_validator, clock):
    requests_mock.post(URL, json=active_answer(roles=["reader"]))
    shared = TTLCache(100, clock=clock)
    make_validator(cache=shared).validate(TOKEN).claims["roles"].append("admin")
    reader = make_validator(cache=shared)    # builds its TokenInfo from the cache entry the first one stored
    assert reader.validate(TOKEN).claims["roles"] == ["reader"]
    assert requests_mock.call_count == 1


def test_concurrent_first_requests_make_one_idp_call(requests_mock, make_validator):
    def slow_answer(request, context):
        time.sleep(0.2)
        return active_answer()

    idp = requests_mock.post(URL, json=slow_answer)
    validator = make_validator()
    barrier = threading.Barrier(10)
    results: list[object] = []

    def worker():
        barrier.wait()
        try:
            results.append(validator.validate(TOKEN).subject)
        except Exception as e:  # surfaced by the assertion below
            results.append(e)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert results == ["alice"] * 10
    assert idp.call_count == 1


# -- token shape ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["x" * 20_000, "", "has space", "line\nbreak", "tab\there", "caf\u00e9", "nul\x00"],
    ids=["a 20 KB token", "an empty token", "a space", "a newline", "a tab", "non-ASCII", "a NUL byte"],
)
def test_malformed_tokens_are_refused_without_calling_the_idp(requests_mock, make_validator, token):
    idp = requests_mock.post(URL, json=active_answer())
    with pytest.raises(InvalidTokenError) as caught:
        make_validator().validate(token)
    assert caught.value.reason == "token_malformed"
    assert idp.call_count == 0


def test_max_token_length_is_configurable(requests_mock, make_validator):
    requests_mock.post(URL, json=active_answer())
    validator = make_validator(make_settings(maxTokenLength=10))
    assert validator.validate("x" * 10).subject == "alice"
    with pytest.raises(InvalidTokenError):
        validator.validate("x" * 11)


# -- secrets stay secret -------------------------------------------------------------------


def test_idp_error_logs_status_content_type_and_excerpt_without_token_or_secret(
        requests_mock, make_validator, caplog):
    echo = f"<html>bad request for token={TOKEN} secret={SECRET} " \
           f"encoded={urllib.parse.quote_plus(SECRET)}</html>"
    requests_mock.post(URL, status_code=200, text=echo, headers={"Content-Type": "text/html"})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(IdentityProviderError) as caught:
        make_validator(make_settings(retries=0)).validate(TOKEN)
    assert "status=200" in caplog.text
    assert "text/html" in caplog.text
    assert "<html>bad request for token=[token]" in caplog.text
    for secret in (TOKEN, SECRET, urllib.parse.quote_plus(SECRET)):
        assert secret not in caplog.text
        assert secret not in str(caught.value)


def test_failures_and_denials_never_mention_token_or_secret(requests_mock, make_validator, caplog):
    caplog.set_level(logging.DEBUG)
    validator = make_validator(make_settings(retries=1))
    messages = []
    for response in ({"exc": requests.exceptions.ConnectionError(f"refused {TOKEN}")},
                     {"status_code": 500, "text": TOKEN},
                     {"json": {"active": False}}):
        requests_mock.post(URL, **response)
        with pytest.raises((IdentityProviderError, InvalidTokenError)) as caught:
            validator.validate(TOKEN)
        messages.append(str(caught.value))
    assert TOKEN not in caplog.text and SECRET not in caplog.text
    assert all(TOKEN not in m and SECRET not in m for m in messages)


def test_requests_session_created_by_the_validator_ignores_the_environment(monkeypatch, requests_mock):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    requests_mock.post(URL, json=active_answer(exp=time.time() + 60))
    validator = IntrospectionValidator(make_settings())
    try:
        assert validator.validate(TOKEN).subject == "alice"
        assert not requests_mock.last_request.proxies  # a session reading the environment would send via the proxy
    finally:
        validator.close()


# -- every reader applies its own cache settings (issue 12 item 5) ---------------------------


def test_a_token_revoked_at_the_idp_is_refused_on_real_short_3s_after_real_cached_it(
        requests_mock, make_validator, clock):
    """AuthConfigs ``real`` (default cacheTimeout) and ``real-short`` (2s) share one IdP, one client, one cache."""
    shared = TTLCache(100, clock=clock)
    real = make_validator(make_settings(), cache=shared)
    real_short = make_validator(make_settings(cacheTimeout="2s"), cache=shared)
    idp = requests_mock.post(URL, [{"json": active_answer()}, {"json": {"active": False}}])
    assert real.validate(TOKEN).subject == "alice"
    clock.advance(3)                                        # revoked at the IdP meanwhile
    with pytest.raises(InvalidTokenError) as caught:
        real_short.validate(TOKEN)
    assert caught.value.reason == "token_inactive"
    assert idp.call_count == 2
    with pytest.raises(InvalidTokenError):                  # the fresh answer is what both now read
        real.validate(TOKEN)


def test_a_reload_that_lowers_cache_timeout_applies_to_entries_already_cached(requests_mock, make_validator, clock):
    shared = TTLCache(100, clock=clock)
    before = make_validator(make_settings(cacheTimeout="10m"), cache=shared)
    idp = requests_mock.post(URL, [{"json": active_answer()}, {"json": {"active": False}}])
    before.validate(TOKEN)
    clock.advance(61)
    after = make_validator(make_settings(cacheTimeout="1m"), cache=shared)     # the reloaded validator
    with pytest.raises(InvalidTokenError):
        after.validate(TOKEN)
    assert idp.call_count == 2


def test_a_shorter_negative_cache_timeout_applies_to_inactive_entries_others_cached(
        requests_mock, make_validator, clock):
    shared = TTLCache(100, clock=clock)
    patient = make_validator(make_settings(negativeCacheTimeout="60s"), cache=shared)
    eager = make_validator(make_settings(negativeCacheTimeout="1s"), cache=shared)
    requests_mock.post(URL, [{"json": {"active": False}}, {"json": active_answer()}])
    with pytest.raises(InvalidTokenError):
        patient.validate(TOKEN)
    clock.advance(2)
    assert eager.validate(TOKEN).subject == "alice"


def test_leeway_is_applied_by_each_reader_of_a_shared_entry(requests_mock, make_validator, clock):
    shared = TTLCache(100, clock=clock)
    lenient = make_validator(make_settings(leeway="30s"), cache=shared)
    strict = make_validator(make_settings(), cache=shared)
    requests_mock.post(URL, json=active_answer(nbf=NOW + 10))
    assert lenient.validate(TOKEN).subject == "alice"
    with pytest.raises(InvalidTokenError) as caught:
        strict.validate(TOKEN)
    assert caught.value.reason == "token_not_yet_valid"
