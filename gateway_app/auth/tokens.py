"""Where the access token comes from: a header with a scheme, a query parameter, a cookie.

Every source reads the one parse of the request (:mod:`gateway_app.incoming`). All enabled
sources are read, every copy of each (query and cookie names compared as
:func:`gateway_app.incoming.parameter_key` reads them: ``Access_Token`` is a copy of
``access_token``): one request carrying two *different* tokens (a cookie sent twice, a query
parameter repeated, a header and a cookie) is refused with
``token_ambiguous`` rather than guessed, so the upstream can only ever receive copies of the
token that was validated. A header source is one field: a comma in it (a repeated header
joined by the server, or a list of credentials) is refused with 400 ``token_header_repeated``.

With a scheme, the header follows RFC 9110 §11.4 / RFC 6750 §2.1 exactly:
``credentials = auth-scheme 1*SP token68``, the scheme matched case-insensitively, the token
``1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="``. Another scheme is not this
source's (no token); anything else after our scheme is ``token_malformed``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing as t
import urllib.parse

from ..config.fields import Node
from ..errors import AmbiguousTokenError
from ..errors import BadRequestError
from ..errors import InvalidTokenError
from ..incoming import IncomingRequest
from ..incoming import cookie_pair
from ..incoming import cookie_parts
from ..incoming import parameter_key

DEFAULT_MAX_TOKEN_LENGTH = 8192
MAX_TOKEN_LENGTH = 65536            # the most ``maxTokenLength`` may allow; validators refuse longer tokens
SOURCES = ("header", "query", "cookie")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")         # RFC 9110 §11.2 token68, RFC 6750 §2.1 b64token
_AUTH_SCHEME_END = re.compile(r"[ \t]")


class FoundToken(t.NamedTuple):
    value: str
    location: tuple[str, str]          # ("header" | "query" | "cookie", name)


@dataclasses.dataclass(frozen=True)
class TokenSource:
    """Traefik Hub's ``tokenSource``; the default is ``Authorization: Bearer <token>``."""

    header: str | None = "authorization"
    scheme: str | None = "Bearer"
    query: str | None = None
    cookie: str | None = None
    order: tuple[str, ...] = SOURCES
    remove_from_request: bool = False
    max_token_length: int = DEFAULT_MAX_TOKEN_LENGTH

    def extract(self, request: IncomingRequest) -> FoundToken | None:
        """The one token the request carries, or None.

        :raises InvalidTokenError: malformed credential or oversized token.
        :raises AmbiguousTokenError: two different tokens.
        :raises BadRequestError: the token header is repeated.
        """
        first: FoundToken | None = None
        for read in self._readers:
            token = read(request)
            if token is None:
                continue
            if first is None:
                first = token
            elif token.value != first.value:
                raise AmbiguousTokenError()
        if first is not None:
            if first.location[0] != "header" and self._foreign_credential(request):
                raise AmbiguousTokenError()
            self._check(first.value)
        return first

    def _foreign_credential(self, request: IncomingRequest) -> bool:
        """Whether the token header holds a credential of another scheme (``Basic ...`` beside a
        Bearer source): with a token found elsewhere, the upstream would receive a second,
        unvalidated credential in a location this source reads (issue 12, class 4)."""
        if not self.header or not self.scheme:
            return False
        raw = request.headers.get(self.header)
        return bool(raw and raw.strip()) and self._from_header(request) is None

    @functools.cached_property
    def _readers(self) -> tuple[t.Callable[[IncomingRequest], FoundToken | None], ...]:
        """The readers of the enabled sources, in ``order``."""
        return tuple(getattr(self, f"_from_{kind}") for kind in self.order if getattr(self, kind))

    def locations(self, request: IncomingRequest) -> list[tuple[str, str]]:
        """Every enabled location, for removal before forwarding."""
        return [(kind, name) for kind in self.order if (name := getattr(self, kind))]

    def _from_header(self, request: IncomingRequest) -> FoundToken | None:
        if not self.header:
            return None
        raw = request.headers.get(self.header)
        if raw is None:
            return None
        _refuse_joined_repeats(raw, self.header)
        if not self.scheme:
            return FoundToken(raw.strip(), ("header", self.header)) if raw.strip() else _malformed("empty token")
        end = _AUTH_SCHEME_END.search(raw)
        scheme, rest = (raw[:end.start()], raw[end.start():]) if end else (raw, "")
        if scheme.lower() != self.scheme.lower():
            return None                      # another scheme (e.g. Basic): not ours
        token = rest.lstrip(" ")
        if not token:
            _malformed(f"empty {self.scheme} token")
        if not rest.startswith(" ") or not _TOKEN68.fullmatch(token):
            _malformed(f"the {self.header} header must be '{self.scheme} <token68>'")
        return FoundToken(token, ("header", self.header))

    def _from_query(self, request: IncomingRequest) -> FoundToken | None:
        if not self.query:
            return None
        values = _values_named(request.query, self.query)
        if not values:
            return None
        return FoundToken(_one_value(values, "query parameter"), ("query", self.query))

    def _from_cookie(self, request: IncomingRequest) -> FoundToken | None:
        if not self.cookie:
            return None
        values = _values_named(request.cookies, self.cookie)
        if not values:
            return None
        return FoundToken(_one_value(values, "cookie"), ("cookie", self.cookie))

    def _check(self, token: str) -> None:
        check_token_shape(token, self.max_token_length)


