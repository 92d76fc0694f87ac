"""JSON Web Key Sets: parsed once into ready-to-use public keys, and where they come from.

:func:`parse_jwks` turns a JWKS document into a :class:`KeySet`, keeping only signature
keys (``use: enc``, encryption ``alg`` values and symmetric keys are ignored).
:class:`StaticJwks` serves an inline set; :class:`JwksCache` fetches one over HTTP, from a
fixed URL or through OpenID discovery, and refreshes it lazily on the request path:

* the first use fetches (failures raise :class:`IdentityProviderError`);
* while no keys were ever fetched, a background thread retries with capped exponential
  back-off (1 s, 2 s, 4 s ... at most ``min(refreshInterval, 30 s)``), so readiness recovers
  by itself when the IdP comes back, without waiting for traffic; requests meanwhile answer
  503 at once with the last failure. The thread only fetches (it never touches a policy
  engine), is a daemon (it ends with the worker), and ends once the keys are in, when the
  cache is closed (a reload dropped its settings) or garbage-collected: one per cache, and
  caches are shared by every config generation with the same settings;
* after ``refresh_interval`` one thread re-fetches while the others keep the current keys;
* an unknown ``kid`` triggers at most one re-fetch per ``min_fetch_interval``;
* a failed refresh keeps the last good keys and is retried after ``min_fetch_interval``.

The first fetch happens in the worker (gunicorn forks workers before the app is built), so
the background thread is started in the process that uses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
import threading
import time
import typing as t
import weakref

import jwt
import requests
from cryptography.hazmat.primitives import serialization

from ..config.fields import Node
from ..errors import IdentityProviderError
from ..json_input import loads
from . import idp_http
from ..metrics import IdpMetrics

log = logging.getLogger("gateway_app.auth.jwks")

SIGNATURE_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
DEFAULT_REFRESH_INTERVAL = 300.0
DEFAULT_MIN_FETCH_INTERVAL = 30.0
FIRST_RETRY = 1.0                 # seconds before the first background retry of a failed first fetch
MAX_RETRY_INTERVAL = 30.0         # back-off cap (and never above refreshInterval)
_URL = re.compile(r"\s*\b(?:from|at)\s+https?://\S+|https?://\S+")
MAX_JWKS_BYTES = 512 * 1024
NO_SIGNATURE_KEYS = "the JWKS has no signature keys (keys with use=enc such as RSA-OAEP are ignored)"

_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_OKP_CURVES = ("Ed25519", "Ed448")


def key_fits_alg(kty: str, crv: str | None, alg: str) -> bool:
    """Whether a key of type ``kty`` (curve ``crv``) can verify signatures made with ``alg``."""
    if alg in _EC_CURVES:
        return kty == "EC" and crv == _EC_CURVES[alg]
    if alg == "EdDSA":
        return kty == "OKP" and crv in _OKP_CURVES
    if alg in SIGNATURE_ALGORITHMS:
        return kty == "RSA"
    return False


@dataclasses.dataclass(frozen=True)
class VerificationKey:
    """One public key from a JWKS, built once; ``alg`` is the JWK's own ``alg``, if any."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: t.Any = dataclasses.field(repr=False)
    thumbprint: str = ""            # SHA-256 of the public key (DER SubjectPublicKeyInfo), hex

    def fits(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        return key_fits_alg(self.kty, self.crv, alg)

    def describe(self) -> str:
        parts = [f"kid {self.kid!r}" if self.kid is not None else "no kid", self.kty]
        if self.crv:
            parts.append(self.crv)
        if self.alg:
            parts.append(f"alg {self.alg}")
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True, eq=False)
class KeySet:
    """The usable keys of one JWKS, indexed by ``kid``; ``ignored`` says why others were dropped."""

    keys: tuple[VerificationKey, ...]
    ignored: tuple[str, ...] = ()
    _by_kid: dict[str, tuple[VerificationKey, ...]] = dataclasses.field(init=False, repr=False)
    _by_thumbprint: dict[str, VerificationKey] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_kid: dict[str, tuple[VerificationKey, ...]] = {}
        for key in self.keys:
            if key.kid is not None:
                by_kid[key.kid] = by_kid.get(key.kid, ()) + (key,)
        object.__setattr__(self, "_by_kid", by_kid)
        object.__setattr__(self, "_by_thumbprint", {key.thumbprint: key for key in self.keys if key.thumbprint})

    def with_kid(self, kid: str) -> tuple[VerificationKey, ...]:
        return self._by_kid.get(kid, ())

    def with_thumbprint(self, thumbprint: str) -> VerificationKey | None:
        return self._by_thumbprint.get(thumbprint)

    def fitting(self, alg: str) -> tuple[VerificationKey, ...]:
        return tuple(key for key in self.keys if key.fits(alg))

    def supports_any(self, algorithms: t.Iterable[str]) -> bool:
        return any(self.fitting(alg) for alg in algorithms)

    def summary(self) -> str:
        kids = ", ".join(repr(key.kid) for key in self.keys if key.kid is not None)
        text = f"{len(self.keys)} key(s)" + (f" (kids {kids})" if kids else "")
        return text + (f", {len(self.ignored)} ignored" if self.ignored else "")


