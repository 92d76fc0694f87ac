"""Load, validate and compile conf/ and rego/ into one immutable :class:`GatewayConfig`.

Every resource gets a status, ``ACCEPTED`` or ``REJECTED: <reason>``; a config with any
rejection is not served. Kinds: ``Secret``, ``Upstream``, ``ConfigMap`` (Rego modules in
``data``), ``AuthConfig``, ``VirtualService``, ``RouteTable``, ``ExtAuthPolicy``, Traefik's
``Middleware`` and ``IngressRoute`` (:mod:`gateway_app.traefik`); and the :data:`NOTICE_KINDS`
users copy from the Gloo guides, accepted with a one-line notice. References between
resources resolve as :mod:`.refs` says.
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import re
import time
import typing as t

from ..auth.registry import ValidatorRegistry
from ..describe import did_you_mean
from ..errors import ConfigError
from ..errors import GatewayError
from ..policy.loader import RegoModule
from ..policy.loader import load_rego_modules
from ..routing import Router
from ..routing import VirtualHost
from ..routing import domain_key
from ..traefik.ingress_routes import compile_ingress_route
from ..traefik.ingress_routes import ignored_fields_note
from ..traefik.ingress_routes import traefik_virtual_hosts
from ..traefik.middlewares import README_SECTION
from ..traefik.middlewares import TRAEFIK_GROUPS
from ..traefik.middlewares import parse_middleware
from .auth_configs import AuthBuildContext
from .auth_configs import parse_auth_pipeline
from .config_maps import parse_config_map
from .fields import Node
from .loader import RawResource
from .loader import config_files
from .loader import load_file
from .managed_headers import share_managed_headers
from .refs import RefTable
from .refs import resolve_module
from .route_tables import RouteTableCompiler
from .secrets import SecretStore
from .secrets import parse_secret
from .upstreams import parse_upstream
from .usage_plans import UsagePlans
from .usage_plans import check_settings
from .usage_plans import duplicate_name
from .usage_plans import parse_settings
from .usage_plans import parse_usage_plan
from .virtual_services import compile_virtual_service

_FIELD = re.compile(r"^(?P<field>[A-Za-z_][\w.\[\]-]*): (?P<reason>.*)$", re.DOTALL)

# Kinds from the Gloo guides that configure what this gateway does not need: accepted, with a notice.
NOTICE_KINDS = {
    "ExtAuthServer": "not used: auth runs in-process",
    "VirtualGateway": "not used: the gateway listens where gunicorn binds (--bind, GATEWAY_BIND)",
    "Workspace": "not used: every resource in the config directory is served",
    "WorkspaceSettings": "not used: every resource in the config directory is served",
}
KINDS = ("Secret", "Upstream", "ConfigMap", "AuthConfig", "ExtAuthPolicy", "VirtualService", "RouteTable",
         "UsagePlan", "UsagePlanSettings", "Middleware", "IngressRoute", *NOTICE_KINDS)


@dataclasses.dataclass
class ResourceStatus:
    """One resource's verdict, as ``validate`` prints it and the admin view serves it: accepted
    (``error`` is None) or rejected with a reason; ``line`` is 1-based."""

    kind: str
    namespace: str
    name: str
    file: str
    line: int | None = None
    error: str | None = None
    note: str | None = None           # what an accepted resource has that is ignored or not used

    @property
    def accepted(self) -> bool:
        """Whether the resource was accepted (a note does not reject it)."""
        return self.error is None

    @property
    def state(self) -> str:
        """``ACCEPTED``, ``ACCEPTED (note: ...)`` or ``REJECTED: reason``."""
        if not self.accepted:
            return f"REJECTED: {self.error}"
        return f"ACCEPTED (note: {self.note})" if self.note else "ACCEPTED"

    @property
    def where(self) -> str:
        """``file:line``, or the file alone when the line is unknown."""
        return f"{self.file}:{self.line}" if self.line else self.file

    def describe(self) -> str:
        """The ``validate`` line: ``Kind ns/name (file:line): ACCEPTED`` or ``REJECTED: reason``."""
        return f"{self.kind} {self.namespace}/{self.name} ({self.where}): {self.state}"

    def record(self) -> dict[str, t.Any]:
        """The status as JSON-ready keys: ``kind``, ``resource`` (ns/name), ``file``, ``line``,
        ``field`` (the field path the reason starts with, or None), ``reason``, ``state``
        (ACCEPTED or REJECTED), ``note`` and ``describe`` (the ``validate`` line)."""
        field, reason = None, self.error
        match = _FIELD.match(self.error or "")
        if match:
            field, reason = match.group("field"), match.group("reason")
        return {"kind": self.kind, "resource": f"{self.namespace}/{self.name}", "file": self.file,
                "line": self.line, "field": field, "reason": reason,
                "state": "ACCEPTED" if self.accepted else "REJECTED", "note": self.note,
                "describe": self.describe()}


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """One generation of compiled config; swapped whole on reload."""

    router: Router
    generation: int
    validators: tuple[t.Any, ...]
    statuses: tuple[ResourceStatus, ...]
    usage_plans: UsagePlans = UsagePlans()


@dataclasses.dataclass
class BuildResult:
    """What a build produced: the config (None when any resource was rejected) and every status."""

    config: GatewayConfig | None
    statuses: list[ResourceStatus]

    @property
    def errors(self) -> list[ResourceStatus]:
        """The rejected statuses, in the order the resources were read."""
        return [s for s in self.statuses if not s.accepted]


class _Builder:
    def __init__(self, config_dir: pathlib.Path, rego_dir: pathlib.Path, registry: ValidatorRegistry) -> None:
        self.config_dir = config_dir
        self.rego_dir = rego_dir
        self.registry = registry
        self.statuses: list[ResourceStatus] = []
        self.status_by_key: dict[tuple[str, str, str], ResourceStatus] = {}
        self.by_kind: dict[str, list[RawResource]] = {kind: [] for kind in KINDS}
        self.upstreams: RefTable[tuple[t.Any, ...]] = RefTable("Upstream")
        self.rego_modules: dict[str, RegoModule] = {}
        self.rego_rejected: dict[str, str] = {}
        self.configmap_modules: RefTable[list[RegoModule]] = RefTable("ConfigMap")
        self.auth_pipelines: RefTable[t.Any] = RefTable("AuthConfig")
        self.middlewares: RefTable[t.Any] = RefTable("Middleware")
        self.secret_rejections: dict[tuple[str, str], str] = {}
        self.ref_tables: dict[str, dict[tuple[str, str], str]] = {
            "Upstream": self.upstreams.rejected, "ConfigMap": self.configmap_modules.rejected,
            "AuthConfig": self.auth_pipelines.rejected, "Middleware": self.middlewares.rejected,
            "Secret": self.secret_rejections}
        self.secrets = SecretStore([])
        self.usage_plans = UsagePlans()

    # -- bookkeeping -----------------------------------------------------------
    def _status(self, resource: RawResource) -> ResourceStatus:
        status = ResourceStatus(resource.kind, resource.namespace, resource.name, resource.file, resource.line)
        self.statuses.append(status)
        self.status_by_key[resource.key] = status
        return status

    def _guard(self, resource: RawResource, action: t.Callable[[], t.Any]) -> t.Any:
        status = self._status(resource)
        try:
            return action()
        except ConfigError as e:
            self._reject(resource, e)
        except GatewayError as e:
            status.error = str(e)
        rejected = self.ref_tables.get(resource.kind)
        if rejected is not None:                 # references to it name this reason (see .refs)
            rejected[(resource.namespace, resource.name)] = status.error or "rejected"
        return None

    def _reject(self, resource: RawResource, error: ConfigError) -> None:
        status = self.status_by_key[resource.key]
        detail = error.detail if error.where.startswith(resource.file) else str(error)
        status.error = detail if status.error is None else f"{status.error}; {detail}"
        status.line = error.line or status.line

    def _reject_file(self, file: str, error: ConfigError) -> None:
        self.statuses.append(ResourceStatus("File", "-", pathlib.Path(file).name, file, error.line, error.detail))

    # -- stages ----------------------------------------------------------------
    def load(self) -> None:
        try:
            files = config_files(self.config_dir)
        except ConfigError as e:
            self.statuses.append(ResourceStatus("Directory", "-", str(self.config_dir), str(self.config_dir),
                                                None, e.detail))
            return
        seen: dict[tuple[str, str, str], RawResource] = {}
        for path in files:
            try:
                resources = load_file(path)
            except ConfigError as e:
                self._reject_file(str(path), e)
                continue
            for resource in resources:
                if resource.key in seen:
                    status = self._status(resource)
                    status.error = f"duplicate resource, first defined in {seen[resource.key].file}"
                    continue
                seen[resource.key] = resource
                if resource.kind not in self.by_kind:
                    status = self._status(resource)
                    status.error = unknown_kind(resource)
                    continue
                self.by_kind[resource.kind].append(resource)

    def load_rego(self) -> None:
        """Every module under the Rego directory; a broken one is rejected alone (file:line:column)."""
        try:
            loaded = load_rego_modules(self.rego_dir)
        except ConfigError as e:
            self.statuses.append(ResourceStatus("RegoModule", "-", self.rego_dir.name, str(self.rego_dir), None,
                                                f"{e.where}: {e.detail}" if e.where else e.detail))
            return
        self.rego_modules = loaded.modules
        for name, origin in loaded.origins.items():
            error = loaded.rejected.get(name)
            if error is None:
                self.statuses.append(ResourceStatus("RegoModule", "-", name, origin))
                continue
            reason = f"{error.where}: {error.detail}" if error.where else error.detail
            self.rego_rejected[name] = reason
            self.statuses.append(ResourceStatus("RegoModule", "-", name, origin, error.line, reason))

    def build_simple_kinds(self) -> None:
        secrets = [self._guard(r, lambda r=r: parse_secret(r)) for r in self.by_kind["Secret"]]
        self.secrets = SecretStore([s for s in secrets if s is not None], self.secret_rejections)
        for resource in self.by_kind["Upstream"]:
            targets = self._guard(resource, lambda r=resource: parse_upstream(r))
            if targets:
                self.upstreams[(resource.namespace, resource.name)] = targets
        for resource in self.by_kind["ConfigMap"]:
            modules = self._guard(resource, lambda r=resource: parse_config_map(r))
            if modules is not None:
                self.configmap_modules[(resource.namespace, resource.name)] = modules
        for kind, notice in NOTICE_KINDS.items():
            for resource in self.by_kind[kind]:
                self._status(resource).note = notice

    def build_usage_plans(self) -> None:
        plans: dict[str, t.Any] = {}
        defined: dict[str, RawResource] = {}
        for resource in self.by_kind["UsagePlan"]:
            def parse(r: RawResource = resource) -> t.Any:
                if r.name in defined:
                    raise duplicate_name(r, defined[r.name])
                return parse_usage_plan(r)
            plan = self._guard(resource, parse)
            defined.setdefault(resource.name, resource)
            if plan is not None:
                plans[plan.name] = plan
        settings = None
        for index, resource in enumerate(self.by_kind["UsagePlanSettings"]):
            def parse_one(r: RawResource = resource, first: bool = index == 0) -> t.Any:
                if not first:
                    raise ConfigError("only one UsagePlanSettings resource may exist", where=r.where, line=r.line)
                parsed = parse_settings(r)
                check_settings(r, parsed, defined)
                return parsed
            settings = self._guard(resource, parse_one) or settings
        self.usage_plans = UsagePlans(plans, settings) if settings else UsagePlans(plans)

    def resolve_modules(self, node: Node, namespace: str) -> list[RegoModule]:
        """``opaAuth.modules[{name, namespace}]`` of a resource in ``namespace`` (:func:`.refs.resolve_module`)."""
        refs = node.children("modules", required=True)
        if not refs:
            raise node.error("modules", "needs at least one module")
        modules: list[RegoModule] = []
        for ref in refs:
            modules.extend(resolve_module(ref, namespace, self.configmap_modules, self.rego_modules,
                                          self.rego_rejected, str(self.rego_dir)))
        return modules

    def build_auth(self, ctx: AuthBuildContext) -> None:
        for resource in self.by_kind["AuthConfig"]:
            def parse(r: RawResource = resource) -> t.Any:
                return parse_auth_pipeline(Node(r.body.get("spec"), r.where), f"{r.namespace}/{r.name}",
                                           r.namespace, ctx)
            pipeline = self._guard(resource, parse)
            if pipeline is not None:
                self.auth_pipelines[(resource.namespace, resource.name)] = pipeline
        for resource in self.by_kind["Middleware"]:
            middleware = self._guard(resource, lambda r=resource: parse_middleware(r, ctx))
            if middleware is not None:
                self.middlewares[(resource.namespace, resource.name)] = middleware

    def build_routes(self, ctx: AuthBuildContext) -> list[VirtualHost]:
        vhosts: list[VirtualHost] = []
        for resource in self.by_kind["VirtualService"]:
            vhost = self._guard(resource, lambda r=resource: compile_virtual_service(r, self.upstreams,
                                                                                    self.auth_pipelines))
            if vhost is not None:
                vhosts.append(vhost)
        compiler = RouteTableCompiler(self.by_kind["RouteTable"], self.by_kind["ExtAuthPolicy"], self.upstreams, ctx,
                                      usage_plans={r.name for r in self.by_kind["UsagePlan"]})
        vhosts.extend(compiler.compile(self._guard, self._reject))
        vhosts.extend(self._traefik_routes())
        return vhosts

    def _traefik_routes(self) -> list[VirtualHost]:
        routes = []
        for resource in self.by_kind["IngressRoute"]:
            routes.extend(self._guard(resource, lambda r=resource: compile_ingress_route(
                r, self.upstreams, self.middlewares)) or ())
            self.status_by_key[resource.key].note = ignored_fields_note(resource)
        try:
            return traefik_virtual_hosts(routes)
        except ConfigError as e:
            self.statuses.append(ResourceStatus("IngressRoute", "-", "(all)", e.where.partition(":")[0], None,
                                                str(e)))
            return []


def build_config(config_dir: pathlib.Path | str, rego_dir: pathlib.Path | str,
                 registry: ValidatorRegistry | None = None, generation: int = 1,
                 max_body_bytes: int | None = None) -> BuildResult:
    """Everything the server and ``validate`` need; ``config`` is None if anything was rejected.

    ``max_body_bytes`` (``GATEWAY_MAX_BODY_BYTES``; None: no limit) becomes the limit of every
    route without its own ``maxRequestBodyBytes``: each route then holds the one limit that
    applies to it (:func:`with_body_limit`).
    """
    builder = _Builder(pathlib.Path(config_dir), pathlib.Path(rego_dir), registry or ValidatorRegistry())
    builder.load()
    builder.load_rego()
    builder.build_simple_kinds()
    builder.build_usage_plans()
    ctx = AuthBuildContext(secrets=builder.secrets, modules=builder.resolve_modules, validators=builder.registry)
    builder.build_auth(ctx)
    vhosts = share_managed_headers(builder.build_routes(ctx))
    if any(not s.accepted for s in builder.statuses):
        return BuildResult(None, builder.statuses)
    vhosts = [with_body_limit(vhost, max_body_bytes) for vhost in vhosts]
    try:
        router = Router(vhosts)
        _check_domains(vhosts)
    except ConfigError as e:
        builder.statuses.append(ResourceStatus("RouteTable", "-", "(all)", str(config_dir), None, str(e)))
        return BuildResult(None, builder.statuses)
    builder.registry.retain(ctx.used_validator_keys)
    config = GatewayConfig(router=router, generation=generation, validators=tuple(builder.registry.all()),
                           statuses=tuple(builder.statuses), usage_plans=builder.usage_plans)
    return BuildResult(config, builder.statuses)


def unknown_kind(resource: RawResource) -> str:
    """Why a kind is refused: the nearest known kind, and for Traefik's CRDs the README section."""
    message = f"unknown kind {resource.kind!r}{did_you_mean(resource.kind, KINDS)} (known: {', '.join(KINDS)})"
    if resource.api_version.split("/")[0] in TRAEFIK_GROUPS:
        message += f"; Traefik resources other than Middleware and IngressRoute are not supported: see {README_SECTION}"
    return message


