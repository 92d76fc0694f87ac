"""The benchmark's gateway config: one open route and two secured ones, on one nginx upstream.

``/open``           no auth
``/jwt``            JWT (RS256, remote JWKS) + the seed's Rego policy + ``x-customer`` from ``sub``
``/introspection``  RFC 7662 introspection (cached) + the same policy on introspection claims
                    + ``x-customer`` from ``sub``
``/jwt-limited``    ``/jwt`` plus the usage plan ``bench`` (1,000,000 requests a second per client:
                    counted on every request, never trips), to price the limiter stage

Both secured routes belong to the API product ``petstore``; the policy allows a token whose
scope names it, exactly as the seed's ``oauth-scope-apiproduct-opa-cm.rego`` does.
"""

from __future__ import annotations

import pathlib
import shutil

from tests.support.servers import REPO_ROOT
from tests.support.servers import render_config

SEED_POLICY = REPO_ROOT / "rego" / "oauth-scope-apiproduct-opa-cm.rego"

# The seed's module reads input.state.jwtAccessToken; introspection claims live in
# input.state.introspection. Same rule otherwise.
INTROSPECTION_POLICY = """\
package bench.introspection
default allow = false
allow {
  filter_metadata := input.check_request.attributes.metadata_context.filter_metadata
  api_product_id := filter_metadata["io.solo.gloo.apimanagement"]["api_product_id"]
  scope := split(input.state.introspection.scope, " ")[_]
  api_product_id != ""
  scope == api_product_id
}
"""

GATEWAY_CONFIG = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: nginx, namespace: bench}
spec:
  static:
    hosts: [{addr: 127.0.0.1, port: {UPSTREAM_PORT}}]
---
apiVersion: v1
kind: Secret
metadata: {name: client-secret, namespace: bench}
stringData: {client-secret: secret}
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: root, namespace: bench}
spec:
  hosts: ['*']
  http:
  - name: all
    matchers: [{uri: {prefix: /}}]
    delegate:
      routeTables: [{labels: {bench: route}}]
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: open, namespace: bench, labels: {bench: route}}
spec:
  http:
  - name: open
    matchers: [{uri: {prefix: /open}}]
    forwardTo:
      destinations: [{ref: {name: nginx, namespace: bench}, kind: UPSTREAM}]
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: petstore, namespace: bench, labels: {bench: route}}
spec:
  portalMetadata: {apiProductId: petstore}
  http:
  - name: jwt
    labels: {auth: jwt}
    matchers: [{uri: {exact: /jwt}}]
    forwardTo:
      destinations: [{ref: {name: nginx, namespace: bench}, kind: UPSTREAM}]
  - name: jwt-limited
    labels: {auth: jwt, usagePlans: bench}
    matchers: [{uri: {prefix: /jwt-limited}}]
    forwardTo:
      destinations: [{ref: {name: nginx, namespace: bench}, kind: UPSTREAM}]
  - name: introspection
    labels: {auth: introspection}
    matchers: [{uri: {prefix: /introspection}}]
    forwardTo:
      destinations: [{ref: {name: nginx, namespace: bench}, kind: UPSTREAM}]
---
apiVersion: gateway-app/v1
kind: UsagePlan
metadata: {name: bench, namespace: bench}
spec:
  rateLimit: {requestsPerUnit: 1000000, unit: SECOND}
---
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {name: jwt, namespace: bench}
spec:
  applyToRoutes: [{route: {labels: {auth: jwt}}}]
  config:
    glooAuth:
      configs:
      - oauth2:
          accessTokenValidation:
            jwt:
              remoteJwks:
                url: http://127.0.0.1:{IDP_PORT}/.well-known/jwks.json
                refreshInterval: 5m
            claimsToHeaders: [{claim: sub, header: x-customer}]
      - opaAuth:
          modules: [{name: oauth-scope-apiproduct-opa-cm, namespace: bench}]
          query: "data.test.allow == true"
---
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {name: introspection, namespace: bench}
spec:
  applyToRoutes: [{route: {labels: {auth: introspection}}}]
  config:
    glooAuth:
      configs:
      - oauth2:
          accessTokenValidation:
            introspection:
              introspectionUrl: http://127.0.0.1:{IDP_PORT}/admin/oauth2/introspect
              clientId: my-client
              clientSecretRef: {name: client-secret, namespace: bench}
            claimsToHeaders: [{claim: sub, header: x-customer}]
      - opaAuth:
          modules: [{name: bench-introspection-scope, namespace: bench}]
          query: "data.bench.introspection.allow == true"
"""


def write_gateway_config(root: pathlib.Path, upstream_port: int, idp_port: int) -> tuple[pathlib.Path, pathlib.Path]:
    """``root/conf`` and ``root/rego`` for the benchmark gateway; returns both."""
    config_dir = render_config(GATEWAY_CONFIG, root / "conf", filename="bench.yaml",
                               UPSTREAM_PORT=upstream_port, IDP_PORT=idp_port)
    rego_dir = root / "rego"
    rego_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(SEED_POLICY, rego_dir / SEED_POLICY.name)
    (rego_dir / "bench-introspection-scope.rego").write_text(INTROSPECTION_POLICY)
    return config_dir, rego_dir


NGINX_CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
pid {ROOT}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {ROOT}/client_body;
    proxy_temp_path {ROOT}/proxy;
    fastcgi_temp_path {ROOT}/fastcgi;
    uwsgi_temp_path {ROOT}/uwsgi;
    scgi_temp_path {ROOT}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{PORT};
        location / {{
            default_type application/json;
            return 200 '{{"ok":true,"service":"bench-upstream"}}';
        }}
    }}
}}
"""


def write_nginx_config(root: pathlib.Path, port: int) -> pathlib.Path:
    """An nginx config of its own (never the system one): one worker answering a small JSON."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "nginx.conf"
    path.write_text(NGINX_CONFIG.format(ROOT=root, PORT=port))
    return path
