#!/usr/bin/env bash
# Stop the demo stack started by deploy/demo.sh (`make demo-stop`): SIGTERM each process
# group listed in .demo/pids, SIGKILL what is still alive after a grace period.
set -euo pipefail

cd "$(dirname "$0")/.."
PID_FILE=".demo/pids"
GRACE_SECONDS="${DEMO_STOP_GRACE:-10}"

if [[ ! -s "$PID_FILE" ]]; then
  echo "demo-stop: nothing to stop ($PID_FILE is missing or empty)"
  exit 0
fi

# ours PID: the PID still runs one of the demo's programs (guards against reused PIDs).
ours() {
  local cmdline
  cmdline=$({ tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null) || return 1
  [[ "$cmdline" == *gunicorn* || "$cmdline" == *tests.support.oauth_server* || "$cmdline" == *redis-server* ]]
}

# alive PGID: a process of that group runs and is not a zombie (demo.sh reaps its
# children only after this script).
alive() {
  # /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces, so cut it off first.
  awk -v group="$1" '{ sub(/^.*\) /, "") } $3 == group && $1 != "Z" { found = 1 } END { exit !found }' \
    /proc/[0-9]*/stat 2>/dev/null
}

signal_group() {
  kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null || true
}

pids=()
while read -r name pid; do
  [[ -n "${pid:-}" ]] || continue
  if ours "$pid"; then
    echo "demo-stop: stopping $name (pid $pid)"
    signal_group TERM "$pid"
    pids+=("$pid")
  fi
done <"$PID_FILE"

deadline=$((SECONDS + GRACE_SECONDS))
for pid in "${pids[@]}"; do
  while alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if alive "$pid"; then
    echo "demo-stop: pid $pid still alive after ${GRACE_SECONDS}s, killing"
    signal_group KILL "$pid"
  fi
done
rm -f "$PID_FILE"
