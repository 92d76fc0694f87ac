#!/usr/bin/env bash
# The local demo stack (`make demo`): the test OAuth server on 127.0.0.1:4444 and :4445
# (one process, shared state), httpbin on 127.0.0.1:8000 and the gateway on 127.0.0.1:8080
# with conf/ and rego/. Waits until each answers, prints the walkthrough's curl commands,
# then runs until Ctrl-C / SIGTERM and stops everything it started.
#
# DEMO_DETACH=1 starts everything, prints, and exits; the PIDs are in .demo/pids and
# deploy/demo-stop.sh (`make demo-stop`) stops them. Logs: .demo/*.log.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="$VENV/bin/python"
GUNICORN="$VENV/bin/gunicorn"
DEMO_DIR=".demo"
PID_FILE="$DEMO_DIR/pids"
IDP_PUBLIC_PORT=4444
IDP_ADMIN_PORT=4445
UPSTREAM_PORT=8000
GATEWAY_PORT=8080
REDIS_PORT=6390            # usage-plan counters shared by the gateway's workers (when redis-server exists)
START_TIMEOUT="${DEMO_START_TIMEOUT:-30}"

for tool in "$PYTHON" "$GUNICORN"; do
  if [[ ! -x "$tool" ]]; then
    echo "demo: $tool not found; create the venv first (make demo does: pip install -e '.[test]')" >&2
    exit 1
  fi
done
if [[ -s "$PID_FILE" ]]; then
  echo "demo: $PID_FILE exists; a detached demo may be running (stop it with deploy/demo-stop.sh)" >&2
  exit 1
fi

# Children should not inherit proxy settings: everything here talks to 127.0.0.1.
unset http_proxy https_proxy all_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$DEMO_DIR"
CHILDREN=()

port_is_free() {
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
with socket.socket() as sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
EOF
}

# answers URL [ACCEPT_404]: exit 0 if URL answers 2xx (or 404 when ACCEPT_404=1).
answers() {
  "$PYTHON" - "$1" "${2:-0}" <<'EOF'
import sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    status = opener.open(sys.argv[1], timeout=2).status
except urllib.error.HTTPError as error:
    status = error.code
except OSError:
    sys.exit(1)
sys.exit(0 if 200 <= status < 300 or (status == 404 and sys.argv[2] == "1") else 1)
EOF
}

# start NAME COMMAND...: run COMMAND in the background (own process group), log to .demo/NAME.log.
start() {
  local name="$1"
  shift
  echo "demo: starting $name (log $DEMO_DIR/$name.log)"
  setsid "$@" >"$DEMO_DIR/$name.log" 2>&1 </dev/null &
  local pid=$!
  CHILDREN+=("$pid")
  echo "$name $pid" >>"$PID_FILE"
}

# wait_for NAME PID URL [ACCEPT_404]
wait_for() {
  local name="$1" pid="$2" url="$3" accept_404="${4:-0}"
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers "$url" "$accept_404"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "demo: $name exited; last lines of $DEMO_DIR/$name.log:" >&2
      tail -n 30 "$DEMO_DIR/$name.log" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "demo: $name did not answer $url within ${START_TIMEOUT}s; see $DEMO_DIR/$name.log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "demo: $name is up ($url)"
}

