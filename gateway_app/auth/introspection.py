"""OAuth 2.0 token introspection (RFC 7662): settings, the IdP call, and a cached validator.

:func:`parse_introspection_settings` reads Gloo's ``accessTokenValidation.introspection`` block
once; :class:`IntrospectionValidator` answers ``validate(token) -> TokenInfo`` per request.
The IdP's answer is trusted only when it is a JSON object whose ``active`` is exactly ``true``;
anything else the IdP says or fails to say is an :class:`IdentityProviderError` (fail closed).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
import typing as t
import urllib.parse

import requests

from ..cache import CacheBackend
from ..cache import KeyHasher
from ..cache import SingleFlight
from ..cache import TTLCache
from ..cache import hash_key
from ..config.fields import Node
from ..config.secrets import SecretStore
from ..describe import describe_type
from ..errors import IdentityProviderError
from ..errors import IdpOverloadedError
from ..errors import InvalidTokenError
from ..json_input import loads
from ..metrics import IdpMetrics
from . import idp_http
from .client_auth import ClientAuthSettings
from .client_auth import build_client_auth
from .client_auth import parse_client_authentication
from .state import TokenInfo
from .tokens import DEFAULT_MAX_TOKEN_LENGTH
from .tokens import MAX_TOKEN_LENGTH
from .tokens import check_token_shape

log = logging.getLogger("gateway_app.auth.introspection")

DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 2
DEFAULT_RETRY_BACKOFF = 0.1
MAX_RETRY_BACKOFF = 2.0
DEFAULT_CACHE_TIMEOUT = 600.0
DEFAULT_NEGATIVE_CACHE_TIMEOUT = 5.0
DEFAULT_MAX_CACHE_ENTRIES = 10_000
MAX_ANSWER_BYTES = 1 << 20
EXCERPT_CHARS = 120

# Headers the gateway sets itself; users may not override them with ``headers``.
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding", "connection", "accept"})
_VISIBLE_ASCII = frozenset(chr(c) for c in range(0x21, 0x7F))


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    """How to trust the IdP and, for mutual TLS, which certificate to present."""

    ca_bundle: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None
    insecure_skip_verify: bool = False

    @property
    def verify(self) -> bool | str:
        """The ``verify`` argument for requests."""
        if self.insecure_skip_verify:
            return False
        return self.ca_bundle or True

    @property
    def cert(self) -> str | tuple[str, str] | None:
        """The ``cert`` argument for requests."""
        if self.client_certificate and self.client_key:
            return (self.client_certificate, self.client_key)
        return self.client_certificate


@dataclasses.dataclass(frozen=True)
class IntrospectionSettings:
    """A validated ``introspection`` block. Secrets are :class:`SecretValue`s; durations are seconds."""

    introspection_url: str
    client_auth: ClientAuthSettings
    headers: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    token_type_hint: str = "access_token"
    timeout: float = DEFAULT_TIMEOUT                 # total, for one validation, retries included
    retries: int = DEFAULT_RETRIES                   # connection errors and 5xx; timeouts only with retry_on_timeout
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_on_timeout: bool = False
    max_concurrent_calls: int = idp_http.DEFAULT_MAX_CONCURRENT_CALLS
    cache_timeout: float = DEFAULT_CACHE_TIMEOUT
    negative_cache_timeout: float = DEFAULT_NEGATIVE_CACHE_TIMEOUT
    max_cache_entries: int = DEFAULT_MAX_CACHE_ENTRIES
    max_token_length: int = DEFAULT_MAX_TOKEN_LENGTH
    leeway: float = 0.0
    tls: TlsSettings = dataclasses.field(default_factory=TlsSettings)
    user_id_attribute_name: str = "sub"

    @property
    def client_id(self) -> str | None:
        """The OAuth client the gateway introspects as (RFC 7662 §2.1), when it has one."""
        return self.client_auth.client_id

    @property
    def fingerprint(self) -> str:
        """A hash of every setting that can change the IdP's answer, for cache keys."""
        header_parts = [f"{name.lower()}:{value}" for name, value in sorted(self.headers.items())]
        return hash_key(
            "introspection/v1",
            self.introspection_url,
            self.token_type_hint,
            *self.client_auth.fingerprint_parts(),
            *header_parts,
        )

    @property
    def config_digest(self) -> str:
        """A hash of *all* settings (timeouts, TLS, cache sizes too): equal digests, interchangeable validators."""
        others = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                  if f.name not in ("introspection_url", "client_auth", "headers", "token_type_hint")]
        return hash_key(self.fingerprint, *others)


