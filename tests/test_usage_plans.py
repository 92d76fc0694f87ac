"""Usage plans through the Flask test client: who is counted, which plan, the answers, config errors, reload.

Counters are per process here (no Redis); tests/e2e/test_usage_plans_e2e.py shares them through Redis.
"""

from __future__ import annotations

import os
import pathlib
import time
import typing as t

import pytest

from werkzeug.test import EnvironBuilder

from gateway_app.cache import hash_key
from gateway_app.config.build import build_config
from gateway_app.preflight import PREFLIGHT
from gateway_app.reload import Watcher
from tests.support.servers import free_port
from tests.factories import bearer

UPSTREAM = "http://upstream.test:8000"
IDP = "http://idp-plans.test/introspect"

BASE = """
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: backend, namespace: apps}
spec:
  static:
    hosts: [{addr: upstream.test, port: 8000}]
---
apiVersion: v1
kind: Secret
metadata: {name: client-secret, namespace: apps}
stringData: {client-secret: secret}
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: root, namespace: apps}
spec:
  hosts: ['*']
  http:
  - name: products
    delegate: {routeTables: [{labels: {portal: products}}]}
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: pets, namespace: apps, labels: {portal: products}}
spec:
  portalMetadata: {apiProductId: petstore}
  http:
  - name: pets-api
    labels: {usagePlans: bronze}
    matchers: [{uri: {prefix: /pets}}]
    forwardTo: {destinations: [{ref: {name: backend, namespace: apps}}]}
  - name: open
    matchers: [{uri: {prefix: /open}}]
    forwardTo: {destinations: [{ref: {name: backend, namespace: apps}}]}
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: tracks, namespace: apps, labels: {portal: products}}
spec:
  portalMetadata: {apiProductId: tracks}
  http:
  - name: tracks-api
    labels: {usagePlans: bronze}
    matchers: [{uri: {prefix: /tracks}}]
    forwardTo: {destinations: [{ref: {name: backend, namespace: apps}}]}
---
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {name: oauth, namespace: apps}
spec:
  applyToRoutes: [{route: {labels: {usagePlans: bronze}}}]
  config:
    glooAuth:
      configs:
      - oauth2:
          accessTokenValidation:
            introspection:
              introspectionUrl: http://idp-plans.test/introspect
              clientId: gateway
              clientSecretRef: {name: client-secret, namespace: apps}
              retries: 0
      - opaAuth:
          modules: [{name: plans}]
          query: "data.plans.decision"
"""

PLANS = """
apiVersion: gateway-app/v1
kind: UsagePlan
metadata: {name: bronze, namespace: apps}
spec:
  rateLimit: {requestsPerUnit: 3, unit: MINUTE}
  %(bronze_extra)s
---
apiVersion: gateway-app/v1
kind: UsagePlan
metadata: {name: gold, namespace: apps}
spec:
  rateLimit: {limit: 5, period: 1m}
  %(gold_extra)s
"""

# Tokens with client "vip" get the gold plan through the decision's dynamic metadata.
POLICY = """
package plans

default decision = {"allowed": true}

decision = {"allowed": true, "dynamic_metadata": {"usagePlan": "gold"}} {
    input.state.introspection.client_id == "vip"
}
"""


@pytest.fixture
def plans_app(make_app, requests_mock) -> t.Callable[..., t.Any]:
    def factory(plans: str = PLANS, bronze_extra: str = "", gold_extra: str = "", extra: t.Mapping[str, str] = (),
                **settings: t.Any) -> t.Any:
        requests_mock.get(f"{UPSTREAM}/pets", json={"ok": True})
        requests_mock.get(f"{UPSTREAM}/tracks", json={"ok": True})
        requests_mock.get(f"{UPSTREAM}/open", json={"ok": True})
        requests_mock.post(IDP, json=_introspection)
        conf = {"base.yaml": BASE, "plans.yaml": plans % {"bronze_extra": bronze_extra, "gold_extra": gold_extra},
                **dict(extra)}
        return make_app(conf, rego={"plans.rego": POLICY}, **settings)
    return factory


