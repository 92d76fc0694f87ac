"""Process settings from the environment (``GATEWAY_*``) and command-line flags.

=============================  ===========================================  ==============
variable                       meaning                                      default
=============================  ===========================================  ==============
GATEWAY_CONFIG_DIR             YAML resources                               ``conf``
GATEWAY_REGO_DIR               Rego modules                                 ``rego``
GATEWAY_LOG_LEVEL              debug, info, warning, error                  ``info``
GATEWAY_LOG_FORMAT             ``plain`` or ``json``                        ``plain``
GATEWAY_ACCESS_LOG             ``true``/``false``: one line per request     ``true``
GATEWAY_ADMIN_PREFIX           path prefix of health and metrics endpoints  ``/__gateway``
GATEWAY_MAX_BODY_BYTES         request body limit (413 beyond)              ``10485760``
GATEWAY_MAX_HEADER_COUNT       more request headers -> 400                  ``100``
GATEWAY_TRUST_REQUEST_ID       keep a client's well-formed X-Request-Id     ``true``
GATEWAY_TRUSTED_PROXIES        peers whose X-Forwarded-* are kept           (none)
GATEWAY_RELOAD_INTERVAL        seconds between checks of conf/ and rego/    ``2`` (0: off)
GATEWAY_DEBUG_ROUTE            log input document and decision of one route (none)
GATEWAY_TOKEN_CACHE_URL        ``redis://host:port/db``: share token cache   (in-process)
GATEWAY_RATE_LIMIT_URL         Redis for usage-plan counters                 the token cache's
GATEWAY_RATE_LIMIT_FAILURE     Redis down: ``open`` (per-worker limits) or   ``open``
                               ``closed`` (503)
GATEWAY_RATE_LIMIT_WORKERS     without Redis, divide every limit by this     ``1``
=============================  ===========================================  ==============
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import typing as t


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class Settings:
    config_dir: pathlib.Path = pathlib.Path("conf")
    rego_dir: pathlib.Path = pathlib.Path("rego")
    log_level: str = "info"
    log_format: str = "plain"
    access_log: bool = True
    admin_prefix: str = "/__gateway"
    max_body_bytes: int = 10 * 1024 * 1024
    max_header_count: int = 100
    trust_request_id: bool = True
    trusted_proxies: frozenset[str] = frozenset()
    reload_interval: float = 2.0
    debug_route: str | None = None
    token_cache_url: str | None = None
    rate_limit_url: str | None = None
    rate_limit_failure: str = "open"
    rate_limit_workers: int = 1

    @property
    def rate_limit_store(self) -> str | None:
        """Where usage-plan counters live: ``GATEWAY_RATE_LIMIT_URL``, else the token cache's Redis."""
        return self.rate_limit_url or self.token_cache_url

    @classmethod
    def from_env(cls, environ: t.Mapping[str, str] | None = None, **overrides: t.Any) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, t.Any] = {}
        if "GATEWAY_CONFIG_DIR" in env:
            values["config_dir"] = pathlib.Path(env["GATEWAY_CONFIG_DIR"])
        if "GATEWAY_REGO_DIR" in env:
            values["rego_dir"] = pathlib.Path(env["GATEWAY_REGO_DIR"])
        if "GATEWAY_LOG_LEVEL" in env:
            values["log_level"] = env["GATEWAY_LOG_LEVEL"].lower()
        if "GATEWAY_LOG_FORMAT" in env:
            values["log_format"] = env["GATEWAY_LOG_FORMAT"].lower()
        if "GATEWAY_ACCESS_LOG" in env:
            values["access_log"] = _bool(env["GATEWAY_ACCESS_LOG"])
        if "GATEWAY_ADMIN_PREFIX" in env:
            values["admin_prefix"] = "/" + env["GATEWAY_ADMIN_PREFIX"].strip("/")
        if "GATEWAY_MAX_BODY_BYTES" in env:
            values["max_body_bytes"] = int(env["GATEWAY_MAX_BODY_BYTES"])
        if "GATEWAY_MAX_HEADER_COUNT" in env:
            values["max_header_count"] = int(env["GATEWAY_MAX_HEADER_COUNT"])
        if "GATEWAY_TRUST_REQUEST_ID" in env:
            values["trust_request_id"] = _bool(env["GATEWAY_TRUST_REQUEST_ID"])
        if "GATEWAY_TRUSTED_PROXIES" in env:
            values["trusted_proxies"] = frozenset(p.strip() for p in env["GATEWAY_TRUSTED_PROXIES"].split(",")
                                                  if p.strip())
        if "GATEWAY_RELOAD_INTERVAL" in env:
            values["reload_interval"] = float(env["GATEWAY_RELOAD_INTERVAL"])
        if env.get("GATEWAY_TOKEN_CACHE_URL"):
            values["token_cache_url"] = env["GATEWAY_TOKEN_CACHE_URL"]
        if env.get("GATEWAY_RATE_LIMIT_URL"):
            values["rate_limit_url"] = env["GATEWAY_RATE_LIMIT_URL"]
        if env.get("GATEWAY_RATE_LIMIT_FAILURE"):
            values["rate_limit_failure"] = env["GATEWAY_RATE_LIMIT_FAILURE"].strip().lower()
        if env.get("GATEWAY_RATE_LIMIT_WORKERS"):
            values["rate_limit_workers"] = int(env["GATEWAY_RATE_LIMIT_WORKERS"])
        if env.get("GATEWAY_DEBUG_ROUTE"):
            values["debug_route"] = env["GATEWAY_DEBUG_ROUTE"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("config_dir", "rego_dir"):
            values[key] = pathlib.Path(values.get(key, getattr(cls, key)))
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.log_format not in ("plain", "json"):
            raise ValueError("GATEWAY_LOG_FORMAT must be plain or json")
        if self.log_level not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError("GATEWAY_LOG_LEVEL must be debug, info, warning, error or critical")
        if self.rate_limit_failure not in ("open", "closed"):
            raise ValueError("GATEWAY_RATE_LIMIT_FAILURE must be open or closed")
        if self.rate_limit_workers < 1:
            raise ValueError("GATEWAY_RATE_LIMIT_WORKERS must be >= 1")
        if self.max_body_bytes < 0 or self.max_header_count < 1:
            raise ValueError("GATEWAY_MAX_BODY_BYTES must be >= 0 and GATEWAY_MAX_HEADER_COUNT >= 1")