def parse_introspection_settings(node: Node, secrets: SecretStore, default_namespace: str) -> IntrospectionSettings:
    """Read the ``introspection`` mapping.

    :raises ConfigError: unknown field, bad URL or duration, missing TLS file, unusable credentials.
    """
    url = _read_url(node)
    client_auth = parse_client_authentication(node, secrets, default_namespace, default_audience=url)
    settings = IntrospectionSettings(
        introspection_url=url,
        client_auth=client_auth,
        headers=_read_headers(node, client_auth),
        token_type_hint=node.str("tokenTypeHint", default="access_token"),
        timeout=node.duration("timeout", default=DEFAULT_TIMEOUT, minimum=0.001),
        retries=node.int("retries", default=DEFAULT_RETRIES, minimum=0, maximum=10),
        retry_backoff=node.duration("retryBackoff", default=DEFAULT_RETRY_BACKOFF),
        retry_on_timeout=node.bool("retryOnTimeout"),
        max_concurrent_calls=node.int("maxConcurrentCalls", default=idp_http.DEFAULT_MAX_CONCURRENT_CALLS,
                                      minimum=1, maximum=256),
        cache_timeout=node.duration("cacheTimeout", default=DEFAULT_CACHE_TIMEOUT),
        negative_cache_timeout=node.duration("negativeCacheTimeout", default=DEFAULT_NEGATIVE_CACHE_TIMEOUT),
        max_cache_entries=node.int("maxCacheEntries", default=DEFAULT_MAX_CACHE_ENTRIES, minimum=1),
        max_token_length=node.int("maxTokenLength", default=DEFAULT_MAX_TOKEN_LENGTH, minimum=1,
                                  maximum=MAX_TOKEN_LENGTH),
        leeway=_read_leeway(node),
        tls=_read_tls(node, url),
        user_id_attribute_name=node.str("userIdAttributeName", default="sub"),
    )
    node.done()
    return settings


def _read_url(node: Node) -> str:
    url = node.str("introspectionUrl", required=True)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise node.error("introspectionUrl", f"is not a valid URL: {e}") from e
    if parts.scheme not in ("http", "https"):
        raise node.error("introspectionUrl", "must be an http:// or https:// URL")
    if not parts.hostname:
        raise node.error("introspectionUrl", "has no host")
    if parts.username is not None or parts.password is not None:
        raise node.error("introspectionUrl", "must not contain credentials; use clientSecretRef")
    if parts.fragment:
        raise node.error("introspectionUrl", "must not contain a fragment")
    return url


def _read_headers(node: Node, client_auth: ClientAuthSettings) -> dict[str, str]:
    headers = node.str_map("headers")
    auth_header = _client_auth_header(client_auth)
    for name, value in headers.items():
        if not name or any(c not in _VISIBLE_ASCII or c == ":" for c in name):
            raise node.error(f"headers.{name}", "is not a valid header name")
        if any(c in value for c in "\r\n\0"):
            raise node.error(f"headers.{name}", "must not contain a line break")
        if name.lower() in _RESERVED_HEADERS:
            raise node.error(f"headers.{name}", "is set by the gateway and cannot be overridden")
        if name.lower() == auth_header:
            raise node.error(f"headers.{name}", f"is set by client authentication method {client_auth.method}")
    return headers


def _client_auth_header(client_auth: ClientAuthSettings) -> str | None:
    """The (lower-cased) header the client authentication method sets, if any."""
    if client_auth.method in ("client_secret_basic", "bearer"):
        return "authorization"
    if client_auth.method == "header" and client_auth.header_name:
        return client_auth.header_name.lower()
    return None


