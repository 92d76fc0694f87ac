"""JWKS parsing and the remote key sources (fixed URL, discovery), with a requests-mock IdP."""

from __future__ import annotations

import gc
import logging
import threading
import typing as t

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway_app.auth.jwks import FIRST_RETRY
from gateway_app.auth.jwks import NO_SIGNATURE_KEYS
from gateway_app.auth.jwks import DiscoverySettings
from gateway_app.auth.jwks import RemoteJwksSettings
from gateway_app.auth.jwks import key_fits_alg
from gateway_app.auth.jwks import parse_jwks
from gateway_app.auth.jwt_validation import JwtSettings
from gateway_app.auth.jwt_validation import JwtValidator
from gateway_app.errors import IdentityProviderError
from gateway_app.errors import InvalidTokenError
from tests.keys import claims
from tests.keys import ec_key
from tests.keys import ed25519_key
from tests.keys import jwks
from tests.keys import make_jwt
from tests.keys import public_jwk
from tests.keys import rsa_key
from tests.support.clocks import FakeClock

JWKS_URL = "https://idp.example.test/oauth2/jwks"
ISSUER_URL = "https://idp.example.test/"
DISCOVERY_URL = "https://idp.example.test/.well-known/openid-configuration"
REFRESH = 300.0
MIN_FETCH = 30.0


