"""The gateway's one exception tree, and the one place that turns it into HTTP answers.

Modules raise *meanings* (``InvalidTokenError``, ``IdentityProviderError``); only
:func:`register_error_handlers` chooses statuses, bodies and challenge headers.
Messages never contain a token or a secret.

What clients read is decided here, once: an error's message reaches the body and
``WWW-Authenticate`` only when its class says the message describes the client's own request
(``message_is_public``). Every other error (the IdP, the JWKS, the upstream, a policy, a bug)
answers its fixed ``public_message``; its message, which may name internal URLs, hosts,
expected issuers or policy source, goes to the log only. A new error class is private unless
it says otherwise.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import typing as t

from flask import Flask
from flask import Response
from flask import g
from werkzeug.exceptions import HTTPException

log = logging.getLogger("gateway_app.errors")


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    status_code = 500
    reason = "internal_error"
    public_message = "internal error"
    message_is_public = False        # True: the message describes the client's request and may be shown

    def __init__(self, message: str | None = None, *, reason: str | None = None,
                 status_code: int | None = None) -> None:
        super().__init__(message or self.public_message)
        if reason:
            self.reason = reason
        if status_code:
            self.status_code = status_code

    @property
    def message(self) -> str:
        """What a client may read: the message when it is public, else the class's ``public_message``."""
        return str(self) if self.message_is_public else self.public_message

    def with_status(self, status_code: int, **attributes: t.Any) -> t.Self:
        """A copy of this error answered with ``status_code`` (and ``attributes`` replaced, e.g.
        ``realm``): how the one place that chooses a status (an AuthConfig's
        ``authenticationFailureStatus``, ``statusOnError``) answers an error it caught,
        leaving the caught error as it was raised."""
        error = copy.copy(self)
        error.status_code = status_code
        for name, value in attributes.items():
            setattr(error, name, value)
        return error

    def challenge(self) -> str | None:
        """The ``WWW-Authenticate`` value to send, if any."""
        return None

    def extra_headers(self) -> dict[str, str]:
        """Headers the answer carries besides the challenge (a policy's, ``Retry-After``...)."""
        return {}


class ConfigError(GatewayError):
    """A resource in conf/ or rego/ is broken. Raised at start-up and reload only.

    ``where`` names the file, resource and field, e.g.
    ``conf/vs.yaml: VirtualService gloo-system/httpbin: spec.virtualHost.domains``.
    """

    reason = "config_error"
    message_is_public = True         # only ever shown to the operator (CLI, logs)

    def __init__(self, message: str, *, where: str = "", line: int | None = None) -> None:
        self.where = where
        self.line = line
        self.detail = message
        prefix = where
        if where and line:
            prefix = f"{where} (line {line})"
        super().__init__(f"{prefix}: {message}" if prefix else message)


class BadRequestError(GatewayError):
    """The request cannot be read one way only (RFC 9110 §15.5.1): 400, the message says why."""

    status_code = 400
    reason = "bad_request"
    public_message = "malformed request"
    message_is_public = True


class BodyInvalidError(BadRequestError):
    """The request body could not be read whole: the client ended it early (before its
    ``Content-Length``, or before the last chunk), or the server could not read its framing
    (RFC 9112 §8: an incomplete message): 400 ``body_invalid``."""

    reason = "body_invalid"


class PayloadTooLargeError(GatewayError):
    """The body is over the route's limit (RFC 9110 §15.5.14, Gloo ``maxRequestBodyBytes``): 413."""

    status_code = 413
    reason = "payload_too_large"
    public_message = "request body too large for this route"
    message_is_public = True


class RequestTimeoutError(GatewayError):
    """The request body arrives slower than the minimum data rate (Kestrel's ``MinRequestBodyDataRate``);
    RFC 9110 §15.5.9. The connection is closed after the answer.
    """

    status_code = 408
    reason = "body_too_slow"
    public_message = "the request body arrived too slowly"


class TransferCodingError(GatewayError):
    """A transfer coding other than ``chunked``: RFC 9112 §6.1 (a server that does not understand
    a transfer coding answers 501)."""

    status_code = 501
    reason = "transfer_coding_unsupported"
    public_message = "only the chunked transfer coding is supported"


class RouteNotFoundError(GatewayError):
    """No virtual host or route matches: 404, as Envoy answers an unmatched request."""

    status_code = 404
    reason = "route_not_found"
    public_message = "no route matches this request"
    message_is_public = True


