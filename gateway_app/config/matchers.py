"""Gloo ``VirtualService`` routes: matchers, route actions and per-route options."""

from __future__ import annotations

import re
import typing as t

from ..errors import ConfigError
from ..routing import HeaderMatcher
from ..routing import Matcher
from ..routing import PathMatcher
from ..routing import PathRewrite
from ..transform import HeaderTemplate
from ..transform import HeaderTransforms
from ..transform import compile_template
from .fields import Node

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def compile_regex(node: Node, field: str, value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as e:
        raise node.error(field, f"bad regex {value!r}: {e}") from e


def parse_path(node: Node, prefix_field: str, exact_field: str, regex_field: str,
               case_sensitive: bool) -> PathMatcher | None:
    kind = node.one_of(prefix_field, exact_field, regex_field, required=False)
    if kind is None:
        return None
    value = node.str(kind, required=True)
    if kind == regex_field:
        flags_value = value if case_sensitive else f"(?i:{value})"
        return PathMatcher("regex", value, compile_regex(node, kind, flags_value))
    if not value.startswith("/"):
        raise node.error(kind, "must start with '/'")
    simple = "prefix" if kind == prefix_field else "exact"
    return PathMatcher(simple, value if case_sensitive else value.lower(), case_sensitive=case_sensitive)


def parse_methods(node: Node, field: str) -> frozenset[str]:
    raw = node.raw(field)
    if raw is None:
        return frozenset()
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise node.error(field, "expected a method or a list of methods")
    methods = frozenset(v.upper() for v in values)
    unknown = sorted(methods - HTTP_METHODS)
    if unknown:
        raise node.error(field, f"unknown HTTP method {unknown[0]}")
    return methods


def parse_header_matchers(node: Node, field: str = "headers") -> tuple[HeaderMatcher, ...]:
    matchers = []
    for item in node.children(field):
        name = item.str("name", required=True).lower()
        value = item.str("value")
        is_regex = item.bool("regex")
        invert = item.bool("invertMatch")
        item.done()
        pattern = compile_regex(item, "value", value) if is_regex and value is not None else None
        matchers.append(HeaderMatcher(name=name, value=None if pattern else value, regex=pattern, invert=invert))
    return tuple(matchers)


def parse_vs_matcher(node: Node) -> Matcher:
    case_sensitive = node.raw("caseSensitive", True)
    if not isinstance(case_sensitive, bool):
        raise node.error("caseSensitive", "expected true or false")
    path = parse_path(node, "prefix", "exact", "regex", case_sensitive)
    methods = parse_methods(node, "methods")
    headers = parse_header_matchers(node)
    node.done()
    return Matcher(paths=(path,) if path else (), methods=methods, headers=headers)


def parse_transformations(node: Node | None) -> HeaderTransforms | None:
    """``stagedTransformations.{early,regular}.requestTransforms[].requestTransformation.transformationTemplate``."""
    if node is None:
        return None
    templates: list[HeaderTemplate] = []
    for stage_name in ("early", "regular"):
        stage = node.child(stage_name)
        if stage is None:
            continue
        for transform in stage.children("requestTransforms"):
            templates.extend(_request_transform(transform))
        stage.raw("responseTransforms")
        stage.done()
    node.raw("inheritTransformation")
    node.done()
    return HeaderTransforms(tuple(templates))


def _request_transform(node: Node) -> list[HeaderTemplate]:
    node.raw("matcher")
    if node.has("matcher"):
        raise node.error("matcher", "per-transform matchers are not supported; use a separate route")
    transformation = node.child("requestTransformation", required=True)
    node.done()
    assert transformation is not None
    template = transformation.child("transformationTemplate", required=True)
    transformation.done()
    assert template is not None
    results = []
    headers = template.child("headers")
    if headers is not None:
        for header_name in list(headers.data):
            value = headers.child(str(header_name), required=True)
            assert value is not None
            results.append(_template(value, str(header_name), append=False))
        headers.done()
    for item in template.children("headersToAppend"):
        key = item.str("key", required=True)
        value = item.child("value", required=True)
        assert value is not None
        item.done()
        results.append(_template(value, key, append=True))
    template.raw("passthrough")
    template.raw("parseBodyBehavior")
    template.done()
    return results


def _template(node: Node, header: str, append: bool) -> HeaderTemplate:
    text = node.str("text", required=True)
    node.done()
    try:
        parts = compile_template(text, where=node.where)
    except ConfigError as e:
        raise node.error("text", e.detail) from e
    return HeaderTemplate(name=header.lower(), parts=parts, append=append)


def parse_prefix_rewrite(node: Node, field: str,
                         matchers: tuple[Matcher, ...]) -> tuple[tuple[Matcher, ...], PathRewrite | None]:
    """The route's matchers and its rewrite (:meth:`PathRewrite.for_route`): whichever prefix
    (or exact path) matched is replaced; regex-only routes rewrite from '/'."""
    replacement = node.str(field)
    if replacement is None:
        return matchers, None
    if not replacement.startswith("/"):
        raise node.error(field, "must start with '/'")
    return PathRewrite.for_route(matchers, replacement)