def check_token_shape(token: str, max_length: int = MAX_TOKEN_LENGTH) -> None:
    """The one rule for what a token may look like: 1 to ``max_length`` visible ASCII characters.

    RFC 6750 §2.1's b64token is a subset; JWTs (RFC 7519) and opaque tokens both fit.
    :raises InvalidTokenError: reason ``token_malformed``.
    """
    if not isinstance(token, str) or not token:
        raise InvalidTokenError("the access token is empty", reason="token_malformed")
    if len(token) > max_length:
        raise InvalidTokenError(f"token longer than {max_length} characters", reason="token_malformed")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise InvalidTokenError("token contains characters outside visible ASCII", reason="token_malformed")


def _refuse_joined_repeats(value: str, header: str) -> None:
    """WSGI servers join a repeated header with commas; a token never holds one (RFC 6750 b64token).

    :raises BadRequestError: the header was sent more than once (or lists several credentials).
    """
    if "," in value:
        raise BadRequestError(f"the {header} header is repeated or holds several credentials",
                              reason="token_header_repeated")


def _values_named(parameters: t.Mapping[str, t.Sequence[str]], name: str) -> list[str]:
    """Every value of every parameter whose name reads as ``name`` (:func:`parameter_key`)."""
    key = parameter_key(name)
    return [value for found, values in parameters.items() if parameter_key(found) == key for value in values]


def _one_value(values: t.Sequence[str], where: str) -> str:
    """The one token of a repeated location: equal copies are one token, different ones ambiguous.

    :raises AmbiguousTokenError: two different values.
    :raises InvalidTokenError: the value is empty.
    """
    if any(value != values[0] for value in values):
        raise AmbiguousTokenError()
    if not values[0]:
        _malformed(f"empty token in {where}")
    return values[0]


def _malformed(message: str) -> FoundToken:
    raise InvalidTokenError(message, reason="token_malformed")


def parse_token_source(node: Node | None, max_token_length: int = DEFAULT_MAX_TOKEN_LENGTH) -> TokenSource:
    """``tokenSource: {header, headerAuthScheme, query, cookie, order, removeFromRequest, maxTokenLength}``."""
    if node is None:
        return TokenSource(max_token_length=max_token_length)
    header = node.str("header")
    scheme = node.str("headerAuthScheme")
    query = node.str("query")
    cookie = node.str("cookie")
    order = tuple(node.str_list("order")) or SOURCES
    for index, kind in enumerate(order):
        if kind not in SOURCES:
            raise node.error(f"order[{index}]", f"must be one of {', '.join(SOURCES)}")
    if len(set(order)) != len(order):
        raise node.error("order", "lists a source twice")
    remove = node.bool("removeFromRequest")
    max_length = node.int("maxTokenLength", default=max_token_length, minimum=16, maximum=MAX_TOKEN_LENGTH)
    node.done()
    if header is None and query is None and cookie is None:
        header, scheme = "Authorization", scheme or "Bearer"
    if scheme is not None and header is None:
        raise node.error("headerAuthScheme", "needs 'header'")
    if scheme is not None and (" " in scheme.strip() or not scheme.strip()):
        raise node.error("headerAuthScheme", "must be a single word such as Bearer")
    return TokenSource(header=header.lower() if header else None, scheme=scheme, query=query, cookie=cookie,
                       order=order, remove_from_request=remove, max_token_length=max_length)


def strip_query_parameter(query_string: str, name: str) -> str:
    """The raw query string without any pair whose name reads as ``name`` (:func:`parameter_key`);
    other pairs kept byte for byte."""
    if not query_string:
        return query_string
    key = parameter_key(name)
    kept = [pair for pair in query_string.split("&")
            if parameter_key(urllib.parse.unquote_plus(pair.split("=", 1)[0])) != key]
    return "&".join(kept)


def strip_cookie(cookie_header: str, name: str) -> str:
    """The Cookie header without any pair whose name reads as ``name`` (:func:`parameter_key`).

    Pairs are the ``;``-separated parts, kept as sent and joined by ``"; "``; a part holding a
    ``,``-joined repeat (how servers join two Cookie headers) is dropped whole when any of its
    pieces is the credential, as :func:`gateway_app.incoming.cookie_parts` reads it.
    """
    key = parameter_key(name)
    kept = [part for raw in cookie_header.split(";") if (part := raw.strip(" \t"))
            and all(parameter_key(cookie_pair(piece)[0]) != key for piece in cookie_parts(part))]
    return "; ".join(kept)