class AuthenticationError(GatewayError):
    """The request did not prove who it is. 403 by default (Gloo), 401 with RFC 6750 style."""

    status_code = 403
    reason = "unauthenticated"
    public_message = "authentication failed"
    message_is_public = True         # about the client's token: expired, wrong kid, malformed...
    error_code: str | None = None

    def __init__(self, message: str | None = None, *, reason: str | None = None,
                 status_code: int | None = None, realm: str | None = None) -> None:
        super().__init__(message, reason=reason, status_code=status_code)
        self.realm = realm

    def challenge(self) -> str:
        """``Bearer realm="...", error="...", error_description="..."`` (RFC 6750 §3)."""
        parts = []
        if self.realm:
            parts.append(f'realm="{_challenge_text(self.realm)}"')
        if self.error_code:
            parts.append(f'error="{self.error_code}"')
            parts.append(f'error_description="{_challenge_text(self.message)}"')
        return "Bearer" + (" " + ", ".join(parts) if parts else "")


class MissingTokenError(AuthenticationError):
    """No token where the token source looks (RFC 6750 §3.1: no ``error`` code in the challenge)."""

    reason = "token_missing"
    public_message = "an access token is required"


class InvalidTokenError(AuthenticationError):
    """The token is malformed, inactive, expired or not verifiable (RFC 6750 §3.1 ``invalid_token``)."""

    reason = "token_invalid"
    public_message = "the access token is invalid"
    error_code = "invalid_token"


class AmbiguousTokenError(InvalidTokenError):
    """Two different tokens in one request (:mod:`gateway_app.auth.tokens`): refused, never guessed."""

    reason = "token_ambiguous"
    public_message = "the request carries more than one different access token"


class AccessDeniedError(GatewayError):
    """Who the request is was proved, and it may not do this: 403 by default, or the status,
    ``headers`` and ``body`` a policy decided (Gloo ``opaAuth``, OPA-Envoy's object result)."""

    status_code = 403
    reason = "access_denied"
    public_message = "access denied"
    message_is_public = True         # e.g. the scopes the token lacks; subclasses below may hide theirs

    def __init__(self, message: str | None = None, *, reason: str | None = None,
                 status_code: int | None = None, headers: dict[str, str] | None = None,
                 body: t.Any = None) -> None:
        super().__init__(message, reason=reason, status_code=status_code)
        self.headers = headers or {}
        self.body = body

    def extra_headers(self) -> dict[str, str]:
        """The policy's headers."""
        return dict(self.headers)


class InsufficientScopeError(AccessDeniedError):
    """The token lacks a required scope (RFC 6750 §3.1 ``insufficient_scope``): 403."""

    reason = "scope_missing"
    public_message = "the access token lacks a required scope"

    def challenge(self) -> str:
        """``Bearer error="insufficient_scope", error_description="..."`` (RFC 6750 §3)."""
        return f'Bearer error="insufficient_scope", error_description="{_challenge_text(self.message)}"'


class PolicyError(AccessDeniedError):
    """Policy evaluation failed or gave a malformed result: fail closed."""

    reason = "policy_error"
    public_message = "access denied by policy"
    message_is_public = False        # may quote policy source or engine messages


class RateLimitedError(GatewayError):
    """A usage plan's rate limit or quota is exhausted: 429 (RFC 6585 section 4) with ``Retry-After``
    and the rate-limit fields of the answer (:mod:`gateway_app.usage_plans`)."""

    status_code = 429
    reason = "rate_limited"
    public_message = "the usage plan's rate limit is exhausted; retry later"

    def __init__(self, message: str | None = None, *, reason: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, reason=reason)
        self.headers = headers or {}

    def extra_headers(self) -> dict[str, str]:
        """``Retry-After`` and the ``RateLimit`` fields."""
        return dict(self.headers)


class RateLimitUnavailableError(GatewayError):
    """The shared rate-limit store (Redis) failed and the failure mode is ``closed``."""

    status_code = 503
    reason = "rate_limit_unavailable"
    public_message = "rate limits cannot be checked right now"


class IdentityProviderError(GatewayError):
    """The IdP or JWKS endpoint is down, slow or answering garbage.

    The message names the endpoint and what went wrong, for the log; clients read only
    ``public_message`` (see the module docstring).
    """

    status_code = 503
    reason = "idp_unavailable"
    public_message = "the identity provider is unavailable"