stop_children() {
  trap - INT TERM EXIT
  ((${#CHILDREN[@]})) || return 0
  echo
  echo "demo: stopping ${#CHILDREN[@]} processes"
  "$(dirname "$0")/demo-stop.sh" >/dev/null || true
  CHILDREN=()
}

gateway_command() {
  local command=("$GUNICORN")
  if [[ -f conf/gunicorn.conf.py ]]; then
    command+=(-c conf/gunicorn.conf.py)
  else
    command+=(-k gthread -w 2 --threads 4)
  fi
  command+=(--no-control-socket -b "127.0.0.1:$GATEWAY_PORT" wsgi:app)
  printf '%s\n' "${command[@]}"
}

print_walkthrough() {
  cat <<EOF

The demo stack is up:
  OAuth server  http://127.0.0.1:$IDP_PUBLIC_PORT (public) and http://127.0.0.1:$IDP_ADMIN_PORT (admin), one process
  httpbin       http://127.0.0.1:$UPSTREAM_PORT
  gateway       http://localhost:$GATEWAY_PORT  (config conf/, policies rego/)
  logs          $DEMO_DIR/*.log

Try the walkthrough:

  # 1. a token for my-client (client_credentials)
  curl -s -X POST http://127.0.0.1:$IDP_PUBLIC_PORT/oauth2/token -u my-client:secret -d grant_type=client_credentials
  ACCESS_TOKEN=\$(curl -s -X POST http://127.0.0.1:$IDP_PUBLIC_PORT/oauth2/token -u my-client:secret \\
    -d grant_type=client_credentials | $PYTHON -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

  # 2. what the gateway will learn about it (this server asks for client authentication)
  curl -s -X POST http://127.0.0.1:$IDP_ADMIN_PORT/admin/oauth2/introspect -u my-client:secret -d "token=\$ACCESS_TOKEN"

  # 3. no token: 403
  curl -i http://localhost:$GATEWAY_PORT/headers
  # 4. an invalid token: 403
  curl -i http://localhost:$GATEWAY_PORT/headers -H "Authorization: Bearer qwertyuio23456789"
  # 5. the real token: 200, and httpbin echoes the headers it received
  curl -i http://localhost:$GATEWAY_PORT/headers -H "Authorization: Bearer \$ACCESS_TOKEN"

  # JWT clients (RS256 / ES256) for the JWT demo routes; keys at http://127.0.0.1:$IDP_PUBLIC_PORT/.well-known/jwks.json
  curl -s -X POST http://127.0.0.1:$IDP_PUBLIC_PORT/oauth2/token -u jwt-client:jwt-secret -d grant_type=client_credentials -d scope=petstore

EOF
}

main() {
  # A broken config is listed once (one REJECTED line per resource) before anything starts.
  if ! "$PYTHON" -m gateway_app validate --config-dir conf --rego-dir rego >"$DEMO_DIR/validate.log" 2>&1; then
    echo "demo: the config in conf/ and rego/ is invalid; nothing was started:" >&2
    grep -v ': ACCEPTED' "$DEMO_DIR/validate.log" >&2
    exit 1
  fi
  for port in "$IDP_PUBLIC_PORT" "$IDP_ADMIN_PORT" "$UPSTREAM_PORT" "$GATEWAY_PORT"; do
    if ! port_is_free "$port"; then
      echo "demo: port $port on 127.0.0.1 is already in use" >&2
      exit 1
    fi
  done
  : >"$PID_FILE"
  if [[ "${DEMO_DETACH:-0}" != "1" ]]; then
    trap 'stop_children; exit 130' INT
    trap 'stop_children; exit 143' TERM
    trap 'stop_children' EXIT
  else
    trap 'status=$?; ((status == 0)) || stop_children' EXIT
  fi

  start oauth "$PYTHON" -m tests.support.oauth_server --host 127.0.0.1 \
    --port "$IDP_PUBLIC_PORT" --port "$IDP_ADMIN_PORT"
  local oauth_pid=$!
  start httpbin "$GUNICORN" -k gthread -w 2 --threads 4 --no-control-socket -b "127.0.0.1:$UPSTREAM_PORT" httpbin:app
  local httpbin_pid=$!
  # Usage plans count exactly when the workers share Redis; without redis-server, one worker does.
  local plan_env=(GATEWAY_WORKERS=1)
  if command -v redis-server >/dev/null && port_is_free "$REDIS_PORT"; then
    start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$PWD/$DEMO_DIR"
    plan_env=("GATEWAY_RATE_LIMIT_URL=redis://127.0.0.1:$REDIS_PORT/0")
  fi
  local gateway_argv=()
  mapfile -t gateway_argv < <(gateway_command)
  export "${plan_env[@]}"
  GATEWAY_CONFIG_DIR="$PWD/conf" GATEWAY_REGO_DIR="$PWD/rego" start gateway "${gateway_argv[@]}"
  local gateway_pid=$!

  wait_for oauth "$oauth_pid" "http://127.0.0.1:$IDP_PUBLIC_PORT/.well-known/openid-configuration"
  wait_for oauth "$oauth_pid" "http://127.0.0.1:$IDP_ADMIN_PORT/.well-known/jwks.json"
  wait_for httpbin "$httpbin_pid" "http://127.0.0.1:$UPSTREAM_PORT/get"
  wait_for gateway "$gateway_pid" "http://127.0.0.1:$GATEWAY_PORT/__gateway/health/live" 1
  print_walkthrough

  if [[ "${DEMO_DETACH:-0}" == "1" ]]; then
    echo "Detached. PIDs are in $PID_FILE; stop with: make demo-stop (deploy/demo-stop.sh)"
    return 0
  fi
  echo "Press Ctrl-C to stop."
  local status=0
  wait -n "${CHILDREN[@]}" || status=$?
  echo "demo: a process exited (status $status); see $DEMO_DIR/*.log" >&2
  return 1
}

main "$@"