# -- parsing -----------------------------------------------------------------

def load_jwks_json(text: str | bytes) -> KeySet:
    """Parse a JWKS from JSON text.

    :raises ValueError: not JSON, not a JWKS, or no usable signature key.
    """
    try:
        document = loads(text)
    except ValueError as e:
        raise ValueError(f"is not JSON the gateway accepts ({e})") from None
    return parse_jwks(document)


def parse_jwks(document: t.Any) -> KeySet:
    """Build the signature keys of a decoded JWKS document.

    :raises ValueError: not a ``{"keys": [...]}`` object, or no usable signature key.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('is not a JWKS: expected a JSON object with a "keys" list')
    keys: list[VerificationKey] = []
    ignored: list[str] = []
    for index, jwk in enumerate(document["keys"]):
        key_or_reason = _build_key(jwk)
        if isinstance(key_or_reason, VerificationKey):
            keys.append(key_or_reason)
        else:
            ignored.append(f"keys[{index}]: {key_or_reason}")
    if not keys:
        details = f"; ignored: {'; '.join(ignored)}" if ignored else ""
        raise ValueError(NO_SIGNATURE_KEYS + details)
    return KeySet(tuple(keys), tuple(ignored))


def _build_key(jwk: t.Any) -> VerificationKey | str:
    """A :class:`VerificationKey`, or the reason the JWK is not a usable signature key."""
    if not isinstance(jwk, dict):
        return "not a JSON object"
    reason = _skip_reason(jwk)
    if reason:
        return reason
    kty, crv, alg = jwk["kty"], jwk.get("crv"), jwk.get("alg")
    build_alg = alg or _default_alg(kty, crv)
    if build_alg is None:
        return f"unsupported {kty} curve {crv!r}"
    try:
        key = jwt.PyJWK(jwk, algorithm=build_alg)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError) as e:
        return f"cannot build the key ({type(e).__name__})"      # members of the wrong type or size
    public_key = _public_part(key.key, jwk.get("kid"))
    weakness = key.Algorithm.check_key_length(public_key)
    if weakness:
        return f"too weak: {weakness}"
    return VerificationKey(jwk.get("kid"), kty, crv, alg, public_key, thumbprint=_thumbprint(public_key))


def _thumbprint(public_key: t.Any) -> str:
    """The key's identity across processes: SHA-256 of its DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _skip_reason(jwk: dict[str, t.Any]) -> str | None:
    kty, use, alg, kid = jwk.get("kty"), jwk.get("use"), jwk.get("alg"), jwk.get("kid")
    key_ops = jwk.get("key_ops")
    if kid is not None and not isinstance(kid, str):
        return "kid is not a string"
    if use is not None and use != "sig":
        return f"use={use!r} (not a signature key)"
    if isinstance(key_ops, list) and "verify" not in key_ops:
        return "key_ops does not include verify"
    if alg is not None and alg not in SIGNATURE_ALGORITHMS:
        return f"alg={alg!r} is not a supported signature algorithm"
    if kty == "oct":
        return "symmetric (oct) keys are never used"
    if kty not in ("RSA", "EC", "OKP"):
        return f"unsupported kty {kty!r}"
    if kty != "RSA" and not isinstance(jwk.get("crv"), str):
        return f"{kty} key without crv"
    if alg is not None and not key_fits_alg(kty, jwk.get("crv"), alg):
        return f"alg {alg} does not fit a {kty} key"
    return None