def _introspection(request: t.Any, context: t.Any) -> dict[str, t.Any]:
    """Token ``<client>[.<anything>]`` belongs to ``<client>``; ``sub-only.<x>`` has no client_id."""
    token = dict(p.split("=", 1) for p in request.text.split("&"))["token"]
    client = token.split(".")[0]
    claims = {"active": True, "sub": f"user-of-{client}", "exp": int(time.time()) + 3600, "scope": "x"}
    if client != "sub-only":
        claims["client_id"] = client
    if client == "planned":
        claims["plan"] = "gold"
        claims["scope"] = "x plan:gold"
    return claims


def get(app: t.Any, path: str = "/pets", token: str | None = "alice", **headers: str) -> t.Any:
    if token is not None:
        headers.update(bearer(token))
    return app.test_client().get(path, headers=headers)


def statuses(app: t.Any, count: int, path: str = "/pets", token: str | None = "alice", **headers: str) -> list[int]:
    return [get(app, path, token, **headers).status_code for _ in range(count)]


def test_a_consumer_gets_exactly_the_plan_budget_then_429_with_retry_after_and_ratelimit_fields(plans_app,
                                                                                                 requests_mock):
    app = plans_app()
    allowed = [get(app) for _ in range(3)]
    refused = get(app)

    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in allowed] == ["2", "1", "0"]
    assert allowed[0].headers["RateLimit-Policy"] == '"bronze";q=3;w=60'
    assert allowed[0].headers["RateLimit"] == '"bronze";r=2;t=20'
    assert allowed[0].headers["X-RateLimit-Limit"] == "3"
    assert refused.status_code == 429
    assert refused.json["error"] == "rate_limited"
    assert refused.headers["Retry-After"] == "20"
    assert refused.headers["RateLimit"] == '"bronze";r=0;t=20'
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.headers["X-RateLimit-Reset"] == "20"
    assert sum(1 for r in requests_mock.request_history if r.url.startswith(UPSTREAM)) == 3


def test_different_consumers_do_not_share_a_budget(plans_app):
    app = plans_app()
    assert statuses(app, 4, token="alice") == [200, 200, 200, 429]
    assert statuses(app, 1, token="bob") == [200]


def test_the_consumer_is_the_client_id_so_two_tokens_of_one_client_share_a_budget(plans_app):
    app = plans_app()
    assert [get(app, token=f"alice.{n}").status_code for n in range(4)] == [200, 200, 200, 429]


def test_without_client_id_the_consumer_is_sub(plans_app):
    app = plans_app()
    assert [get(app, token=f"sub-only.{n}").status_code for n in range(4)] == [200, 200, 200, 429]


def test_a_configured_consumer_claim_replaces_client_id(plans_app):
    settings = "apiVersion: gateway-app/v1\nkind: UsagePlanSettings\nmetadata: {name: s}\nspec: {consumerClaim: scope}\n"
    app = plans_app(extra={"settings.yaml": settings})
    assert statuses(app, 2, token="alice") + statuses(app, 2, token="bob") == [200, 200, 200, 429]


def test_forged_client_headers_do_not_change_the_consumer(plans_app):
    app = plans_app()
    statuses(app, 3, token="alice")
    refused = get(app, token="alice", **{"X-Client-Id": "bob", "X-Forwarded-For": "10.9.9.9", "X-Consumer": "bob"})
    assert refused.status_code == 429


def test_budgets_are_per_api_product_by_default(plans_app):
    app = plans_app()
    assert statuses(app, 4, "/pets") == [200, 200, 200, 429]
    assert statuses(app, 1, "/tracks") == [200]


def test_scope_global_shares_one_budget_across_products(plans_app):
    app = plans_app(bronze_extra="scope: global")
    assert statuses(app, 2, "/pets") + statuses(app, 2, "/tracks") == [200, 200, 200, 429]


