"""What a policy result means: allow or deny, and how to answer. Fails closed.

Gloo's query semantics: a result allows only when it is ``true`` or a list whose first element
is ``true``. OPA-Envoy's richer result is an object::

    {"allowed": bool, "headers": {str: str}, "http_status": 200..599, "body": any,
     "dynamic_metadata": {str: any}}

where ``allowed`` is required and must be a boolean, ``headers`` (optional) must map header
names (RFC 9110 tokens) to strings (made valid header text by
:func:`gateway_app.header_values.field_text`) and set none of the fields the gateway owns
(:func:`gateway_app.header_values.is_gateway_owned`: framing and connection fields, ``Expect``,
``Host``, ``X-Request-Id``, the forwarding fields, URL and method overrides), ``http_status`` (optional, 403 by default on deny)
must be a final status (200 to 599; a 1xx is an interim answer; on deny 300 to 599 but not
304: a deny is a redirect or an error), and ``dynamic_metadata`` (optional, as opa-envoy-plugin's) must be an
object: on allow it joins the request's dynamic metadata (``usagePlan`` there picks the usage plan).
Other keys are ignored. Anything else denies:

=================================  =========================
result                             reason
=================================  =========================
``true``, ``[true, ...]``          ``policy_allowed``
``false``, ``[]``, ``[false]``     ``policy_denied``
undefined (``None``)               ``policy_undefined``
string, number, set, bad object    ``policy_result_invalid``
evaluation error                   ``policy_error``
=================================  =========================
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..describe import describe_type
from ..errors import AccessDeniedError
from ..errors import PolicyError
from ..header_values import field_text
from ..header_values import is_gateway_owned
from ..header_values import is_token

ALLOWED = "policy_allowed"
DENIED = "policy_denied"
UNDEFINED = "policy_undefined"
INVALID = "policy_result_invalid"
ERROR = "policy_error"
DEFAULT_DENY_STATUS = 403


@dataclasses.dataclass(frozen=True)
class Decision:
    """An interpreted policy result.

    On allow, ``headers`` are headers to add to the upstream request. On deny, ``http_status``,
    ``headers`` and ``body`` shape the answer to the client. ``detail`` says, for logs, why a
    result was invalid.
    """

    allowed: bool
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    http_status: int | None = None
    body: t.Any = None
    reason: str = DENIED
    detail: str = ""
    dynamic_metadata: dict[str, t.Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_result(cls, value: t.Any) -> Decision:
        """Interpret the value :meth:`PolicyEngine.evaluate` returned."""
        if isinstance(value, bool):
            return _allow() if value else _deny(DENIED)
        if value is None:
            return _deny(UNDEFINED, "the policy result is undefined")
        if isinstance(value, (list, tuple)):
            return _from_list(value)
        if isinstance(value, dict):
            return _from_object(value)
        return _invalid(f"expected true, false, a list or an object, got {describe_type(value)}")

    @classmethod
    def from_error(cls, error: BaseException) -> Decision:
        """The decision when evaluation failed: deny."""
        return _deny(ERROR, str(error))

    def to_error(self) -> AccessDeniedError | None:
        """The error to raise for a deny (``None`` when allowed).

        A plain deny is an :class:`AccessDeniedError` carrying the policy's status, headers
        and body; undefined, invalid and failed results are a :class:`PolicyError`.
        """
        if self.allowed:
            return None
        if self.reason == DENIED:
            return AccessDeniedError("access denied by policy", reason=DENIED, status_code=self.http_status,
                                     headers=dict(self.headers), body=self.body)
        return PolicyError(f"access denied by policy: {self.detail or self.reason}", reason=self.reason)

    def to_dict(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)


def _allow(headers: dict[str, str] | None = None, dynamic_metadata: dict[str, t.Any] | None = None) -> Decision:
    return Decision(allowed=True, headers=headers or {}, reason=ALLOWED, dynamic_metadata=dynamic_metadata or {})


def _deny(reason: str, detail: str = "", *, status: int | None = None, headers: dict[str, str] | None = None,
          body: t.Any = None) -> Decision:
    return Decision(allowed=False, headers=headers or {}, http_status=status or DEFAULT_DENY_STATUS, body=body,
                    reason=reason, detail=detail)


def _invalid(detail: str) -> Decision:
    return _deny(INVALID, f"invalid policy result: {detail}")


def _from_list(values: t.Sequence[t.Any]) -> Decision:
    if not values:
        return _deny(DENIED)
    first = values[0]
    if not isinstance(first, bool):
        return _invalid(f"the first element of a list result must be a boolean, got {describe_type(first)}")
    return _allow() if first else _deny(DENIED)


def _from_object(result: dict[str, t.Any]) -> Decision:
    allowed = result.get("allowed")
    if not isinstance(allowed, bool):
        return _invalid(f"'allowed' must be a boolean, got {describe_type(allowed)}")
    headers = result.get("headers", {})
    if not _is_str_map(headers):
        return _invalid("'headers' must map header names to strings")
    owned = sorted(name for name in headers if is_gateway_owned(name))
    if owned:
        return _invalid(f"'headers' may not set {', '.join(owned)[:80]} (framing, Host, request id and "
                        f"forwarding fields are the gateway's)")
    status = result.get("http_status")
    if status is not None and not _is_status(status, allowed):
        return _invalid(f"'http_status' must be an integer from {'200' if allowed else '300'} to 599 "
                        f"(not 304 on deny), got {status!r:.40}")
    metadata = result.get("dynamic_metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        return _invalid("'dynamic_metadata' must be an object")
    headers = {name: field_text(value) for name, value in headers.items()}
    if allowed:
        return _allow(headers, dict(metadata))
    return _deny(DENIED, status=status, headers=headers, body=result.get("body"))


def _is_str_map(value: t.Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and is_token(k) and isinstance(v, str)
                                           for k, v in value.items())


def _is_status(value: t.Any, allowed: bool) -> bool:
    """A final status (RFC 9110 §15: a 1xx is an interim answer); on deny a redirect or an error,
    never a success nor ``304 Not Modified`` (the answer to a conditional request, no body)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return 200 <= value <= 599 if allowed else 300 <= value <= 599 and value != 304