def _read_leeway(node: Node) -> float:
    leeway = node.duration("leeway", default=0.0)
    if leeway > 60:
        raise node.error("leeway", "must be at most 60s")
    return leeway


def _read_tls(node: Node, url: str) -> TlsSettings:
    tls = node.child("tls")
    if tls is None:
        return TlsSettings()
    settings = TlsSettings(
        ca_bundle=_read_file_path(tls, "caBundle"),
        client_certificate=_read_file_path(tls, "clientCertificate"),
        client_key=_read_file_path(tls, "clientKey"),
        insecure_skip_verify=tls.bool("insecureSkipVerify"),
    )
    tls.done()
    if not url.lower().startswith("https:"):
        raise node.error("tls", "only applies to an https:// introspectionUrl")
    if settings.client_key and not settings.client_certificate:
        raise tls.error("clientKey", "needs clientCertificate")
    if settings.insecure_skip_verify and settings.ca_bundle:
        raise tls.error("caBundle", "has no effect with insecureSkipVerify: true")
    return settings


def _read_file_path(node: Node, field: str) -> str | None:
    path = node.str(field)
    if path is None:
        return None
    if not os.path.isfile(path):
        raise node.error(field, f"file {path!r} does not exist")
    if not os.access(path, os.R_OK):
        raise node.error(field, f"file {path!r} is not readable")
    return path


class _Failure(Exception):
    """Why one attempt to ask the IdP failed; ``retryable`` for connection errors and 5xx.

    ``why`` may reach the client; ``detail`` and ``body`` only the log, redacted and shortened.
    """

    def __init__(self, why: str, *, retryable: bool = False, detail: str = "", status: int | None = None,
                 content_type: str = "", body: bytes = b"") -> None:
        super().__init__(why)
        self.why = why
        self.retryable = retryable
        self.detail = detail
        self.status = status
        self.content_type = content_type
        self.body = body


