"""Stale-if-error: keep recently active tokens working while the IdP is unreachable.

Off by default. ``accessTokenValidation.staleIfError: 60s`` wraps the introspection validator
in a :class:`StaleIfErrorValidator`: each successful validation is remembered (hashed key)
for the window; when the IdP then fails (:class:`IdentityProviderError`), an answer confirmed
less than the window ago is served again, as long as the token's own ``exp`` has not passed.
An inactive answer forgets the token at once. Memory is bounded (:data:`MAX_ENTRIES`), the
window is bounded (:data:`MAX_WINDOW`) and every stale answer is counted (the
``gateway_stale_if_error_served_total`` metric) and logged, without the token.
"""

from __future__ import annotations

import logging
import time
import typing as t

from ..cache import TTLCache
from ..cache import hash_key
from ..config.fields import Node
from ..errors import IdentityProviderError
from ..errors import InvalidTokenError
from ..metrics import STALE_SERVED
from .state import TokenInfo
from .steps import TokenValidator

log = logging.getLogger("gateway_app.auth.stale")

MAX_WINDOW = 300.0
MAX_ENTRIES = 10_000


class StaleIfErrorValidator:
    """``validate(token)`` of ``inner``, falling back to a recent active answer on IdP errors.

    ``window``: seconds an active answer may be served again (at most :data:`MAX_WINDOW`);
    ``max_entries``: answers kept; ``clock``: epoch seconds (the token's ``exp`` is read against it).

    :raises ValueError: ``window`` outside ``(0, MAX_WINDOW]``.
    """

    def __init__(self, inner: TokenValidator, window: float, *, max_entries: int = MAX_ENTRIES,
                 clock: t.Callable[[], float] = time.time) -> None:
        if not 0 < window <= MAX_WINDOW:
            raise ValueError(f"the stale-if-error window must be in (0, {MAX_WINDOW:g}] seconds")
        self.inner = inner
        self.window = window
        self._clock = clock
        self._answers: TTLCache[TokenInfo] = TTLCache(max_entries, clock=clock)

    def validate(self, token: str) -> TokenInfo:
        """:raises InvalidTokenError: as ``inner``.
        :raises IdentityProviderError: the IdP failed and no usable recent answer exists.
        """
        key = hash_key("stale-if-error/v1", token)
        try:
            info = self.inner.validate(token)
        except InvalidTokenError:
            self._answers.delete(key)
            raise
        except IdentityProviderError:
            stale = self._usable(self._answers.get(key))
            if stale is None:
                raise
            STALE_SERVED.inc()
            log.warning("IdP unavailable: serving an active answer confirmed less than %gs ago (stale-if-error)",
                        self.window)
            return stale
        self._answers.set(key, info, self.window)
        return info

    def _usable(self, info: TokenInfo | None) -> TokenInfo | None:
        if info is None or info.expired(self._clock()):
            return None
        return info

    def state(self) -> dict[str, t.Any]:
        """For the admin view: the wrapped validator's state, the window and answers kept."""
        inner = getattr(self.inner, "state", None)
        return {**(inner() if callable(inner) else {}), "stale_if_error_seconds": self.window,
                "stale_answers_entries": len(self._answers)}

    def close(self) -> None:
        """Nothing to release: ``inner`` is closed by whoever owns it."""


def parse_stale_if_error(node: Node, validator_kind: str) -> float | None:
    """``staleIfError`` of an ``accessTokenValidation`` block: seconds, or None when off.

    :raises ConfigError: not a duration, above :data:`MAX_WINDOW`, or on a JWT validator
        (JWTs are checked locally; their JWKS already keeps its last good keys).
    """
    window = node.duration("staleIfError", minimum=0.0)
    if not window:
        return None
    if validator_kind == "jwt":
        raise node.error("staleIfError", "applies to introspection only")
    if window > MAX_WINDOW:
        raise node.error("staleIfError", f"must be at most {MAX_WINDOW:g}s")
    return window
