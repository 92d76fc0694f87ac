"""Header fields the gateway writes or relays: valid HTTP by construction (RFC 9110 §5.5).

The connection-specific fields (:data:`HOP_BY_HOP_HEADERS`) and those a policy may not set
(:func:`is_gateway_owned`) are named here; and these rules about values, each once:

* :func:`header_text` turns a claim, a metadata value or a policy header value into header
  text (``claimsToHeaders``, ``forwardHeaders``, ``dynamic_metadata(...)`` templates, OPA
  ``headers``). A string is sent as it is when it is *plain*: one or more printable ASCII
  characters (``%x21-7E`` and SP), no SP at either end, no ``,`` or ``"``, and not starting
  with ``UTF-8''``. Any other string (non-ASCII such as ``山田``, CR, LF, NUL or another
  control, a comma, a quote, surrounding spaces) is sent as an RFC 8187 ``ext-value`` with
  no language: ``UTF-8''`` then its UTF-8 bytes, ``attr-char`` kept and every other byte
  ``%XX`` (``山田`` -> ``UTF-8''%E5%B1%B1%E7%94%B0``). So CR, LF and NUL never reach the
  wire raw, nothing needs Latin-1, nothing is refused, and a recipient decodes every value
  the same way (strip ``UTF-8''``, percent-decode as UTF-8). A list of scalars is its
  elements' texts joined with ``,``: since an element's text never holds a comma, a quote
  or surrounding spaces, no element can pose as two (RFC 9110 §5.6.1 lists). Numbers and
  booleans are JSON; objects and other lists are compact JSON (``\\uXXXX`` escapes keep it ASCII).
* :func:`field_text` is the same encoding for header text a policy writes (OPA ``headers``):
  such text may hold commas and quotes (``Bearer realm="api", error="..."``), so it is sent as
  it is when it is a valid ASCII field value (printable ASCII, SP and HTAB inside, none at
  either end, not starting with ``UTF-8''``) and as an ``ext-value`` otherwise.
* :func:`relayed_text` makes a value received from an upstream sendable: each obs-fold
  (RFC 9112 §5.2) and each control character other than HTAB (RFC 9110 §5.5: CR, LF, NUL
  "replace with SP"; other CTLs, which the server underneath refuses to write) becomes SP.
"""

from __future__ import annotations

import json
import re
import typing as t
import urllib.parse

EXT_VALUE_PREFIX = "UTF-8''"
# RFC 8187 §3.2.1 attr-char, besides ALPHA and DIGIT.
_ATTR_CHAR_SAFE = "!#$&+-.^_`|~"
_PLAIN = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_UNPLAIN_CHARS = re.compile(r'[,"]')
_FIELD_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?")
_OBS_FOLD = re.compile(r"\r?\n[ \t]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SCALARS = (str, int, float, bool)

# Connection-specific fields (RFC 9110 §7.6.1): werkzeug.http.is_hop_by_hop_header's set
# (RFC 2616 §13.5.1) plus Proxy-Connection. Never copied from one hop to the next.
HOP_BY_HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
# What a policy decision (OPA ``headers``) may not set, on allow or on deny: framing and
# connection fields (a deny answering ``Upgrade`` or ``Content-Length`` of its own would let a
# front proxy read the connection another way) and ``Expect``; the routed ``Host``, the request
# id and the forwarding fields the gateway writes (``X-Forwarded-*``, ``Forwarded``, ``Via``,
# ``X-Real-IP``); and the URL and method overrides the gateway drops from every client
# (``X-Original-URL``, ``X-HTTP-Method-Override``…: the upstream serves what was routed).
# Headers that make an upstream serve another URL or method than the one routed and authorized
# (IIS, Symfony, Express method-override, Spring, Rails, nginx auth_request; Next.js skips its
# middleware, its auth, for ``X-Middleware-Subrequest``: CVE-2025-29927).
OVERRIDE_FIELDS = frozenset({
    "x-original-url", "x-rewrite-url", "x-original-uri", "x-original-method", "x-http-method-override",
    "x-http-method", "x-method-override", "x-method", "x-middleware-subrequest",
})
_DECISION_FORBIDDEN = HOP_BY_HOP_HEADERS | OVERRIDE_FIELDS | {
    "content-length", "expect", "host", "x-request-id", "forwarded", "via", "x-real-ip",
}


def is_gateway_owned(name: str) -> bool:
    """Whether a policy decision may not set the header ``name`` (any case); see above."""
    lowered = name.lower()
    return lowered in _DECISION_FORBIDDEN or lowered.startswith("x-forwarded-")


def header_text(value: t.Any) -> str | None:
    """The header text for a claim, metadata or policy value; None (no header) for None, "" and [].

    :param value: a JSON value (str, int, float, bool, list, dict, None).
    :returns: printable ASCII, never empty (see the module docstring for the encoding).
    """
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return _string_text(value)
    if isinstance(value, list) and all(isinstance(item, _SCALARS) for item in value):
        return ",".join(_string_text(item) if isinstance(item, str) else _json(item) for item in value)
    return _json(value)


def field_text(text: str) -> str:
    """Header text a policy wrote: as it is when it is a valid ASCII field value, else an ``ext-value``.

    :returns: "" for "" (no header), otherwise printable ASCII.
    """
    if not text or (_FIELD_VALUE.fullmatch(text) and not _has_prefix(text)):
        return text
    return _ext_value(text)


def _string_text(text: str) -> str:
    if _PLAIN.fullmatch(text) and not _UNPLAIN_CHARS.search(text) and not _has_prefix(text):
        return text
    return _ext_value(text)


def _ext_value(text: str) -> str:
    """RFC 8187 §3.2.1 ``ext-value`` with the UTF-8 charset and no language."""
    return EXT_VALUE_PREFIX + urllib.parse.quote(text, safe=_ATTR_CHAR_SAFE, encoding="utf-8")


def _has_prefix(text: str) -> bool:
    return text[:len(EXT_VALUE_PREFIX)].upper() == EXT_VALUE_PREFIX


def _json(value: t.Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=True)


def decode_header_text(text: str) -> str:
    """The string :func:`header_text` encoded (what an upstream does to read it back)."""
    if _has_prefix(text):
        return urllib.parse.unquote(text[len(EXT_VALUE_PREFIX):], encoding="utf-8", errors="strict")
    return text


def relayed_text(value: str) -> str:
    """``value`` with obs-folds and control characters (HTAB excepted) replaced by SP (RFC 9112 §5.2,
    RFC 9110 §5.5), so the server underneath can write it."""
    if _CONTROL.search(value):
        value = _CONTROL.sub(" ", _OBS_FOLD.sub(" ", value))
    return value


def is_token(name: str) -> bool:
    """Whether ``name`` is an RFC 9110 §5.6.2 token, the grammar of a field name."""
    return _TOKEN.fullmatch(name) is not None