class IdpOverloadedError(IdentityProviderError):
    """Too many calls to one IdP endpoint are in flight or waiting
    (:class:`gateway_app.auth.idp_http.CallLimit`): 503 with ``Retry-After: 1`` (RFC 9110
    §10.2.3, the smallest delay it can say; slots free up within one IdP call). Envoy's
    overflow 503 sends none, but clients that back off read it."""

    reason = "idp_overloaded"
    public_message = "the identity provider is busy"
    retry_after = 1                  # seconds

    def extra_headers(self) -> dict[str, str]:
        """``Retry-After``."""
        return {"Retry-After": str(self.retry_after)}


class UpstreamError(GatewayError):
    """The upstream could not be reached or broke the exchange (RFC 9110 §15.6.3): 502."""

    status_code = 502
    reason = "upstream_unavailable"
    public_message = "the upstream service is unavailable"


class UpstreamBodyAborted(ConnectionResetError):
    """The upstream broke off its body after the answer's head went to the client: the server
    must drop the client connection so the client sees the truncation (RFC 9112 §6.3, as
    Envoy and nginx reset the downstream). Not an HTTP answer (the status is out), so not a
    :class:`GatewayError`: a ``ConnectionResetError`` (``ECONNRESET``), which WSGI servers
    (gunicorn among them) end the connection on without a traceback; the warning line is the
    proxy's."""


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not accept the connection or answer in time (RFC 9110 §15.6.5): 504."""

    status_code = 504
    reason = "upstream_timeout"
    public_message = "the upstream service did not answer in time"


_CHALLENGE_TEXT_MAX = 200
_NOT_CHALLENGE_TEXT = re.compile(r'[^\x20-\x21\x23-\x5b\x5d-\x7e]')


def _challenge_text(text: str) -> str:
    """``text`` as a ``WWW-Authenticate`` parameter value can hold it (RFC 6750 §3).

    RFC 6750 limits ``error_description`` to ``%x20-21 / %x23-5B / %x5D-7E``: no quote, no
    backslash, nothing outside printable ASCII. A quote becomes ``'``; any other character
    outside the set becomes ``?``, so no input (a claim, an issuer, a header) reaches the
    challenge as anything else; at most 200 characters.
    """
    text = text.replace('"', "'")[:_CHALLENGE_TEXT_MAX]
    return _NOT_CHALLENGE_TEXT.sub("?", text)


def error_body(error: GatewayError, request_id: str | None) -> dict[str, t.Any]:
    """``{"error": reason, "message": what the client may read, "request_id": id}``."""
    return {"error": error.reason, "message": error.message, "request_id": request_id}


def error_json(error: GatewayError, request_id: str | None = None) -> str:
    """The JSON error body (:func:`error_body`) as sent; also for answers from outside the app (the worker's)."""
    return _json(error_body(error, request_id))


def render_error(error: GatewayError, request_id: str | None = None) -> Response:
    """One JSON body plus challenge headers for any gateway error (no app context needed)."""
    body = getattr(error, "body", None)
    if body is None:
        response = Response(error_json(error, request_id), mimetype="application/json")
    elif isinstance(body, (dict, list)):
        response = Response(_json(body), mimetype="application/json")
    else:
        response = Response(str(body), mimetype="text/plain")
    response.status_code = error.status_code
    challenge = error.challenge()
    if challenge and error.status_code in (401, 403):
        response.headers["WWW-Authenticate"] = challenge
    for name, value in error.extra_headers().items():
        response.headers[name] = value
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response


def _json(value: t.Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str) + "\n"


def register_error_handlers(app: Flask) -> None:
    """Map the tree to responses; anything else is a bug: 500, logged once with a traceback."""

    @app.errorhandler(GatewayError)
    def _handle_gateway_error(error: GatewayError) -> Response:
        return render_error(error, getattr(g, "request_id", None))

    @app.errorhandler(HTTPException)
    def _handle_http_exception(error: HTTPException) -> Response:
        wrapped = GatewayError(error.description or error.name, reason=_slug(error.name))
        wrapped.status_code = error.code or 500
        wrapped.message_is_public = True           # werkzeug's generic descriptions
        return render_error(wrapped, getattr(g, "request_id", None))

    @app.errorhandler(Exception)
    def _handle_unexpected(error: Exception) -> Response:
        log.exception("unhandled error: %s", type(error).__name__)
        return render_error(GatewayError(), getattr(g, "request_id", None))


def _slug(name: str) -> str:
    return name.lower().replace(" ", "_")
