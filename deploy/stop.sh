#!/usr/bin/env bash
# Take this machine out of the swarm: stop its Ray node (and, on the head, Redis) and let
# a Mac sleep again. The journal stays on disk; `deploy/head.sh` starts it again.
#
#   deploy/stop.sh [--state DIR] [--temp-dir DIR] [--keep-redis]
#
# Without a temp dir (given, or recorded by head.sh/join.sh in the state folder) it runs
# `ray stop`, which stops every Ray process of this machine. With one, it stops only the
# Ray node that runs under that folder (several nodes on one host: tests, a big Linux box).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

STATE="$DEFAULT_STATE"
TEMP_DIR=""
KEEP_REDIS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --state) STATE="$2"; shift 2 ;;
    --temp-dir) TEMP_DIR="$2"; shift 2 ;;
    --keep-redis) KEEP_REDIS=1; shift ;;
    -h|--help) usage 0 ;;
    *) printf 'error: unknown option %s\n' "$1" >&2; usage 2 ;;
  esac
done
if [ -z "$TEMP_DIR" ]; then
  for f in "$STATE/node.env" "$STATE/head.env"; do
    [ -f "$f" ] && TEMP_DIR="$(sed -n 's/^TEMP_DIR=//p' "$f")"
    [ -n "$TEMP_DIR" ] && break
  done
fi

# ---- keep-awake first (it waits on the raylet anyway)
if [ -s "$STATE/caffeinate.pid" ]; then
  kill "$(cat "$STATE/caffeinate.pid")" 2>/dev/null || true
  rm -f "$STATE/caffeinate.pid"
fi

# ---- Ray
if [ -n "$TEMP_DIR" ]; then
  stop_ray_node "$TEMP_DIR"
else
  find_python
  "$RAY" stop >/dev/null 2>&1 || true
  say "stopped Ray on this machine (ray stop)"
fi

# ---- Redis (head only): SIGTERM makes it fsync the append-only file and exit
PIDFILE="$STATE/redis/redis.pid"
if [ "$KEEP_REDIS" = 0 ] && [ -s "$PIDFILE" ]; then
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && die "redis-server (pid $pid) did not stop within 10 s" "kill $pid by hand"
    say "stopped Redis (pid $pid); the journal stays in $STATE/redis"
  fi
  rm -f "$PIDFILE"
fi
