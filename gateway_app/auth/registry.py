"""The validators of the running config, shared by their settings and kept across reloads.

Building a config asks this registry for each token validator by a key made of its settings
(:func:`gateway_app.config.auth_configs.token_validator`): two routes with the same JWKS or
introspection settings share one validator, hence one JWKS fetch and one token cache, and a
reload that leaves an IdP's settings alone keeps its validator and its cache warm. Token
caches are keyed by the IdP identity alone (its fingerprint), so they outlive even a
validator whose other settings change. The gateway owns one registry for its lifetime.
"""

from __future__ import annotations

import threading
import typing as t

from ..cache import TTLCache


class ValidatorRegistry:
    """Validators (and their caches, JWKS) shared by settings, kept across reloads.

    ``token_cache_url`` is ``GATEWAY_TOKEN_CACHE_URL`` (a ``redis://`` URL) or ``None`` for
    in-process caches; ``clock`` returns epoch seconds and is handed to every validator and
    cache built here (tests inject one; ``None`` keeps the real clocks). Thread-safe.
    """

    def __init__(self, token_cache_url: str | None = None, *, clock: t.Callable[[], float] | None = None) -> None:
        self._validators: dict[t.Any, t.Any] = {}
        self._token_caches: dict[tuple[str, int], t.Any] = {}
        self._shared_jwt_cache: t.Any = None
        self._lock = threading.Lock()
        self.token_cache_url = token_cache_url
        self.clock = clock              # epoch seconds for validators and their caches; None: the real clocks

    def token_cache(self, fingerprint: str, max_entries: int) -> t.Any:
        """The token cache of one IdP identity: it outlives validators whose other settings change.

        In-process by default; shared through Redis when ``GATEWAY_TOKEN_CACHE_URL`` is set
        (keys already carry the fingerprint, so one Redis serves every IdP).
        """
        with self._lock:
            cache = self._token_caches.get((fingerprint, max_entries))
            if cache is None:
                cache = self._token_caches[(fingerprint, max_entries)] = self._new_cache(max_entries)
            return cache

    def shared_jwt_cache(self) -> t.Any:
        """Where verified JWT claims are shared between workers and replicas: Redis when
        ``GATEWAY_TOKEN_CACHE_URL`` is set (one for every JWT validator), else None."""
        if not self.token_cache_url:
            return None
        with self._lock:
            if self._shared_jwt_cache is None:
                # Imported on use: redis is an optional extra (setup.cfg ``[redis]``).
                from ..cache_redis import JWT_KEY_PREFIX
                from ..cache_redis import RedisTokenCache
                self._shared_jwt_cache = RedisTokenCache(self.token_cache_url, prefix=JWT_KEY_PREFIX,
                                                         single_flight=False)
            return self._shared_jwt_cache

    def _new_cache(self, max_entries: int) -> t.Any:
        if self.token_cache_url:
            from ..cache_redis import RedisTokenCache      # optional extra, as above
            return RedisTokenCache(self.token_cache_url, fallback_max_entries=max_entries)
        return TTLCache(max_entries, clock=self.clock) if self.clock else TTLCache(max_entries)

    def clock_options(self, wall: str) -> dict[str, t.Any]:
        """``{wall: clock}`` for a validator's constructor when a clock was injected, else ``{}``."""
        return {wall: self.clock} if self.clock else {}

    def get(self, key: t.Any, factory: t.Callable[[], t.Any]) -> t.Any:
        """The validator registered under ``key`` (a hashable of its settings), made by
        ``factory()`` on first use."""
        with self._lock:
            validator = self._validators.get(key)
            if validator is None:
                validator = self._validators[key] = factory()
            return validator

    def all(self) -> list[t.Any]:
        """Every registered validator (for warm-up and status), in registration order."""
        with self._lock:
            return list(self._validators.values())

    def retain(self, keep: t.Collection[t.Any]) -> None:
        """Forget validators whose key is not in ``keep`` (the keys the new config used), closing
        those that have a ``close()`` (JWKS refreshers, HTTP sessions)."""
        with self._lock:
            dropped = [self._validators.pop(k) for k in list(self._validators) if k not in keep]
        for validator in dropped:
            close = getattr(validator, "close", None)
            if close is not None:
                close()
