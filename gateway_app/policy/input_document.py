"""The OPA ``input`` document for one request: Gloo's shape and OPA-Envoy's, in one dict.

:func:`build_input` is the one place the input is made (opa-envoy-plugin's ``RequestToInput``).
It is pure and cheap: called once per request, its parts are shared, never copied.
"""

from __future__ import annotations

import typing as t
import urllib.parse

from ..auth.state import AuthState
from ..incoming import IncomingRequest

APIMANAGEMENT_FILTER = "io.solo.gloo.apimanagement"
INPUT_VERSION = {"ext_authz": "v3", "encoding": "protojson"}
DEFAULT_PROTOCOL = "HTTP/1.1"


class RouteMeta(t.Protocol):
    """What the input needs from the matched route (the lead's ``Route`` satisfies it)."""

    name: str
    labels: t.Mapping[str, str]
    api_product_id: str | None
    usage_plan: str | None


def build_input(request: IncomingRequest, route: RouteMeta, state: AuthState) -> dict[str, t.Any]:
    """The ``input`` document policies see, field by field.

    Gloo (``check_request`` is Envoy's ``CheckRequest``; ``attributes`` is the same object as
    OPA-Envoy's ``input.attributes``):

    - ``check_request.attributes.request.http``, the *http* object:

      - ``method``: the request method, e.g. ``"GET"``.
      - ``path``: the path, plus ``"?"`` and the raw query when there is one (as Envoy sends it).
      - ``host``: the Host header as sent, port included.
      - ``headers``: every request header, lower-cased name -> value (repeats joined by ``", "``),
        *including* ``authorization`` and cookies as sent: Gloo and OPA-Envoy do the same and
        policies parse them. The input is never logged in full for that reason.
      - ``scheme``: ``"http"`` or ``"https"`` as the client used.
      - ``query``: the raw query string (``""`` when none).
      - ``id``: the gateway's request id.
      - ``protocol``: the request's protocol when the request knows it, else ``"HTTP/1.1"``.

    - ``check_request.attributes.source.address.socketAddress.address``: the client address
      (present only when known).
    - ``check_request.attributes.metadata_context.filter_metadata["io.solo.gloo.apimanagement"]``:
      ``api_product_id`` (the route's, else ``""``),
      ``usagePlan`` and ``usage_plan`` (the route's usage plan, else ``""``).
    - ``check_request.attributes.context_extensions``: the route's labels.
    - ``state``: ``jwtAccessToken`` (verified JWT claims; omitted when there are none),
      ``introspection`` (introspection response claims; omitted when none) and
      ``dynamicMetadata`` (Gloo's dynamic metadata from earlier steps, ``config_<i>`` keys).
    - ``http_request``: Gloo's legacy shape, ``method``, ``path``, ``host``, ``headers``,
      ``query``, with the same values as the *http* object.

    OPA-Envoy:

    - ``attributes``: the same object as ``check_request.attributes``, so
      ``input.attributes.request.http`` is the *http* object.
    - ``parsed_path``: the path (without query) split on ``/``, empty segments dropped, each
      segment percent-decoded: ``/api/a%20b/`` -> ``["api", "a b"]``.
    - ``parsed_query``: query parameter name -> list of values, blank values kept.
    - ``version``: ``{"ext_authz": "v3", "encoding": "protojson"}``.

    There is no ``parsed_body``: bodies are streamed to the upstream, never buffered for policy.
    """
    http = _http_attributes(request)
    attributes: dict[str, t.Any] = {
        "request": {"http": http},
        "metadata_context": {"filter_metadata": {APIMANAGEMENT_FILTER: _apimanagement(route)}},
        "context_extensions": dict(route.labels),
    }
    if request.remote_addr:
        attributes["source"] = {"address": {"socketAddress": {"address": request.remote_addr}}}
    return {
        "check_request": {"attributes": attributes},
        "state": _state(state),
        "http_request": {key: http[key] for key in ("method", "path", "host", "headers", "query")},
        "attributes": attributes,
        "parsed_path": parse_path(request.path),
        "parsed_query": _parsed_query(request),
        "version": dict(INPUT_VERSION),
    }


def _http_attributes(request: IncomingRequest) -> dict[str, t.Any]:
    path = f"{request.path}?{request.query_string}" if request.query_string else request.path
    return {
        "method": request.method,
        "path": path,
        "host": request.host,
        "headers": dict(request.headers),
        "scheme": request.scheme,
        "query": request.query_string,
        "id": request.request_id,
        "protocol": getattr(request, "protocol", None) or DEFAULT_PROTOCOL,
    }


def _apimanagement(route: RouteMeta) -> dict[str, str]:
    usage_plan = route.usage_plan or ""
    return {
        "api_product_id": route.api_product_id or "",
        "usagePlan": usage_plan,
        "usage_plan": usage_plan,
    }


def _state(state: AuthState) -> dict[str, t.Any]:
    document: dict[str, t.Any] = {}
    if state.jwt_access_token is not None:
        document["jwtAccessToken"] = state.jwt_access_token
    if state.introspection is not None:
        document["introspection"] = state.introspection
    document["dynamicMetadata"] = state.metadata
    return document


def parse_path(path: str) -> list[str]:
    """``/api/a%20b//c/`` -> ``["api", "a b", "c"]`` (OPA-Envoy's ``parsed_path``)."""
    return [urllib.parse.unquote(segment) for segment in path.split("/") if segment]


def _parsed_query(request: IncomingRequest) -> dict[str, list[str]]:
    if request.query:
        return {name: list(values) for name, values in request.query.items()}
    return urllib.parse.parse_qs(request.query_string, keep_blank_values=True)
