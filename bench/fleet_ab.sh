#!/bin/bash
# The original's three benchmarks (regular, wrk, concurrent) against the default fleet, run
# from each source tree in turn: `bash bench/fleet_ab.sh /tmp/base . /tmp/base .` (a base in a
# `git worktree add --detach /tmp/base <rev>`). Each tree's fleet runs with that tree first on
# PYTHONPATH and this checkout's venv, on the default topology's ports (one fleet at a time),
# and is stopped by its PID (SIGTERM) before the next starts. Prints one line per benchmark.
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=$HERE/.venv/bin/python
trees=()
for tree in "$@"; do trees+=("$(cd "$tree" && pwd)"); done  # relative to where we started
for tree in "${trees[@]}"; do
  cd "$tree"
  log=$(mktemp)
  PYTHONPATH="$tree" "$HERE/.venv/bin/fleet" topology/fleet.yaml > "$log" 2>&1 &
  pid=$!
  for i in $(seq 1 120); do
    curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9000/health 2>/dev/null | grep -q 200 && break
    sleep 0.5
  done
  sleep 2
  echo "== $tree ($(git -C "$tree" rev-parse --short HEAD)) $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
  PYTHONPATH="$tree" $PY -m bench.benchmark regular --topology topology/fleet.yaml 2>&1 | grep -A1 "^name" | tail -1 | sed 's/^/regular: /'
  PYTHONPATH="$tree" $PY -m bench.run wrk --elb http://127.0.0.1:9000 2>&1 | grep -A1 "^name" | tail -1 | sed 's/^/wrk: /'
  PYTHONPATH="$tree" $PY -m bench.benchmark concurrent --topology topology/fleet.yaml 2>&1 | grep -A1 "^name" | tail -1 | sed 's/^/concurrent: /'
  kill -TERM $pid; wait $pid
  echo "fleet exit $? (log $log)"
done