def test_a_plan_chosen_by_rego_dynamic_metadata_is_applied(plans_app, access_records):
    app = plans_app()
    responses = [get(app, token="vip") for _ in range(6)]

    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert responses[0].headers["RateLimit-Policy"] == '"gold";q=5;w=60'
    fields = [r.fields for r in access_records]
    assert {f["usage_plan"] for f in fields} == {"gold"}
    assert [f["rate_limit"] for f in fields] == ["allowed"] * 5 + ["limited"]


def test_a_plan_claim_in_the_token_chooses_the_plan(plans_app):
    settings = "apiVersion: gateway-app/v1\nkind: UsagePlanSettings\nmetadata: {name: s}\nspec: {planClaim: plan}\n"
    app = plans_app(extra={"settings.yaml": settings})
    assert get(app, token="planned").headers["RateLimit-Policy"] == '"gold";q=5;w=60'


def test_a_plan_scope_in_the_token_chooses_the_plan(plans_app):
    settings = ("apiVersion: gateway-app/v1\nkind: UsagePlanSettings\nmetadata: {name: s}\n"
                "spec: {planScopePrefix: 'plan:'}\n")
    app = plans_app(extra={"settings.yaml": settings})
    assert get(app, token="planned").headers["RateLimit-Policy"] == '"gold";q=5;w=60'


def test_an_undefined_plan_named_by_the_policy_falls_back_to_the_route_plan(plans_app):
    plans = PLANS.replace("name: gold", "name: platinum")
    app = plans_app(plans=plans)
    assert get(app, token="vip").headers["RateLimit-Policy"] == '"bronze";q=3;w=60'


def test_quota_exhaustion_answers_429_quota_exceeded_with_both_policies(plans_app):
    app = plans_app(bronze_extra="quota: {limit: 2, period: 24h}")
    first = get(app)
    get(app)
    refused = get(app)

    assert first.headers["RateLimit-Policy"] == '"bronze";q=3;w=60, "bronze-quota";q=2;w=86400'
    assert first.headers["RateLimit"].startswith('"bronze-quota";r=1;t=')
    assert refused.status_code == 429
    assert refused.json["error"] == "quota_exceeded"
    assert int(refused.headers["Retry-After"]) == int(refused.headers["X-RateLimit-Reset"]) > 0


def test_requests_without_identity_are_not_limited_unless_an_anonymous_plan_is_set(plans_app):
    assert statuses(plans_app(), 5, "/open", token=None) == [200] * 5


def test_the_anonymous_plan_counts_per_client_ip(plans_app):
    settings = "apiVersion: gateway-app/v1\nkind: UsagePlanSettings\nmetadata: {name: s}\nspec: {anonymousPlan: bronze}\n"
    app = plans_app(extra={"settings.yaml": settings})
    client = app.test_client()

    def from_ip(ip: str, **headers: str) -> int:
        return client.get("/open", headers=headers, environ_base={"REMOTE_ADDR": ip}).status_code

    assert [from_ip("10.0.0.1") for _ in range(4)] == [200, 200, 200, 429]
    assert from_ip("10.0.0.2", **{"X-Forwarded-For": "10.0.0.1"}) == 200    # an untrusted peer cannot pose


def test_behind_a_trusted_proxy_the_anonymous_plan_counts_the_forwarded_client(plans_app):
    settings = "apiVersion: gateway-app/v1\nkind: UsagePlanSettings\nmetadata: {name: s}\nspec: {anonymousPlan: bronze}\n"
    app = plans_app(extra={"settings.yaml": settings}, trusted_proxies=frozenset({"10.1.0.0/16"}))
    client = app.test_client()

    def via_proxy(client_ip: str) -> int:
        return client.get("/open", headers={"X-Forwarded-For": f"{client_ip}, 10.1.0.7"},
                          environ_base={"REMOTE_ADDR": "10.1.0.5"}).status_code

    assert [via_proxy("192.0.2.1") for _ in range(4)] == [200, 200, 200, 429]
    assert via_proxy("192.0.2.2") == 200