class RecordingSpawn:
    """Stands in for the background thread: records what would run; the test drives the retry."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def __call__(self, target: t.Callable[[], None], name: str) -> None:
        self.started.append(name)


def remote_validator(clock: FakeClock, settings: t.Any = None, spawn: RecordingSpawn | None = None) -> JwtValidator:
    jwt_settings = JwtSettings(jwks=settings or RemoteJwksSettings(JWKS_URL, REFRESH))
    return JwtValidator(jwt_settings, min_fetch_interval=MIN_FETCH, clock=clock, spawn=spawn or RecordingSpawn())


def main_jwks() -> dict[str, t.Any]:
    return jwks(public_jwk(rsa_key(), kid="main"))


def token_for(kid: str = "main", key_name: str = "main") -> str:
    return make_jwt(claims(), rsa_key(key_name), "RS256", kid=kid)


# -- parsing -------------------------------------------------------------------------

def test_gloo_seed_shape_with_alg_and_use_sig_is_loaded() -> None:
    full = public_jwk(rsa_key(), kid="sKv")
    key_set = parse_jwks({"keys": [{"kty": "RSA", "alg": "RS256", "kid": "sKv", "use": "sig",
                                    "e": full["e"], "n": full["n"]}]})
    (key,) = key_set.keys
    assert (key.kid, key.kty, key.alg) == ("sKv", "RSA", "RS256")
    assert isinstance(key.key, rsa.RSAPublicKey)


def test_encryption_and_symmetric_keys_are_ignored_and_signature_keys_kept() -> None:
    key_set = parse_jwks(jwks(
        public_jwk(rsa_key("other"), kid="enc", use="enc"),
        public_jwk(rsa_key("other"), kid="oaep", alg="RSA-OAEP", use=None),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        public_jwk(ec_key(), kid="sig"),
    ))
    assert [key.kid for key in key_set.keys] == ["sig"]
    assert len(key_set.ignored) == 3
    assert "use='enc'" in key_set.ignored[0] and "RSA-OAEP" in key_set.ignored[1]


def test_jwks_with_only_encryption_keys_has_no_signature_keys() -> None:
    with pytest.raises(ValueError, match="no signature keys"):
        parse_jwks(jwks(public_jwk(rsa_key(), kid="enc", alg="RSA-OAEP", use="enc")))


@pytest.mark.parametrize("document", [{"keys": []}, {"keys": "none"}, [], {"kty": "RSA"}],
                         ids=["empty key list", "keys not a list", "a JSON list", "a single JWK"])
def test_documents_without_usable_keys_are_refused(document: t.Any) -> None:
    with pytest.raises(ValueError):
        parse_jwks(document)


def test_private_key_material_is_reduced_to_the_public_key() -> None:
    private_jwk = RSAAlgorithm.to_jwk(rsa_key(), as_dict=True)
    private_jwk["kid"] = "leaky"
    private_jwk.pop("key_ops", None)
    (key,) = parse_jwks({"keys": [private_jwk]}).keys
    assert isinstance(key.key, rsa.RSAPublicKey)


def test_rsa_keys_shorter_than_2048_bits_are_ignored() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    key_set = parse_jwks(jwks(public_jwk(weak, kid="weak"), public_jwk(ed25519_key(), kid="ed")))
    assert [key.kid for key in key_set.keys] == ["ed"]
    assert "too weak" in key_set.ignored[0]


def test_ec_key_whose_alg_does_not_fit_its_curve_is_ignored() -> None:
    with pytest.raises(ValueError, match=NO_SIGNATURE_KEYS.split(" (")[0]):
        parse_jwks(jwks(public_jwk(ec_key("P-384"), kid="ec", alg="ES256")))


@pytest.mark.parametrize("kty, crv, alg, fits", [
    ("RSA", None, "RS256", True), ("RSA", None, "PS512", True), ("RSA", None, "ES256", False),
    ("EC", "P-256", "ES256", True), ("EC", "P-256", "ES384", False), ("EC", "P-521", "ES512", True),
    ("OKP", "Ed25519", "EdDSA", True), ("OKP", "X25519", "EdDSA", False), ("RSA", None, "HS256", False),
], ids=lambda value: str(value))
def test_key_fits_alg_only_for_its_own_family_and_curve(kty: str, crv: str | None, alg: str, fits: bool) -> None:
    assert key_fits_alg(kty, crv, alg) is fits


# -- remote JWKS: fetching and refreshing ----------------------------------------------

def test_remote_jwks_is_fetched_once_for_many_requests(requests_mock: t.Any, clock: FakeClock) -> None:
    jwks_route = requests_mock.get(JWKS_URL, json=main_jwks())
    jwt_validator = remote_validator(clock)
    for _ in range(5):
        assert jwt_validator.validate(token_for()).subject == "my-client"
    assert jwks_route.call_count == 1
    assert all(4.9 < part <= 5.0 for part in jwks_route.last_request.timeout)   # bounded by the 5 s deadline


def test_jwks_endpoint_down_at_first_use_is_an_identity_provider_error(requests_mock: t.Any,
                                                                      clock: FakeClock) -> None:
    jwks_route = requests_mock.get(JWKS_URL, exc=requests.ConnectionError("refused"))
    jwt_validator = remote_validator(clock)
    with pytest.raises(IdentityProviderError) as caught:
        jwt_validator.validate(token_for())
    assert caught.value.status_code == 503
    assert "ConnectionError" in str(caught.value)
    assert not jwt_validator.ready()
    assert jwks_route.call_count == 1


def test_requests_during_a_failed_first_fetchs_back_off_answer_503_without_fetching(
        requests_mock: t.Any, clock: FakeClock) -> None:
    jwks_route = requests_mock.get(JWKS_URL, [{"status_code": 500}, {"json": main_jwks()}])
    jwt_validator = remote_validator(clock)
    for _ in range(3):
        with pytest.raises(IdentityProviderError, match="HTTP 500"):
            jwt_validator.validate(token_for())
    assert jwks_route.call_count == 1
    clock.advance(FIRST_RETRY)
    assert jwt_validator.validate(token_for()).subject == "my-client"
    assert jwks_route.call_count == 2


def test_a_failed_first_fetch_is_retried_in_the_background_with_capped_exponential_back_off(
        requests_mock: t.Any, clock: FakeClock) -> None:
    jwks_route = requests_mock.get(JWKS_URL, status_code=503)
    spawn = RecordingSpawn()
    jwt_validator = remote_validator(clock, RemoteJwksSettings(JWKS_URL, refresh_interval=5.0), spawn)
    cache = jwt_validator.keys
    jwt_validator.warm_up()
    assert len(spawn.started) == 1
    waits = []
    for _ in range(5):
        wait = cache.retry_step()
        waits.append(wait)
        clock.advance(wait)
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0], "1 s first, doubling, never slower than refreshInterval"
    assert jwks_route.call_count == 5
    assert len(spawn.started) == 1, "one retry loop per cache, however many failures"

    requests_mock.get(JWKS_URL, json=main_jwks())          # the IdP is back
    assert cache.retry_step() is None                       # fetched at the next step; the loop ends
    assert jwt_validator.ready() and jwt_validator.not_ready_reason() is None


def test_back_off_is_capped_at_thirty_seconds_with_the_default_refresh_interval(
        requests_mock: t.Any, clock: FakeClock) -> None:
    requests_mock.get(JWKS_URL, exc=requests.ConnectionError("refused"))
    cache = remote_validator(clock).keys
    cache.warm_up()
    waits = []
    for _ in range(7):
        waits.append(cache.retry_step())
        clock.advance(waits[-1])
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_the_readiness_reason_says_what_failed_without_urls(requests_mock: t.Any, clock: FakeClock) -> None:
    requests_mock.get(JWKS_URL, status_code=503)
    jwt_validator = remote_validator(clock)
    assert jwt_validator.not_ready_reason() == "not fetched yet"
    jwt_validator.warm_up()
    reason = jwt_validator.not_ready_reason()
    assert reason is not None and reason.startswith("not fetched: ") and "HTTP 503" in reason
    assert "idp.example.test" not in reason and "http" not in reason.replace("HTTP", "")


def test_a_closed_cache_ends_its_background_retry(requests_mock: t.Any, clock: FakeClock) -> None:
    jwks_route = requests_mock.get(JWKS_URL, status_code=503)
    jwt_validator = remote_validator(clock)
    jwt_validator.warm_up()
    jwt_validator.close()                     # a reload dropped these settings
    clock.advance(60)
    assert jwt_validator.keys.retry_step() is None
    assert jwks_route.call_count == 1


def test_the_background_retry_thread_ends_when_its_cache_is_dropped(requests_mock: t.Any) -> None:
    requests_mock.get(JWKS_URL, status_code=503)
    threads: list[threading.Thread] = []

    def spawn(target: t.Callable[[], None], name: str) -> None:
        threads.append(threading.Thread(target=target, name=name, daemon=True))
        threads[-1].start()

    jwt_validator = JwtValidator(JwtSettings(jwks=RemoteJwksSettings(JWKS_URL, REFRESH)), spawn=spawn)
    jwt_validator.warm_up()
    assert len(threads) == 1 and threads[0].is_alive()
    del jwt_validator
    gc.collect()
    threads[0].join(5)
    assert not threads[0].is_alive()


@pytest.mark.parametrize("response, message", [
    ({"text": "<html><body>Login</body></html>", "headers": {"Content-Type": "text/html"}},
     "is not JSON (Content-Type text/html)"),
    ({"json": {"keys": []}}, "no signature keys"),
    ({"json": {"error": "nope"}}, "is not a JWKS"),
    ({"status_code": 404}, "HTTP 404"),
], ids=["HTML page", "empty key set", "not a JWKS", "not found"])
def test_unusable_jwks_answer_is_a_failed_fetch_logged_with_its_cause(
        requests_mock: t.Any, clock: FakeClock, caplog: pytest.LogCaptureFixture,
        response: dict[str, t.Any], message: str) -> None:
    requests_mock.get(JWKS_URL, **response)
    with caplog.at_level(logging.WARNING, logger="gateway_app.auth.jwks"):
        with pytest.raises(IdentityProviderError) as caught:
            remote_validator(clock).validate(token_for())
    assert message in str(caught.value)
    assert message in caplog.text


def test_keys_are_refreshed_after_the_refresh_interval(requests_mock: t.Any, clock: FakeClock) -> None:
    jwks_route = requests_mock.get(JWKS_URL, json=main_jwks())
    jwt_validator = remote_validator(clock)
    jwt_validator.validate(token_for())
    clock.advance(REFRESH - 1)
    jwt_validator.validate(token_for())
    assert jwks_route.call_count == 1
    clock.advance(1)
    jwt_validator.validate(token_for())
    assert jwks_route.call_count == 2


def test_failed_refresh_keeps_the_last_good_keys(requests_mock: t.Any, clock: FakeClock,
                                                caplog: pytest.LogCaptureFixture) -> None:
    jwks_route = requests_mock.get(JWKS_URL, [{"json": main_jwks()}, {"exc": requests.ConnectTimeout},
                                              {"text": "<html>oops</html>"}, {"json": main_jwks()}])
    jwt_validator = remote_validator(clock)
    jwt_validator.validate(token_for())
    clock.advance(REFRESH)
    with caplog.at_level(logging.WARNING, logger="gateway_app.auth.jwks"):
        assert jwt_validator.validate(token_for()).subject == "my-client"
    assert jwks_route.call_count == 2
    assert "keeping 1 key(s)" in caplog.text and "ConnectTimeout" in caplog.text
    jwt_validator.validate(token_for())
    assert jwks_route.call_count == 2, "a failed refresh is retried after the short interval, not at once"
    clock.advance(MIN_FETCH)
    assert jwt_validator.validate(token_for()).subject == "my-client"
    assert jwks_route.call_count == 3


def test_warm_up_fetches_now_and_swallows_failures(requests_mock: t.Any, clock: FakeClock,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    requests_mock.get(JWKS_URL, status_code=503)
    failing = remote_validator(clock)
    with caplog.at_level(logging.WARNING, logger="gateway_app.auth.jwks"):
        failing.warm_up()
    assert not failing.ready()
    assert "JWKS first fetch failed" in caplog.text and "HTTP 503" in caplog.text
    jwks_route = requests_mock.get(JWKS_URL, json=main_jwks())
    working = remote_validator(clock)
    working.warm_up()
    assert working.ready()
    working.validate(token_for())
    assert jwks_route.call_count == 1


def test_own_session_ignores_proxy_environment(requests_mock: t.Any, clock: FakeClock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    requests_mock.get(JWKS_URL, json=main_jwks())
    assert remote_validator(clock).validate(token_for()).subject == "my-client"
    assert not requests_mock.last_request.proxies      # a session reading the environment would send via the proxy


# -- key rotation and unknown kids -------------------------------------------------------

def test_key_rotation_is_picked_up_without_restart(requests_mock: t.Any, clock: FakeClock) -> None:
    jwks_route = requests_mock.get(JWKS_URL, json=main_jwks())
    jwt_validator = remote_validator(clock)
    old_token = token_for()
    jwt_validator.validate(old_token)
    requests_mock.get(JWKS_URL, json=jwks(public_jwk(rsa_key(), kid="main"), public_jwk(rsa_key("new"), kid="new")))
    assert jwt_validator.validate(token_for("new", "new")).subject == "my-client"
    assert jwt_validator.validate(old_token).subject == "my-client"
    assert requests_mock.call_count == 2
    assert jwks_route.call_count == 1


def test_key_removed_from_the_jwks_no_longer_verifies_after_refresh(requests_mock: t.Any,
                                                                     clock: FakeClock) -> None:
    requests_mock.get(JWKS_URL, json=main_jwks())
    jwt_validator = remote_validator(clock)
    old_token = token_for()
    jwt_validator.validate(old_token)
    requests_mock.get(JWKS_URL, json=jwks(public_jwk(rsa_key("new"), kid="new")))
    clock.advance(REFRESH)
    with pytest.raises(InvalidTokenError) as caught:
        jwt_validator.validate(old_token)
    assert caught.value.reason == "kid_unknown"


def test_flood_of_bogus_kids_causes_at_most_one_extra_fetch(requests_mock: t.Any, clock: FakeClock) -> None:
    jwks_route = requests_mock.get(JWKS_URL, json=main_jwks())
    jwt_validator = remote_validator(clock)
    jwt_validator.validate(token_for())
    for index in range(50):
        with pytest.raises(InvalidTokenError) as caught:
            jwt_validator.validate(token_for(kid=f"bogus-{index}"))
        assert caught.value.reason == "kid_unknown"
    assert jwks_route.call_count == 2


def test_unknown_kid_refetch_is_allowed_again_after_the_short_interval(requests_mock: t.Any,
                                                                      clock: FakeClock) -> None:
    jwks_route = requests_mock.get(JWKS_URL, json=main_jwks())
    jwt_validator = remote_validator(clock)
    for _ in range(2):
        with pytest.raises(InvalidTokenError):
            jwt_validator.validate(token_for(kid="bogus"))
    assert jwks_route.call_count == 2
    clock.advance(MIN_FETCH)
    with pytest.raises(InvalidTokenError):
        jwt_validator.validate(token_for(kid="bogus"))
    assert jwks_route.call_count == 3


# -- discovery ---------------------------------------------------------------------------

def test_discovery_finds_the_jwks_uri_from_the_issuer(requests_mock: t.Any, clock: FakeClock) -> None:
    discovery_route = requests_mock.get(DISCOVERY_URL, json={"issuer": ISSUER_URL, "jwks_uri": JWKS_URL})
    jwks_route = requests_mock.get(JWKS_URL, json=main_jwks())
    jwt_validator = remote_validator(clock, DiscoverySettings(ISSUER_URL, REFRESH))
    assert jwt_validator.validate(token_for()).subject == "my-client"
    clock.advance(REFRESH)
    assert jwt_validator.validate(token_for()).subject == "my-client"
    assert (discovery_route.call_count, jwks_route.call_count) == (1, 2)


@pytest.mark.parametrize("document, message", [
    ({"issuer": "https://evil.example/", "jwks_uri": JWKS_URL}, "names issuer 'https://evil.example/'"),
    ({"issuer": ISSUER_URL}, "no usable jwks_uri"),
    (["not", "an", "object"], "is not a JSON object"),
], ids=["issuer mismatch", "no jwks_uri", "not an object"])
def test_unusable_discovery_document_is_an_identity_provider_error(requests_mock: t.Any, clock: FakeClock,
                                                                  document: t.Any, message: str) -> None:
    requests_mock.get(DISCOVERY_URL, json=document)
    with pytest.raises(IdentityProviderError) as caught:
        remote_validator(clock, DiscoverySettings(ISSUER_URL, REFRESH)).validate(token_for())
    assert message in str(caught.value)


def test_discovery_is_repeated_after_a_failed_jwks_fetch(requests_mock: t.Any, clock: FakeClock) -> None:
    discovery_route = requests_mock.get(DISCOVERY_URL, json={"issuer": ISSUER_URL, "jwks_uri": JWKS_URL})
    requests_mock.get(JWKS_URL, [{"status_code": 500}, {"json": main_jwks()}])
    jwt_validator = remote_validator(clock, DiscoverySettings(ISSUER_URL, REFRESH))
    with pytest.raises(IdentityProviderError):
        jwt_validator.validate(token_for())
    clock.advance(MIN_FETCH)
    assert jwt_validator.validate(token_for()).subject == "my-client"
    assert discovery_route.call_count == 2


# -- threads -----------------------------------------------------------------------------

def test_eight_threads_validating_during_a_slow_refresh_all_succeed(requests_mock: t.Any,
                                                                   clock: FakeClock) -> None:
    fetching, finish = threading.Event(), threading.Event()

    def slow_jwks(request: t.Any, context: t.Any) -> dict[str, t.Any]:
        fetching.set()
        finish.wait(5)                       # the refresh is held until the other seven have answered
        return main_jwks()

    jwks_route = requests_mock.get(JWKS_URL, [{"json": main_jwks()}, {"json": slow_jwks}])
    jwt_validator = remote_validator(clock)
    jwt_validator.validate(token_for())
    clock.advance(REFRESH)
    token = token_for()
    start = threading.Barrier(8)
    outcomes: list[str] = []
    seven_answered, counting = threading.Event(), threading.Lock()

    def validate() -> None:
        start.wait()
        try:
            subject = jwt_validator.validate(token).subject or ""
        except Exception as e:  # noqa: BLE001 - the assertion below reports it
            subject = repr(e)
        with counting:
            outcomes.append(subject)
            if len(outcomes) == 7:
                seven_answered.set()

    threads = [threading.Thread(target=validate) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert fetching.wait(5)
    only_the_fetcher_waits = seven_answered.wait(5)
    finish.set()
    for thread in threads:
        thread.join(timeout=5)
    assert only_the_fetcher_waits, f"only the fetching thread may wait for the refresh: {outcomes}"
    assert outcomes == ["my-client"] * 8
    assert jwks_route.call_count == 2


def test_concurrent_first_use_fetches_once_and_never_queues_behind_the_fetch(requests_mock: t.Any,
                                                                              clock: FakeClock) -> None:
    fetching, finish = threading.Event(), threading.Event()

    def slow_jwks(request: t.Any, context: t.Any) -> dict[str, t.Any]:
        fetching.set()
        finish.wait(5)
        return main_jwks()

    jwks_route = requests_mock.get(JWKS_URL, json=slow_jwks)
    jwt_validator = remote_validator(clock)
    first: list[str | None] = []
    leader = threading.Thread(target=lambda: first.append(jwt_validator.validate(token_for()).subject))
    leader.start()
    assert fetching.wait(5)
    with pytest.raises(IdentityProviderError):          # a slow JWKS endpoint holds one thread, not all
        jwt_validator.validate(token_for())
    finish.set()
    leader.join(timeout=5)
    assert first == ["my-client"]
    assert jwt_validator.validate(token_for()).subject == "my-client"
    assert jwks_route.call_count == 1
