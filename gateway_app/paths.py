"""One normalized path for routing, policy and the upstream (RFC 3986 §6.2.2).

- percent-encoded unreserved characters are decoded (``%2e`` -> ``.``, ``%7E`` -> ``~``);
  other escapes are kept, with upper-case hex;
- dot-segments are removed and repeated slashes merged;
- refused with 400:

  - encoded ``/`` or ``\\`` (``%2F``, ``%5C``), encoded control characters (``%00``-``%1F``,
    ``%7F``: NUL stops C-based readers, CR LF split log lines and headers), a raw backslash,
    control or non-ASCII bytes, a malformed escape: upstreams disagree on what they mean;
  - percent-escapes that do not decode to valid UTF-8 (``%ff``, the overlong ``%c0%af`` for
    ``/``): lenient decoders read them as ``/`` or ``.``; the query has the same rule
    (:func:`gateway_app.incoming.parse_query`);
  - a double-encoded escape (``%252e``): an upstream that decodes twice would see ``.``;
  - a ``;`` anywhere in the path: Tomcat, Jetty and Spring drop ``;params`` from segments,
    so ``/admin;x/secret`` would be routed as an open path and served as ``/admin/secret``;
  - paths longer than :data:`MAX_PATH_LENGTH`.

The upstream receives exactly the normalized path, so what was authorized is what is forwarded.
"""

from __future__ import annotations

import re
import string
import urllib.parse

from .errors import BadRequestError

MAX_PATH_LENGTH = 4096
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_FORBIDDEN_ESCAPES = frozenset({"2F", "5C", "7F"} | {f"{code:02X}" for code in range(0x20)})
_ESCAPE = re.compile(r"%(..)?", re.S)
_DOUBLE_ESCAPE = re.compile(r"%25[0-9A-Fa-f]{2}")
_SAFE_PATH = re.compile(r"^(/[A-Za-z0-9\-._~!$&'()*+,=:@]+)*/?$")


def normalize_path(raw: str) -> str:
    """:raises BadRequestError: the path is refused (see the module docstring)."""
    if _SAFE_PATH.match(raw) and "//" not in raw and "/." not in raw and len(raw) <= MAX_PATH_LENGTH:
        return raw or "/"                         # fast path: nothing to decode or resolve
    _check_characters(raw)
    decoded = _ESCAPE.sub(_decode_escape, raw)
    _check_utf8(decoded)
    return _remove_dot_segments(decoded)


def _check_characters(raw: str) -> None:
    if len(raw) > MAX_PATH_LENGTH:
        raise BadRequestError(f"path longer than {MAX_PATH_LENGTH} characters", reason="path_too_long")
    if not raw.startswith("/"):
        raise BadRequestError("path must start with '/'", reason="path_invalid")
    for char in raw:
        if char == "\\" or ord(char) < 0x21 or ord(char) > 0x7E:
            raise BadRequestError("path contains a backslash, a control or a non-ASCII character",
                                  reason="path_invalid")
    if ";" in raw:
        raise BadRequestError("';' path parameters are not allowed", reason="path_invalid")
    if _DOUBLE_ESCAPE.search(raw):
        raise BadRequestError("double-encoded percent-escape in path", reason="path_invalid")


def _check_utf8(path: str) -> None:
    """:raises BadRequestError: the escapes do not decode to UTF-8 (RFC 3986 §2.5, RFC 3629 §3)."""
    if "%" in path:
        try:
            urllib.parse.unquote_to_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestError("percent-escapes in the path are not valid UTF-8", reason="path_invalid") from None


def _decode_escape(match: re.Match[str]) -> str:
    digits = match.group(1)
    if digits is None or not all(c in string.hexdigits for c in digits):
        raise BadRequestError("malformed percent-escape in path", reason="path_invalid")
    digits = digits.upper()
    if digits in _FORBIDDEN_ESCAPES:
        raise BadRequestError(f"encoded %{digits} is not allowed in paths", reason="path_invalid")
    char = chr(int(digits, 16))
    return char if char in _UNRESERVED else f"%{digits}"


def _remove_dot_segments(path: str) -> str:
    output: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        elif segment in (".", ""):
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)