def test_the_access_record_carries_plan_consumer_hash_and_outcome_never_the_client_id(plans_app, access_records):
    app = plans_app()
    statuses(app, 4, token="alice-secret-client")
    fields = [r.fields for r in access_records]

    assert [f["rate_limit"] for f in fields] == ["allowed"] * 3 + ["limited"]
    assert [f["status"] for f in fields] == [200, 200, 200, 429]
    assert {f["consumer"] for f in fields} == {hash_key("client:alice-secret-client")[:16]}
    assert {f["usage_plan"] for f in fields} == {"bronze"}


def test_metrics_count_by_plan_and_outcome(plans_app):
    app = plans_app()
    statuses(app, 4, token="metrics-client")
    text = app.test_client().get("/__gateway/metrics").get_data(as_text=True)

    lines = [line for line in text.splitlines() if line.startswith("gateway_usage_plan_requests_total")]
    assert any('outcome="limited"' in line and 'plan="bronze"' in line for line in lines)
    assert "metrics-client" not in text


def test_a_reload_that_changes_one_plan_applies_at_once_and_keeps_the_other_plans_counters(plans_app, tmp_path):
    app = plans_app()
    gateway = app.extensions["gateway"]
    assert statuses(app, 3, token="alice") == [200, 200, 200]          # bronze spent
    assert statuses(app, 5, token="vip") == [200] * 5                  # gold spent

    plans = tmp_path / "conf" / "plans.yaml"
    text = plans.read_text().replace("requestsPerUnit: 3", "requestsPerUnit: 10")
    _write(plans, text)
    assert Watcher(gateway).check() is True or gateway.reload().config is not None

    assert statuses(app, 8, token="alice") == [200] * 7 + [429]       # 10 a minute now, 3 already used
    assert get(app, token="vip").status_code == 429                    # gold's counter was kept