def _default_alg(kty: str, crv: str | None) -> str | None:
    if kty == "RSA":
        return "RS256"
    if kty == "EC":
        return next((alg for alg, curve in _EC_CURVES.items() if curve == crv), None)
    return "EdDSA" if crv in _OKP_CURVES else None


def _public_part(key: t.Any, kid: t.Any) -> t.Any:
    if hasattr(key, "private_bytes") and hasattr(key, "public_key"):
        log.warning("JWKS key %r publishes private key material; only its public part is used", kid)
        return key.public_key()
    return key


# -- where the keys come from --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LocalJwksSettings:
    """``localJwks.inlineString``, parsed at start-up; equal settings have equal text."""

    inline_string: str
    key_set: KeySet = dataclasses.field(compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class RemoteJwksSettings:
    """``remoteJwks``: a fixed JWKS URL."""

    url: str
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL


@dataclasses.dataclass(frozen=True)
class DiscoverySettings:
    """``discovery``: ``<issuerUrl>/.well-known/openid-configuration`` names the ``jwks_uri``."""

    issuer_url: str
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL


JwksSettings = LocalJwksSettings | RemoteJwksSettings | DiscoverySettings


def parse_jwks_settings(node: Node, algorithms: t.Sequence[str]) -> JwksSettings:
    """Read ``localJwks`` | ``remoteJwks`` | ``discovery`` from the ``jwt`` mapping.

    :raises ConfigError: none or several given, unknown fields, or an unusable inline JWKS.
    """
    choice = node.one_of("localJwks", "remoteJwks", "discovery")
    child = node.child(str(choice), required=True)
    assert child is not None
    if choice == "localJwks":
        settings: JwksSettings = _parse_local(child, algorithms)
    elif choice == "remoteJwks":
        settings = RemoteJwksSettings(_url(child, "url"), _refresh_interval(child))
    else:
        settings = DiscoverySettings(_url(child, "issuerUrl"), _refresh_interval(child))
    child.done()
    return settings


def _parse_local(node: Node, algorithms: t.Sequence[str]) -> LocalJwksSettings:
    text = node.str("inlineString", required=True)
    try:
        key_set = load_jwks_json(text)
    except ValueError as e:
        raise node.error("inlineString", str(e)) from e
    if not key_set.supports_any(algorithms):
        raise node.error("inlineString", f"no key in the JWKS can verify any allowed algorithm "
                                         f"({', '.join(algorithms)})")
    return LocalJwksSettings(text, key_set)


def _url(node: Node, field: str) -> str:
    url = node.str(field, required=True)
    if not url.startswith(("https://", "http://")):
        raise node.error(field, f"expected an http(s) URL, got {url!r}")
    return url


def _refresh_interval(node: Node) -> float:
    return node.duration("refreshInterval", default=DEFAULT_REFRESH_INTERVAL, minimum=1.0)


class KeySource(t.Protocol):
    """What the JWT validator asks for keys."""

    def current(self) -> KeySet: ...

    def refetch(self) -> KeySet: ...

    def ready(self) -> bool: ...

    def not_ready_reason(self) -> str | None: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


Spawn = t.Callable[[t.Callable[[], None], str], None]


def start_daemon_thread(target: t.Callable[[], None], name: str) -> None:
    """The default :data:`Spawn`: a daemon thread, so a worker never waits for it at exit."""
    threading.Thread(target=target, name=name, daemon=True).start()


def _key_ids(key_set: KeySet) -> list[str]:
    return sorted({key.kid for key in key_set.keys if key.kid is not None})


class StaticJwks:
    """An inline JWKS: always ready, never fetched."""

    def __init__(self, key_set: KeySet) -> None:
        self._key_set = key_set

    def current(self) -> KeySet:
        return self._key_set

    def refetch(self) -> KeySet:
        return self._key_set

    def ready(self) -> bool:
        return True

    def not_ready_reason(self) -> str | None:
        return None

    def warm_up(self) -> None:
        return None

    def close(self) -> None:
        return None
    def state(self) -> dict[str, t.Any]:
        """For the admin view: the inline keys' ids."""
        return {"jwks": "inline", "key_ids": _key_ids(self._key_set)}


class JwksCache:
    """A remote JWKS (fixed URL, or discovered from an issuer), fetched with ``requests``.

    ``clock`` (monotonic seconds) and ``spawn`` (starts the background retry, see the module
    docstring) are injected by tests, which then drive the retry with :meth:`retry_step`.
    """

    def __init__(self, *, url: str | None = None, issuer_url: str | None = None,
                 refresh_interval: float = DEFAULT_REFRESH_INTERVAL, timeout: float = 5.0,
                 session: requests.Session | None = None,
                 min_fetch_interval: float = DEFAULT_MIN_FETCH_INTERVAL,
                 clock: t.Callable[[], float] = time.monotonic,
                 spawn: Spawn = start_daemon_thread) -> None:
        if (url is None) == (issuer_url is None):
            raise ValueError("give exactly one of url and issuer_url")
        self.url = url
        self.issuer_url = issuer_url
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self.min_fetch_interval = min_fetch_interval
        self._session = session or idp_http.new_session()
        self._limit = idp_http.call_limit(url or issuer_url or "")
        self._clock = clock
        self._lock = threading.Lock()
        self._key_set: KeySet | None = None
        self._jwks_uri = url
        self._refresh_due = float("-inf")
        self._last_refetch = float("-inf")
        self._last_error = ""
        self._fetched_at: float | None = None          # clock time of the last successful fetch
        self._metrics = IdpMetrics(url or issuer_url or "", "jwks")
        self._spawn = spawn
        self._retry_cap = min(refresh_interval, MAX_RETRY_INTERVAL)
        self._next_retry = min(FIRST_RETRY, self._retry_cap)
        self._retrying = False
        self._closed = threading.Event()
        weakref.finalize(self, self._closed.set).atexit = False    # a dropped cache ends its retry

    @property
    def source(self) -> str:
        return self.url or f"discovery at {self.issuer_url}"

    def state(self) -> dict[str, t.Any]:
        """For the admin view (no URLs, no key material): the IdP's ``host:port``, the key ids,
        seconds since the last successful fetch, seconds until the next fetch or retry, and the
        last fetch error."""
        now = self._clock()
        key_set = self._key_set
        last_ok = self._fetched_at
        return {"jwks": "remote", "idp": self._metrics.idp, "ready": key_set is not None,
                "key_ids": _key_ids(key_set) if key_set is not None else [],
                "last_fetch_seconds_ago": round(now - last_ok, 3) if last_ok is not None else None,
                "next_fetch_in_seconds": round(max(0.0, self._refresh_due - now), 3)
                if self._refresh_due != float("-inf") else 0.0,
                "last_error": self._last_error.replace(self.url or "", self._metrics.idp) or None}

    def ready(self) -> bool:
        return self._key_set is not None

    def not_ready_reason(self) -> str | None:
        """Why there are no keys yet (``"not fetched: <last failure>"``, URLs left out), or None."""
        if self._key_set is not None:
            return None
        error = _URL.sub("", self._last_error).strip()
        return f"not fetched: {error}" if error else "not fetched yet"

    def warm_up(self) -> None:
        """Try the first fetch now; a failure is logged and retried in the background."""
        try:
            self.current()
        except IdentityProviderError:
            pass  # already logged by _first_fetch; retried in the background

    def close(self) -> None:
        """Stop the background retry (the config no longer uses these settings)."""
        self._closed.set()

    def retry_step(self) -> float | None:
        """One step of the background retry: fetch when due (keys still missing).

        :returns: seconds until the next step, or None once the keys are in or the cache is
            closed (the retry ends).
        """
        if self._closed.is_set() or self._key_set is not None:
            return None
        wait = self._refresh_due - self._clock()
        if wait > 0:
            return wait
        try:
            self._first_fetch()
        except IdentityProviderError:
            pass  # logged; the next attempt was scheduled by _fetch
        if self._key_set is not None:
            return None
        return max(self._refresh_due - self._clock(), 0.0)

    def _start_retrying(self) -> None:
        """Start the background retry once (caller holds the lock)."""
        if self._retrying or self._closed.is_set():
            return
        self._retrying = True
        self._spawn(_retry_loop(weakref.ref(self), self._closed), f"jwks-retry-{self._metrics.idp}")

    def current(self) -> KeySet:
        """The keys to verify with, refreshing them when due.

        :raises IdentityProviderError: no keys were ever fetched and fetching fails now.
        """
        key_set = self._key_set
        if key_set is None:
            return self._first_fetch()
        if self._clock() >= self._refresh_due and self._lock.acquire(blocking=False):
            try:
                if self._clock() >= self._refresh_due:
                    self._try_fetch("scheduled refresh")
            finally:
                self._lock.release()
        return self._key_set or key_set

    def refetch(self) -> KeySet:
        """Re-fetch for an unknown ``kid``, at most once per ``min_fetch_interval``.

        :raises IdentityProviderError: no keys were ever fetched and fetching fails now.
        """
        if self._key_set is None:
            return self._first_fetch()
        if not self._lock.acquire(timeout=idp_http.QUEUE_WAIT):
            return self._key_set                 # another request is fetching: never queue behind it
        try:
            now = self._clock()
            if now - self._last_refetch >= self.min_fetch_interval:
                self._last_refetch = now
                self._try_fetch("unknown kid")
            assert self._key_set is not None
            return self._key_set
        finally:
            self._lock.release()

    def _first_fetch(self) -> KeySet:
        """:raises IdentityProviderError: the fetch failed, or another request is fetching (never queue
        behind a slow JWKS endpoint: one request waits for it, the others answer 503 at once)."""
        if not self._lock.acquire(timeout=idp_http.QUEUE_WAIT):
            raise IdentityProviderError(f"no JWKS from {self.source} yet; another request is fetching it")
        with _held(self._lock):
            if self._key_set is not None:
                return self._key_set
            if self._clock() < self._refresh_due:
                raise IdentityProviderError(f"no JWKS from {self.source} yet; the last fetch failed: "
                                            f"{self._last_error}")
            try:
                self._fetch()
            except IdentityProviderError as e:
                log.warning("JWKS first fetch failed; requests needing it answer 503 until it succeeds "
                            "(next try in %.0fs): %s", max(self._refresh_due - self._clock(), 0.0), str(e))
                self._start_retrying()
                raise
            assert self._key_set is not None
            return self._key_set

    def _try_fetch(self, why: str) -> None:
        """Fetch, keeping the current keys (and logging) on failure. Caller holds the lock."""
        try:
            self._fetch()
        except IdentityProviderError as e:
            kept = self._key_set.summary() if self._key_set else "no keys"
            log.warning("JWKS %s failed, keeping %s: %s", why, kept, e)

    def _fetch(self) -> None:
        """Fetch and install a new key set. Caller holds the lock.

        :raises IdentityProviderError: the IdP is unreachable or answers something unusable.
        """
        started = self._clock()
        try:
            key_set = self._timed_download()
        except IdentityProviderError as e:
            self._metrics.jwks_refresh(ok=False)
            self._refresh_due = started + self._retry_delay()
            self._last_error = str(e)
            if self.issuer_url is not None:
                self._jwks_uri = None
            raise
        self._metrics.jwks_refresh(ok=True)
        self._fetched_at = started
        self._key_set = key_set
        self._refresh_due = started + self.refresh_interval
        log.info("JWKS loaded from %s: %s", self._jwks_uri, key_set.summary())

    def _retry_delay(self) -> float:
        """After a failed fetch: ``min_fetch_interval`` with keys in hand, else the next back-off step."""
        if self._key_set is not None:
            return self.min_fetch_interval
        delay = self._next_retry
        self._next_retry = min(delay * 2, self._retry_cap)
        return delay

    def _timed_download(self) -> KeySet:
        """Discovery (if any) and the JWKS, within ``timeout`` in total and one slot of the endpoint's limit."""
        began = time.perf_counter()
        try:
            with self._limit.slot(), idp_http.deadline(self.timeout):
                return self._download()
        except IdentityProviderError:
            self._metrics.error("jwks_fetch_failed")
            raise
        finally:
            self._metrics.observe_call(time.perf_counter() - began)

    def _download(self) -> KeySet:
        uri = self._jwks_uri or self._discover()
        self._jwks_uri = uri
        document = self._get_json(uri, "JWKS")
        try:
            return parse_jwks(document)
        except ValueError as e:
            raise IdentityProviderError(f"JWKS from {uri} {e}") from e

    def _discover(self) -> str:
        assert self.issuer_url is not None
        url = self.issuer_url.rstrip("/") + "/.well-known/openid-configuration"
        document = self._get_json(url, "OpenID configuration")
        if not isinstance(document, dict):
            raise IdentityProviderError(f"OpenID configuration at {url} is not a JSON object")
        issuer = document.get("issuer")
        if isinstance(issuer, str) and issuer.rstrip("/") != self.issuer_url.rstrip("/"):
            raise IdentityProviderError(f"OpenID configuration at {url} names issuer {issuer!r}, "
                                        f"expected {self.issuer_url!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise IdentityProviderError(f"OpenID configuration at {url} has no usable jwks_uri")
        return jwks_uri

    def _get_json(self, url: str, what: str) -> t.Any:
        try:
            with self._session.get(url, timeout=idp_http.timeouts(self.timeout), stream=True,
                                   headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise IdentityProviderError(f"{what} fetch from {url} answered HTTP {response.status_code}")
                body = idp_http.read_body(response, MAX_JWKS_BYTES)
                content_type = response.headers.get("Content-Type", "")
        except idp_http.BodyTooLargeError as e:
            raise IdentityProviderError(f"{what} from {url}: {e}") from None
        except requests.RequestException as e:
            late = " (deadline passed)" if idp_http.expired() else ""
            raise IdentityProviderError(f"{what} fetch from {url} failed: {type(e).__name__}{late}") from e
        try:
            return loads(body)
        except ValueError as e:
            raise IdentityProviderError(f"{what} from {url} is not JSON "
                                        f"(Content-Type {content_type or 'missing'}): {e}") from None


@contextlib.contextmanager
def _held(lock: threading.Lock) -> t.Iterator[None]:
    """Release an already acquired ``lock`` when the block ends."""
    try:
        yield
    finally:
        lock.release()


def _retry_loop(cache_ref: weakref.ref[JwksCache], closed: threading.Event) -> t.Callable[[], None]:
    """The background retry of one cache; holds it only weakly, so a dropped cache ends it."""

    def run() -> None:
        while True:
            cache = cache_ref()
            if cache is None:
                return
            try:
                wait = cache.retry_step()
            except Exception:  # a retry loop must not die silently; the next step tries again
                log.exception("JWKS background retry failed")
                wait = MAX_RETRY_INTERVAL
            del cache
            if wait is None or closed.wait(wait):
                return

    return run


def build_key_source(settings: JwksSettings, *, timeout: float, session: requests.Session | None = None,
                     min_fetch_interval: float = DEFAULT_MIN_FETCH_INTERVAL,
                     clock: t.Callable[[], float] = time.monotonic,
                     spawn: Spawn = start_daemon_thread) -> KeySource:
    """The key source a validator uses for these settings."""
    if isinstance(settings, LocalJwksSettings):
        return StaticJwks(settings.key_set)
    url = settings.url if isinstance(settings, RemoteJwksSettings) else None
    issuer_url = settings.issuer_url if isinstance(settings, DiscoverySettings) else None
    return JwksCache(url=url, issuer_url=issuer_url, refresh_interval=settings.refresh_interval,
                     timeout=timeout, session=session, min_fetch_interval=min_fetch_interval, clock=clock,
                     spawn=spawn)