class IntrospectionValidator:
    """Validates opaque tokens against an RFC 7662 endpoint, with a bounded, hashed-key cache.

    IdP requests, cache hits and misses are counted in the metrics (:class:`IdpMetrics`). A cached
    answer is only the token's state: exp/nbf are re-checked on every hit; the pipeline reuses
    its outcome for the same cached answer (see :mod:`gateway_app.auth.remembered`).

    The cache is shared by every validator that asks the same IdP as the same client (the
    :attr:`IntrospectionSettings.fingerprint`), across reloads and, with Redis, across
    processes. So each entry records when the IdP gave it (``at``, epoch seconds) and every
    validator applies its *own* ``cacheTimeout`` / ``negativeCacheTimeout`` and ``leeway``
    when it reads one: a route with a shorter ``cacheTimeout`` (or a reload that lowers it)
    asks the IdP again once its own timeout has passed, whoever stored the entry.
    """

    def __init__(
        self,
        settings: IntrospectionSettings,
        *,
        session: requests.Session | None = None,
        cache: CacheBackend | None = None,
        clock: t.Callable[[], float] = time.time,
        sleep: t.Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._key = KeyHasher(settings.fingerprint)       # hash_key(fingerprint, token)
        self._client_auth = build_client_auth(settings.client_auth, clock=clock)
        self._owns_session = session is None
        self._session = session if session is not None else idp_http.new_session()
        self._limit = idp_http.call_limit(settings.introspection_url, settings.max_concurrent_calls)
        self._cache: CacheBackend = cache if cache is not None else TTLCache(settings.max_cache_entries)
        self._flight: SingleFlight[dict[str, t.Any]] = SingleFlight()
        self._infos: dict[str, tuple[dict[str, t.Any], TokenInfo]] = {}   # cache key -> (entry, its TokenInfo)
        self._clock = clock
        self._sleep = sleep
        self._metrics = IdpMetrics(settings.introspection_url, "introspection")
        if settings.tls.insecure_skip_verify:
            log.warning("TLS verification disabled for %s", settings.introspection_url)

    def state(self) -> dict[str, t.Any]:
        """For the admin view (no URL path, no client secret): the IdP's ``host:port``, the
        client id, and the token cache's size when it is in-process."""
        size = len(self._cache) if hasattr(self._cache, "__len__") else None
        return {"idp": self._metrics.idp, "client_id": self.settings.client_id, "token_cache_entries": size,
                "token_cache": type(self._cache).__name__}

    def close(self) -> None:
        """Close the HTTP session if this validator created it."""
        if self._owns_session:
            self._session.close()

    # -- the one public operation ---------------------------------------------------------
    def validate(self, token: str, request_headers: t.Mapping[str, str] | None = None) -> TokenInfo:
        """The token's state as the IdP reports it, from the cache when fresh.

        ``request_headers`` are extra headers for the IdP rendered from the incoming request
        (Traefik Hub's templated ``clientConfig.headers``); answers are cached per token *and* them.

        :raises InvalidTokenError: malformed, inactive, expired or not yet valid token.
        :raises IdentityProviderError: the IdP is unreachable, failing, or answering garbage.
        """
        check_token_shape(token, self.settings.max_token_length)
        key = self._key(token) if not request_headers else self._key(_headers_key(request_headers) + token)
        entry = self._fresh(self._cache.get(key))
        if entry is not None:
            self._metrics.cache_hits.inc()
        else:
            self._metrics.cache_misses.inc()
            entry = self._flight.do(key, lambda: self._introspect_and_store(key, token, request_headers))
        return self._token_info(key, entry)

    # -- steps ----------------------------------------------------------------------------
    def _fresh(self, entry: dict[str, t.Any] | None) -> dict[str, t.Any] | None:
        """``entry`` if it is younger than *this* validator's cache timeout for its kind, else None.

        Entries come from a cache shared with validators of other settings (and, with Redis,
        other processes): each reader applies its own ``cacheTimeout`` / ``negativeCacheTimeout``.
        """
        if not isinstance(entry, dict) or not isinstance(entry.get("active"), bool):
            return None
        stored_at = entry.get("at")
        if not isinstance(stored_at, (int, float)) or isinstance(stored_at, bool):
            return None
        limit = self.settings.cache_timeout if entry["active"] else self.settings.negative_cache_timeout
        age = self._clock() - stored_at
        return entry if 0 <= age < limit or -1 < age < 0 else None   # a second of clock skew between processes

    def _introspect_and_store(self, key: str, token: str,
                              request_headers: t.Mapping[str, str] | None) -> dict[str, t.Any]:
        """Ask the IdP and cache the answer; the cache's flight for ``key`` ends either way."""
        cached = self._fresh(self._cache.peek(key))   # a flight that finished just before this one started
        if cached is not None:
            self._cache.release(key)
            return cached
        try:
            entry = self._introspect(token, request_headers)
            ttl = self._ttl(entry)
        except BaseException:
            self._cache.release(key)     # other workers stop waiting for an answer that won't come
            raise
        if ttl > 0:
            self._cache.set(key, entry, ttl)
        else:
            self._cache.release(key)
        return entry

    def _introspect(self, token: str, request_headers: t.Mapping[str, str] | None = None) -> dict[str, t.Any]:
        """Ask the IdP, retrying; return a cache entry ``{"active": bool, "claims": {...}, "at": epoch s}``.

        An active answer whose claims have the wrong types (:mod:`gateway_app.auth.claim_types`)
        is kept as an inactive entry with ``reason: token_claims_invalid``.
        """
        answer = self._fetch_answer(token, request_headers)
        active = answer.get("active")
        now = self._clock()
        if not isinstance(active, bool):
            self._metrics.error("bad_answer")
            self._fail(_Failure(f"'active' is {describe_type(active)}, not a boolean", status=200), token)
        if not active:
            return {"active": False, "claims": {}, "at": now}
        try:
            TokenInfo.from_claims(answer, "introspection")
        except InvalidTokenError as e:
            log.warning("introspection at %s: active answer refused: %s", self.settings.introspection_url, e)
            return {"active": False, "claims": {}, "at": now, "reason": e.reason}
        return {"active": True, "claims": answer, "at": now}

    def _ttl(self, entry: dict[str, t.Any]) -> float:
        if not entry["active"]:
            return self.settings.negative_cache_timeout
        ttl = self.settings.cache_timeout
        exp = entry["claims"].get("exp")
        if exp is not None:
            ttl = min(ttl, float(exp) - self._clock())
        return ttl

    def _token_info(self, key: str, entry: dict[str, t.Any]) -> TokenInfo:
        """The entry's TokenInfo, built once per cache entry; its times checked on every call."""
        if not entry["active"]:
            if entry.get("reason") == "token_claims_invalid":
                raise InvalidTokenError("the token's claims have the wrong types", reason="token_claims_invalid")
            raise InvalidTokenError("the access token is not active", reason="token_inactive")
        known = self._infos.get(key)
        if known is not None and known[0] is entry:
            info = known[1]
        else:
            info = _token_info_of(entry["claims"])
            if len(self._infos) >= self.settings.max_cache_entries:
                self._infos.clear()        # rebuilt on the next hits; the cache itself is untouched
            self._infos[key] = (entry, info)
        info.check_times(self._clock(), self.settings.leeway)
        return info

    # -- talking to the IdP ---------------------------------------------------------------
    def _fetch_answer(self, token: str, request_headers: t.Mapping[str, str] | None) -> dict[str, t.Any]:
        """The IdP's answer, within one slot of the endpoint's concurrency limit and ``timeout`` in total.

        :raises IdpOverloadedError: ``maxConcurrentCalls`` calls to this endpoint are in flight.
        :raises IdentityProviderError: every attempt failed, or the deadline passed.
        """
        try:
            with self._limit.slot(), idp_http.deadline(self.settings.timeout):
                return self._attempts(token, request_headers)
        except IdpOverloadedError:
            self._metrics.error("overloaded")
            raise

    def _attempts(self, token: str, request_headers: t.Mapping[str, str] | None) -> dict[str, t.Any]:
        attempts = 1 + self.settings.retries
        for attempt in range(attempts):
            try:
                return self._ask_once(token, request_headers)
            except _Failure as failure:
                backoff = min(self.settings.retry_backoff * 2 ** attempt, MAX_RETRY_BACKOFF)
                left = idp_http.remaining() or 0.0
                if not failure.retryable or attempt == attempts - 1 or left <= backoff:
                    self._fail(failure, token, attempts=attempt + 1)
                log.info("introspection attempt %d/%d at %s failed: %s; retrying",
                         attempt + 1, attempts, self.settings.introspection_url, failure.why)
                self._sleep(backoff)
        raise AssertionError("unreachable")

    def _ask_once(self, token: str, request_headers: t.Mapping[str, str] | None) -> dict[str, t.Any]:
        """One POST; the parsed JSON object, or a :class:`_Failure` saying why not."""
        data, headers = self._request_parts(token, request_headers)
        started = time.perf_counter()
        try:
            return self._post(data, headers)
        except _Failure as failure:
            self._metrics.error(_failure_reason(failure))
            raise
        finally:
            self._metrics.observe_call(time.perf_counter() - started)

    def _post(self, data: dict[str, str], headers: dict[str, str]) -> dict[str, t.Any]:
        try:
            with self._session.post(
                self.settings.introspection_url,
                data=data,
                headers=headers,
                timeout=idp_http.timeouts(self.settings.timeout),
                allow_redirects=False,
                verify=self.settings.tls.verify,
                cert=self.settings.tls.cert,
                stream=True,
            ) as response:
                try:
                    body = idp_http.read_body(response, MAX_ANSWER_BYTES)
                except idp_http.BodyTooLargeError as e:
                    raise _Failure(str(e), status=response.status_code,
                                   content_type=response.headers.get("Content-Type", "")) from None
                return _parse_answer(response, body)
        except requests.exceptions.SSLError as e:
            raise _Failure("TLS handshake failed", detail=str(e)) from e
        except requests.RequestException as e:
            if idp_http.is_timeout(e):
                raise _Failure("timed out", retryable=self.settings.retry_on_timeout, detail=str(e)) from e
            if isinstance(e, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
                raise _Failure("connection failed", retryable=True, detail=str(e)) from e
            raise _Failure(f"request failed ({type(e).__name__})", detail=str(e)) from e

    def _request_parts(self, token: str, request_headers: t.Mapping[str, str] | None = None,
                       ) -> tuple[dict[str, str], dict[str, str]]:
        data = {"token": token}
        if self.settings.token_type_hint:
            data["token_type_hint"] = self.settings.token_type_hint
        headers = dict(self.settings.headers)
        headers.update(request_headers or {})
        headers["Accept"] = "application/json"
        self._client_auth.apply(data, headers)
        return data, headers

    def _fail(self, failure: _Failure, token: str, attempts: int = 1) -> t.NoReturn:
        """Log why (redacted) and raise the 503 meaning; IdP failures are never cached."""
        body = _redact(failure.body.decode("utf-8", "replace"), token, self.settings)
        detail = _redact(failure.detail, token, self.settings)
        log.warning(
            "introspection at %s failed after %d attempt(s): %s (status=%s, content-type=%r, body=%r, detail=%r)",
            self.settings.introspection_url, attempts, failure.why, failure.status,
            failure.content_type, body[:EXCERPT_CHARS], detail[:EXCERPT_CHARS * 2],
        )
        raise IdentityProviderError(f"token introspection failed: {failure.why}") from None


def _headers_key(headers: t.Mapping[str, str]) -> str:
    """A prefix that keeps cache entries of one token apart per rendered request headers."""
    return hash_key(*(f"{name.lower()}:{value}" for name, value in sorted(headers.items()))) + ":"


def _failure_reason(failure: _Failure) -> str:
    """A fixed reason code for metrics: timeout, connection, tls, status_4xx, status_5xx, bad_answer."""
    if failure.status is None:
        if failure.why == "timed out":
            return "timeout"
        if failure.why == "connection failed":
            return "connection"
        if failure.why.startswith("TLS"):
            return "tls"
        return "request_failed"
    if failure.status >= 500:
        return "status_5xx"
    if failure.status != 200:
        return "status_4xx"
    return "bad_answer"


def _parse_answer(response: requests.Response, body: bytes) -> dict[str, t.Any]:
    status = response.status_code
    content_type = response.headers.get("Content-Type", "")

    def failure(why: str, retryable: bool = False) -> _Failure:
        return _Failure(why, retryable=retryable, status=status, content_type=content_type, body=body)

    if status >= 500:
        raise failure(f"status {status}", retryable=True)
    if status != 200:
        raise failure(f"status {status}")
    if content_type and not _is_json_media_type(content_type):
        raise failure("answer is not application/json")
    try:
        answer = loads(body)
    except ValueError as e:
        raise failure(f"answer is not JSON the gateway accepts: {e}") from None
    if not isinstance(answer, dict):
        raise failure(f"answer is {describe_type(answer)}, not an object")
    return answer


def _is_json_media_type(content_type: str) -> bool:
    """``application/json`` or ``application/*+json``; a missing type is judged by parsing the body."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def _redact(text: str, token: str, settings: IntrospectionSettings) -> str:
    """``text`` without the token or any configured secret, raw or form-encoded. Redact, then shorten."""
    auth = settings.client_auth
    hidden = [(token, "[token]")]
    hidden += [(s.reveal(), "[secret]") for s in (auth.client_secret, auth.token, auth.header_value) if s]
    for value, mask in hidden:
        if value:
            text = text.replace(value, mask).replace(urllib.parse.quote_plus(value, safe=""), mask)
    return text


def _token_info_of(claims: dict[str, t.Any]) -> TokenInfo:
    """A TokenInfo over a private copy of the cached claims (deep only where values nest).

    :raises InvalidTokenError: ``token_claims_invalid`` (an entry another process wrote).
    """
    own = {k: copy.deepcopy(v) if isinstance(v, (dict, list)) else v for k, v in claims.items()}
    return TokenInfo.from_claims(own, "introspection")