def with_body_limit(vhost: VirtualHost, default: int | None) -> VirtualHost:
    """The virtual host with ``default`` as the body limit of its routes that set none: a route's
    own ``maxRequestBodyBytes`` wins over the global limit, larger or smaller."""
    if default is None or all(route.max_body_bytes is not None for route in vhost.routes):
        return vhost
    routes = tuple(route if route.max_body_bytes is not None else dataclasses.replace(route, max_body_bytes=default)
                   for route in vhost.routes)
    return dataclasses.replace(vhost, routes=routes)
def reload_record(result: BuildResult, now: t.Callable[[], float] = time.time) -> dict[str, t.Any]:
    """What the admin view says of a reload: ``result`` (accepted/rejected), ``at`` (UTC ISO 8601),
    ``generation`` and, when rejected, the ``rejected`` resources' records."""
    at = datetime.datetime.fromtimestamp(now(), tz=datetime.timezone.utc).isoformat(timespec="milliseconds")
    record: dict[str, t.Any] = {"result": "accepted" if result.config is not None else "rejected", "at": at,
                                "generation": result.config.generation if result.config is not None else None}
    if result.config is None:
        record["rejected"] = [{k: v for k, v in status.record().items() if k != "describe"}
                              for status in result.errors]
    return record


def _check_domains(vhosts: list[VirtualHost]) -> None:
    owner: dict[str, str] = {}
    for vhost in vhosts:
        for domain in vhost.domains:
            key = domain_key(domain)                  # as hosts are matched: port and root dot ignored
            if key in owner:
                raise ConfigError(f"domain {domain!r} is claimed by both {owner[key]} and {vhost.name}")
            owner[key] = vhost.name


def load_config(config_dir: pathlib.Path | str, rego_dir: pathlib.Path | str,
                registry: ValidatorRegistry | None = None, generation: int = 1,
                max_body_bytes: int | None = None) -> GatewayConfig:
    """:func:`build_config`'s config, for callers that serve it (the gateway at start-up, tests).

    :raises ConfigError: listing every rejected resource, one ``validate`` line each.
    """
    result = build_config(config_dir, rego_dir, registry, generation, max_body_bytes)
    if result.config is None:
        lines = [s.describe() for s in result.errors]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return result.config
