"""The request as the gateway's stages see it: read once from WSGI, immutable afterwards.

:func:`from_environ` is the one parse of a request. Routing, the token sources, the policy
input and the forwarder all read the :class:`IncomingRequest` it returns, so what is matched
and authorized is what is forwarded. Its rules, each refused with 400 and a stable reason:

- **Request target** (RFC 9112 §3.2): read from the raw target the server received
  (gunicorn's ``RAW_URI``), never from the decoded ``PATH_INFO``. A fragment (``#``) is
  refused (``fragment_in_target``): no request target has one, and servers disagree on
  whether to drop it or route on it. The path is normalized by :mod:`gateway_app.paths`.
  An absolute-form target (``GET http://host/path``) gives the host, replacing ``Host``
  (RFC 9112 §3.2.2); a target with userinfo is refused.
- **Query** (RFC 3986 §2.4, §3.4): forwarded byte for byte. It must read one way only:
  visible ASCII, every ``%`` followed by two hex digits, no ``%00`` (C-based readers stop at
  NUL), no raw ``;`` (Rack 2, Python's ``parse_qs`` before 3.9.2 and HTML 4 split pairs on it,
  so ``a=1;access_token=x`` would carry a second credential; ``%3B`` is accepted), and UTF-8
  once decoded; otherwise ``query_invalid``. ``query`` holds it decoded as ``application/x-www-form-urlencoded``
  (``+`` is a space, pairs split on ``&``), as OPA-Envoy's ``parsed_query``.
- **Host** (RFC 9110 §7.2, RFC 3986 §3.2.2, RFC 1034 §3.1): lower-cased, one trailing root dot
  removed, the port checked (1-5 digits, at most 65535; an empty port is dropped). The name is
  an IP literal or dot-separated labels of letters, digits, ``-`` and ``_``. Required for
  HTTP/1.1 (``host_missing``); two Host headers, a list or anything else is ``host_invalid``.
  Routing uses :attr:`IncomingRequest.hostname`; the policy's ``host``, the forwarded ``Host``
  and ``X-Forwarded-Host`` are :attr:`IncomingRequest.host`.
- **Cookies** (RFC 6265 §4.2.1): one parse of the ``Cookie`` header that keeps every pair, so a
  repeated name is seen (werkzeug's ``request.cookies`` keeps only the first). Pairs are split
  on ``;`` and on ``,`` (how servers join a repeated ``Cookie`` header); names are kept
  percent-decoded (PHP decodes them). Where a name may carry a credential, query and cookie
  names are compared as :func:`parameter_key` reads them. The ``Cookie`` header is forwarded as
  sent: ``recent=1,2,3`` is one cookie to most upstreams. Two Cookie fields (RFC 6265 §5.4: a
  user agent sends one) are refused by the worker, which still sees them apart
  (:mod:`gateway_app.worker`); here, where they arrive joined by ``,``, the split on ``,`` only
  makes a credential hidden in a second field visible to the token sources.
- **Transfer coding** (RFC 9112 §6.1): ``chunked`` alone; any other coding is refused with
  501 ``transfer_coding_unsupported``.
- **Forwarding headers**: every header a client could forge about the connection
  (:func:`is_forwarding_header`) is dropped unless the peer is a trusted proxy
  (``GATEWAY_TRUSTED_PROXIES``); URL and method overrides (:data:`OVERRIDE_HEADERS`) are
  dropped from every peer, so the upstream serves the method and URL that were routed; so is a
  query carrying ``_method`` (:data:`METHOD_OVERRIDE_PARAMETERS`, ``method_override``).
  Identity headers an authenticating proxy would set (``X-Remote-User``, ``X-Auth-Request-*``…)
  count as forwarding headers. The scheme is the connection's: ``https`` only over TLS, or
  when a trusted proxy says so in ``X-Forwarded-Proto``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import ssl
import typing as t
import unicodedata
import urllib.parse

from .errors import BadRequestError
from .errors import TransferCodingError
from .header_values import OVERRIDE_FIELDS
from .paths import normalize_path

MAX_HOST_LENGTH = 253                         # RFC 1034 §3.1, without the root dot
MAX_QUERY_FIELDS = 1000

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_REG_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{0,5}")
_QUERY_CHARACTERS = re.compile(r"[\x21-\x7e]*")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})|%00")
_COOKIE_SEPARATORS = re.compile(r"[;,]")

# Headers a client could forge about where the request came from, which URL or scheme it used
# or which TLS client certificate it showed (nginx, Envoy, Akamai, Cloudflare, Fastly, IIS ARR).
# Names and prefixes, lower-cased.
FORWARDING_HEADER_PREFIXES = ("x-forwarded-", "x-ssl-", "ssl-client-", "x-client-cert", "x-arr-", "x-envoy-",
                              "x-remote-")
FORWARDING_HEADERS = frozenset({
    "forwarded", "x-forwarded", "via", "x-real-ip", "x-client-ip", "true-client-ip", "x-cluster-client-ip",
    "client-ip", "x-original-forwarded-for", "cf-connecting-ip", "cf-connecting-ipv6", "cf-visitor",
    "fastly-client-ip", "fastly-ssl", "x-originating-ip", "x-proxyuser-ip", "x-client-verify", "x-client-dn",
    "x-client-san", "x-url-scheme", "x-scheme", "front-end-https", "x-original-host", "x-host",
    "x-http-host-override", "forwarded-for", "x-forward-for",
})
# Headers in which an authenticating proxy in front of an upstream asserts who the user is
# (oauth2-proxy, nginx auth_request, Apache, Authelia, Grafana auth proxy, Kong, AWS ALB, Google IAP,
# Azure App Service). Names and prefixes, lower-cased; dropped like forwarding headers.
IDENTITY_HEADER_PREFIXES = ("x-auth-request-", "x-authenticated-", "x-webauth-", "x-amzn-oidc-",
                            "x-goog-authenticated-user-", "x-ms-client-principal", "x-consumer-")
IDENTITY_HEADERS = frozenset({"remote-user", "remote-groups", "remote-email", "remote-name", "x-user", "x-email",
                              "x-userinfo", "x-auth-user", "x-user-email", "x-user-id", "x-user-name",
                              "x-user-groups", "x-user-roles"})
# URL and method overrides (:data:`gateway_app.header_values.OVERRIDE_FIELDS`): dropped from every peer.
OVERRIDE_HEADERS = OVERRIDE_FIELDS
# Query parameters that make a framework serve another method than the one authorized
# (Symfony ``_method`` with http_method_override, Laravel, Rails Rack::MethodOverride):
# a query carrying one is refused with ``method_override``.
METHOD_OVERRIDE_PARAMETERS = frozenset({"_method"})


@dataclasses.dataclass(frozen=True)
class IncomingRequest:
    """What routing, auth, policy and the forwarder look at. Header names are lower-cased.

    ``path`` is the normalized path that routing and policy decide on and that is
    forwarded; ``query_string`` is the raw query string, forwarded byte for byte and
    decoded into ``query``; ``host`` is the normalized ``Host`` (``name[:port]``).
    ``cookies`` maps each cookie name to every value it was sent with, in order.
    ``trusted_peer``: the peer is a trusted proxy, so its forwarding headers were kept.
    """

    method: str
    scheme: str
    host: str
    path: str
    query_string: str
    headers: t.Mapping[str, str]                # lower-cased name -> value (repeats joined by ",")
    query: t.Mapping[str, list[str]] = dataclasses.field(default_factory=dict)
    cookies: t.Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    remote_addr: str = ""
    request_id: str = ""
    trusted_peer: bool = False

    @property
    def hostname(self) -> str:
        """Host without port, lower-cased (``[::1]:80`` -> ``[::1]``): what routing matches."""
        return split_port(self.host.lower())[0]


class TrustedProxies:
    """The peers whose forwarding headers are believed (``GATEWAY_TRUSTED_PROXIES``).

    ``entries`` are addresses or CIDR networks (``10.0.0.0/8``, ``::1``).

    :raises ValueError: an entry is not an address or a network.
    """

    def __init__(self, entries: t.Iterable[str] = ()) -> None:
        self._networks = tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)

    def __contains__(self, address: object) -> bool:
        if not self._networks or not isinstance(address, str) or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client_address(self, request: IncomingRequest) -> str:
        """The client's IP: the peer, or when the peer is a trusted proxy, the nearest address in
        ``X-Forwarded-For`` that is not one (read right to left, as each proxy appends its peer)."""
        address = request.remote_addr
        if address not in self:
            return address
        for hop in reversed(request.headers.get("x-forwarded-for", "").split(",")):
            hop = hop.strip()
            if hop:
                address = hop
                if hop not in self:
                    break
        return address


NO_TRUSTED_PROXIES = TrustedProxies()


def from_environ(environ: t.Mapping[str, t.Any], *, request_id: str = "",
                 trusted_proxies: TrustedProxies = NO_TRUSTED_PROXIES,
                 max_header_count: int | None = None) -> IncomingRequest:
    """The one parse of a WSGI request (rules in the module docstring).

    :param environ: the WSGI environ; the raw target is read from ``RAW_URI`` (gunicorn,
        werkzeug) or ``REQUEST_URI``, else rebuilt from ``PATH_INFO`` and ``QUERY_STRING``.
    :param max_header_count: more header fields than this -> ``too_many_headers``.
    :raises BadRequestError: the request is refused (400, reason as in the module docstring).
    """
    _check_transfer_coding(environ)
    remote_addr = environ.get("REMOTE_ADDR", "") or ""
    trusted = remote_addr in trusted_proxies
    headers, fields = _headers_of(environ, trusted)
    if max_header_count is not None and fields > max_header_count:
        raise BadRequestError(f"more than {max_header_count} headers", reason="too_many_headers")
    authority, raw_path, query_string = _split_target(_raw_target(environ))
    if authority is None:
        authority = headers.get("host")
        if not authority and environ.get("SERVER_PROTOCOL", "HTTP/1.1") != "HTTP/1.0":
            raise BadRequestError("the Host header is required", reason="host_missing")
    host = normalize_host(authority or "")
    if host:
        headers["host"] = host                 # the policy's headers show the Host that is forwarded
    return IncomingRequest(
        method=environ.get("REQUEST_METHOD", "GET"), scheme=_scheme(environ, headers, trusted), host=host,
        path=normalize_path(raw_path), query_string=query_string, headers=headers,
        query=parse_query(query_string), cookies=parse_cookies(headers.get("cookie", "")),
        remote_addr=remote_addr, request_id=request_id, trusted_peer=trusted,
    )


def is_forwarding_header(name: str) -> bool:
    """Whether a (lower-cased) header claims something a client could forge: about the connection
    (:data:`FORWARDING_HEADERS`) or, as an authenticating proxy would, about the user
    (:data:`IDENTITY_HEADERS`). Kept only from a trusted proxy."""
    return (name in FORWARDING_HEADERS or name.startswith(FORWARDING_HEADER_PREFIXES)
            or name in IDENTITY_HEADERS or name.startswith(IDENTITY_HEADER_PREFIXES))


def _headers_of(environ: t.Mapping[str, t.Any], trusted: bool) -> tuple[dict[str, str], int]:
    """Lower-cased request headers from the environ, forwarding headers dropped unless ``trusted``,
    and how many header fields were received (dropped ones included).

    WSGI servers join a repeated header with commas (gunicorn without a space).
    """
    headers: dict[str, str] = {}
    fields = 0
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            fields += 1
            name = key[5:].replace("_", "-").lower()
            if name not in OVERRIDE_HEADERS and (trusted or not is_forwarding_header(name)):
                headers[name] = value
    for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
        if environ.get(key):
            headers[name] = environ[key]
            fields += 1
    return headers, fields


def target_path(environ: t.Mapping[str, t.Any]) -> tuple[str, str]:
    """``(raw path, normalized path)`` of the request target: the path as sent (no query) and
    as every stage reads it (:func:`~gateway_app.paths.normalize_path`).

    The admin endpoints are dispatched on this too, so no spelling reaches them that routing
    would read as another path.

    :raises BadRequestError: as :func:`from_environ` for the target and the path.
    """
    _, raw_path, _ = _split_target(_raw_target(environ))
    return raw_path, normalize_path(raw_path)


def _check_transfer_coding(environ: t.Mapping[str, t.Any]) -> None:
    """Only ``chunked`` is understood (RFC 9112 §6.1): any other transfer coding is refused
    (501, ``transfer_coding_unsupported``) rather than decoded one way here and another way
    upstream (``gzip, chunked`` would otherwise be forwarded de-chunked as if it were identity)."""
    coding = environ.get("HTTP_TRANSFER_ENCODING")
    if coding is not None and coding.strip().lower() != "chunked":
        raise TransferCodingError(f"transfer coding {coding[:40]!r} is not supported")


def sent_path(environ: t.Mapping[str, t.Any]) -> str:
    """The path of the request target as the client sent it, query dropped (it may carry a
    token): what the access record of a request refused before it was parsed shows."""
    return _raw_target(environ).partition("?")[0]


def _raw_target(environ: t.Mapping[str, t.Any]) -> str:
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return t.cast(str, raw)
    path = urllib.parse.quote(environ.get("PATH_INFO", "") or "/", safe="/!$&'()*+,=:@~", encoding="latin-1")
    query = environ.get("QUERY_STRING", "")
    return f"{path}?{query}" if query else path


def _split_target(target: str) -> tuple[str | None, str, str]:
    """``(authority or None, raw path, raw query)`` of an origin- or absolute-form target.

    :raises BadRequestError: a fragment, or an absolute-form target with userinfo.
    """
    if "#" in target:
        raise BadRequestError("a request target has no fragment ('#')", reason="fragment_in_target")
    authority = None
    if not target.startswith("/") and "://" in target:
        scheme, _, rest = target.partition("://")
        if scheme.lower() not in ("http", "https"):
            raise BadRequestError("absolute-form targets must be http or https", reason="target_invalid")
        end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, target = rest[:end], rest[end:]
        if "@" in authority:
            raise BadRequestError("a request target has no userinfo", reason="target_invalid")
        if not target.startswith("/"):
            target = "/" + target
    path, _, query = target.partition("?")
    return authority, path, query


def _scheme(environ: t.Mapping[str, t.Any], headers: t.Mapping[str, str], trusted: bool) -> str:
    """``https`` over TLS or when a trusted proxy says so, else ``http``.

    Under gunicorn, TLS is read off the socket, not from ``wsgi.url_scheme``, which gunicorn
    lets ``secure_scheme_headers`` change.
    """
    if trusted:
        proto = headers.get("x-forwarded-proto", "").strip().lower()
        if proto in ("http", "https"):
            return proto
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        return "https" if isinstance(sock, ssl.SSLSocket) else "http"
    return "https" if environ.get("wsgi.url_scheme") == "https" else "http"


def split_port(authority: str) -> tuple[str, str | None]:
    """``("host", "8080")`` from ``host:8080``; ``("[::1]", None)`` from ``[::1]``; no checks."""
    if authority.startswith("["):
        host, bracket, rest = authority.partition("]")
        if not bracket:
            return authority, None
        return host + "]", rest[1:] if rest.startswith(":") else None
    if authority.count(":") == 1:
        host, _, port = authority.partition(":")
        return host, port
    return authority, None


def normalize_host(authority: str) -> str:
    """The one form of a Host value: ``Secure.Example.COM.:0443`` -> ``secure.example.com:443``.

    ``""`` stays ``""`` (an HTTP/1.0 request without Host).

    :raises BadRequestError: ``host_invalid``: not ``name[:port]`` (see the module docstring).
    """
    if not authority:
        return ""
    host, port = split_port(authority.lower())
    if host.endswith("."):
        host = host[:-1]
    if not (_valid_ip_literal(host) or (len(host) <= MAX_HOST_LENGTH and _REG_NAME.fullmatch(host))):
        raise BadRequestError("the Host header is not a valid host name", reason="host_invalid")
    if port is None or port == "":
        return host
    if not _PORT.fullmatch(port) or int(port) > 65535 or int(port) == 0:
        raise BadRequestError("the Host header has an invalid port", reason="host_invalid")
    return f"{host}:{int(port)}"


def _valid_ip_literal(host: str) -> bool:
    if not (host.startswith("[") and host.endswith("]")):
        return False
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


def parse_query(query_string: str) -> dict[str, list[str]]:
    """Name -> values of a raw query string that reads one way only (module docstring).

    :raises BadRequestError: ``query_invalid``.
    """
    if not query_string:
        return {}
    if not _QUERY_CHARACTERS.fullmatch(query_string):
        raise BadRequestError("the query string holds characters that must be percent-encoded",
                              reason="query_invalid")
    if _STRAY_PERCENT.search(query_string):
        raise BadRequestError("the query string holds a '%' that is not a percent-escape", reason="query_invalid")
    if ";" in query_string:
        raise BadRequestError("a raw ';' in the query string separates parameters for some servers: "
                              "send it as %3B", reason="query_invalid")
    try:
        query = urllib.parse.parse_qs(query_string, keep_blank_values=True, errors="strict",
                                      max_num_fields=MAX_QUERY_FIELDS)
    except UnicodeDecodeError:
        raise BadRequestError("the query string is not valid UTF-8", reason="query_invalid") from None
    except ValueError:
        raise BadRequestError(f"more than {MAX_QUERY_FIELDS} query parameters", reason="query_invalid") from None
    if any(parameter_key(name) in METHOD_OVERRIDE_PARAMETERS for name in query):
        raise BadRequestError("a method override ('_method') is not forwarded: send the method itself",
                              reason="method_override")
    return query


def cookie_parts(header: str) -> list[str]:
    """The ``name=value`` parts of a Cookie header, trimmed, split on ``;`` and ``,``."""
    return [part for raw in _COOKIE_SEPARATORS.split(header) if (part := raw.strip(" \t"))]


def cookie_pair(part: str) -> tuple[str, str]:
    """``(name, value)`` of one part: the name trimmed and percent-decoded, the value as sent.

    A part without ``=`` is a nameless value (RFC 6265bis §5.6).
    """
    name, sep, value = part.partition("=")
    if not sep:
        return "", part
    return urllib.parse.unquote(name.strip(" \t"), errors="replace"), value.strip(" \t")


def parameter_key(name: str) -> str:
    """A query parameter or cookie name as compared when it may carry a credential: the one
    name every upstream's reading of it comes down to (``access_token`` for all of these).

    - Unicode compatibility-normalized and case-folded (NFKC, then ``str.casefold``): ASP.NET
      compares names case-insensitively, and Unicode case rules fold ``ſ`` to ``s`` and
      fullwidth letters to ASCII (``ACCESS_TOKEN``, ``acceſs_token``, ``ａccess_token``);
    - surrounding blanks and quotes and a leading ``$`` dropped: RFC 2109 allowed quoted
      strings and ``$``-prefixed attributes in ``Cookie``, and lenient parsers that unquote or
      strip them read ``"session"`` and ``$session`` as ``session``;
    - PHP's reading of ``$_GET`` and ``$_COOKIE`` names: ``name[...]`` is the array ``name``
      (``access_token[]``, ``access_token[0]``, ``access_token[a]``); a first ``[`` without a
      closing ``]`` becomes ``_`` (``access[token``); ``.`` and spaces become ``_``
      (``ACCESS.token``, ``access token``).

    ``;`` never separates query parameters here because :func:`parse_query` refuses it.
    """
    key = unicodedata.normalize("NFKC", name).casefold().strip(" \t").strip('"').lstrip("$").strip(" \t")
    bracket = key.find("[")
    if bracket >= 0:
        key = key[:bracket] if "]" in key[bracket:] else f"{key[:bracket]}_{key[bracket + 1:]}"
    return key.replace(".", "_").replace(" ", "_")


def parse_cookies(header: str) -> dict[str, tuple[str, ...]]:
    """Cookie name -> every value sent for it, in order."""
    cookies: dict[str, tuple[str, ...]] = {}
    for part in cookie_parts(header):
        name, value = cookie_pair(part)
        cookies[name] = cookies.get(name, ()) + (value,)
    return cookies
