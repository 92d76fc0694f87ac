"""An API gateway: OAuth 2.0 access tokens and Rego policies in front of upstream APIs.

The package imports nothing itself: gunicorn's master imports :mod:`gateway_app.worker` (the
worker class) before its ``on_starting`` hook prepares multi-process metrics, and
``prometheus_client`` must not be imported before that (:mod:`gateway_app.metrics`). The names
below are loaded on first use (PEP 562). The master also imports
:mod:`gateway_app.observability` (log format) and :mod:`gateway_app.startup` (config check).
"""

from __future__ import annotations

import importlib
import typing as t

_EXPORTS = {"create_app": ".app", "Gateway": ".gateway", "Settings": ".settings"}

__all__ = ["create_app", "Gateway", "Settings"]


def __getattr__(name: str) -> t.Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
