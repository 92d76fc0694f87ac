#!/usr/bin/env bash
# The gateway benchmark (issue 7): bash bench/run.sh [--memory] [--rounds N] [--duration S] ...
# Installs nginx, wrk and redis-server from Debian's packages when missing, runs bench/run.py
# with the project's venv, and writes the report to bench/RESULTS.md (not with --memory).
# Every process the run starts is stopped on exit, even on Ctrl-C or an error.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    echo "# installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x "$PY" ] || { echo "no venv at $PY: run make venv first" >&2; exit 1; }

export BENCH_PID_FILE
BENCH_PID_FILE=$(mktemp -t gateway-bench-pids.XXXXXX)
stop_all() {
    # bench/run.py stops its servers itself; this catches whatever an interrupted run left.
    while read -r pgid; do
        kill -TERM -- "-$pgid" 2>/dev/null || true
    done < "$BENCH_PID_FILE"
    sleep 0.5
    while read -r pgid; do
        kill -KILL -- "-$pgid" 2>/dev/null || true
    done < "$BENCH_PID_FILE"
    rm -f "$BENCH_PID_FILE"
}
trap stop_all EXIT INT TERM

args=("$@")
memory=false
for arg in "$@"; do [ "$arg" = "--memory" ] && memory=true; done
if ! $memory; then
    args+=(--results bench/RESULTS.md)
fi
"$PY" -m bench.run "${args[@]}"