def _write(path: pathlib.Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(text)
    stamp = max(time.time_ns(), before + 1_000_000)
    os.utime(path, ns=(stamp, stamp))


# --- config errors ----------------------------------------------------------------------------

def _errors(tmp_path: pathlib.Path, files: t.Mapping[str, str]) -> list[str]:
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    for name, text in files.items():
        (conf / name).write_text(text)
    rego = tmp_path / "rego"
    rego.mkdir(exist_ok=True)
    (rego / "plans.rego").write_text(POLICY)
    result = build_config(conf, rego)
    return [s.describe() for s in result.errors]


def _plan(rate: str, extra: str = "") -> str:
    return PLANS % {"bronze_extra": extra, "gold_extra": ""} if rate is None else (
        "apiVersion: gateway-app/v1\nkind: UsagePlan\nmetadata: {name: bronze, namespace: apps}\n"
        f"spec:\n  rateLimit: {rate}\n{extra}")


@pytest.mark.parametrize("rate, extra, message", [
    ("{requestsPerUnit: 5, unit: FORTNIGHT}", "", "plans.yaml:5): REJECTED: spec.rateLimit.unit: unknown unit 'FORTNIGHT'"),
    ("{requestsPerUnit: 0, unit: MINUTE}", "", "plans.yaml:5): REJECTED: spec.rateLimit.requestsPerUnit: must be at least 1"),
    ("{limit: -3, period: 1m}", "", "REJECTED: spec.rateLimit.limit: must be at least 1"),
    ("{limit: 3, period: 0s}", "", "REJECTED: spec.rateLimit.period: must be longer than 0s"),
    ("{limit: 3, period: soon}", "", "REJECTED: spec.rateLimit.period: expected a duration"),
    ("{limit: 3}", "", "REJECTED: spec.rateLimit: missing required field 'period'"),
    ("{limit: 3, period: 1m, requestsPerUnit: 3}", "", "only one of requestsPerUnit, limit may be set"),
    ("{requestsPerUnit: 3, unit: MINUTE}", "  quota: {limit: 0, period: 24h}\n",
     "REJECTED: spec.quota.limit: must be at least 1"),
    ("{requestsPerUnit: 3, unit: MINUTE}", "  scope: everywhere\n", "REJECTED: spec.scope: must be one of"),
    ("{requestsPerUnit: 3, unit: MINUTE, burst: 9}", "", "REJECTED: spec.rateLimit.burst: unknown field"),
], ids=["unknown unit", "zero requests per unit", "negative limit", "zero period", "unreadable period",
        "limit without period", "both spellings", "zero quota", "unknown scope", "unknown field"])
def test_bad_plans_are_rejected_with_file_and_line(tmp_path, rate, extra, message):
    errors = _errors(tmp_path, {"base.yaml": BASE, "plans.yaml": _plan(rate, extra)})
    assert any(message in line and "UsagePlan apps/bronze" in line for line in errors), errors


def test_a_route_label_naming_an_undefined_plan_is_rejected_at_the_label_line(tmp_path):
    errors = _errors(tmp_path, {"base.yaml": BASE, "plans.yaml": PLANS.replace("name: bronze", "name: silver")
                                % {"bronze_extra": "", "gold_extra": ""}})
    assert any("RouteTable apps/pets (" in line and "base.yaml:30" in line
               and "labels.usagePlans: UsagePlan 'bronze' is not defined" in line for line in errors), errors


def test_an_anonymous_plan_that_is_not_defined_is_rejected(tmp_path):
    settings = "apiVersion: gateway-app/v1\nkind: UsagePlanSettings\nmetadata: {name: s}\nspec:\n  anonymousPlan: nope\n"
    errors = _errors(tmp_path, {"base.yaml": BASE, "plans.yaml": PLANS % {"bronze_extra": "", "gold_extra": ""},
                                "settings.yaml": settings})
    assert any("UsagePlanSettings default/s (" in line and "settings.yaml:5" in line
               and "spec.anonymousPlan: UsagePlan 'nope' is not defined" in line for line in errors), errors


def test_a_plan_name_defined_twice_is_rejected(tmp_path):
    plans = PLANS % {"bronze_extra": "", "gold_extra": ""}
    twice = plans + "---\n" + plans.split("---")[0].replace("namespace: apps", "namespace: other")
    errors = _errors(tmp_path, {"base.yaml": BASE, "plans.yaml": twice})
    assert any("UsagePlan other/bronze" in line and "already defined" in line for line in errors), errors


@pytest.mark.parametrize("mode, expected", [("closed", [503, 503]), ("open", [200, 200])],
                         ids=["fail closed answers 503", "fail open keeps per-worker limits"])
def test_an_unreachable_redis_follows_the_configured_failure_mode(plans_app, mode, expected):
    app = plans_app(rate_limit_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_failure=mode)
    responses = [get(app) for _ in range(2)]

    assert [r.status_code for r in responses] == expected
    if mode == "closed":
        assert responses[0].json["error"] == "rate_limit_unavailable"


def head_only(app: t.Any, token: str = "alice") -> t.Any:
    """The decision on a head whose body has not arrived, as the worker asks it (gateway_app.preflight)."""
    environ = EnvironBuilder(path="/pets", method="POST", headers={"Host": "api.example.com", **bearer(token)},
                             ).get_environ()
    environ["CONTENT_LENGTH"] = "1000"
    environ[PREFLIGHT] = True
    answer: list[t.Any] = []
    chunks = app(environ, lambda status, headers, exc_info=None: answer.extend([status, dict(headers)]))
    body = b"".join(chunks)
    getattr(chunks, "close", lambda: None)()
    return answer[0], answer[1], body, environ


def test_a_head_is_decided_without_counting_and_refused_429_once_the_plan_is_spent(plans_app, requests_mock):
    """Over its plan, an upload is refused on its head, before its body (Envoy's rate-limit filter
    decides on the headers); a decision on a head counts nothing: the request counts when whole."""
    app = plans_app()
    requests_mock.post(f"{UPSTREAM}/pets", json={"ok": True})
    assert [head_only(app)[0][:3] for _ in range(5)] == ["204"] * 5
    assert statuses(app, 4) == [200, 200, 200, 429]
    status, headers, body, environ = head_only(app)
    assert status.startswith("429") and b"rate_limited" in body and environ[PREFLIGHT] is True
    assert headers["Retry-After"] == "20" and headers["X-RateLimit-Remaining"] == "0"
    assert head_only(app, token="bob")[0].startswith("204")
