#!/usr/bin/env bash
# The swarm's head machine: Redis for the journal (password, append-only, LAN address
# only) and the Ray head (token auth). Prints what to run on each Mac that joins and
# the `swarm run` command. Run it from a checkout of this repository, after `uv sync`.
#
#   deploy/head.sh [--bind ADDR] [--redis-port 6380] [--ray-port 6379] [--state DIR]
#                  [--no-worker] [--num-cpus N] [--temp-dir DIR] [--block] [-- RAY START ARGS...]
#
# The head is also a worker (one `mlx` resource) unless --no-worker. --block keeps Ray
# in the foreground (for launchd/systemd). Safe to run again: a Redis it started is reused.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

BIND=""                         # the LAN address Redis and Ray listen on (default: detected)
REDIS_PORT=$DEFAULT_REDIS_PORT
RAY_PORT=$DEFAULT_RAY_PORT
STATE="$DEFAULT_STATE"
WORKER=1                        # the head runs trials too
NUM_CPUS=1                      # Ray CPU slots: the worker actor takes none, the coordinator's tasks few
TEMP_DIR=""                     # Ray's --temp-dir (default /tmp/ray); needed for several nodes on one host
BLOCK=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bind) BIND="$2"; shift 2 ;;
    --redis-port) REDIS_PORT="$2"; shift 2 ;;
    --ray-port) RAY_PORT="$2"; shift 2 ;;
    --state) STATE="$2"; shift 2 ;;
    --no-worker) WORKER=0; shift ;;
    --num-cpus) NUM_CPUS="$2"; shift 2 ;;
    --temp-dir) TEMP_DIR="$2"; shift 2 ;;
    --block) BLOCK=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) printf 'error: unknown option %s\n' "$1" >&2; usage 2 ;;
  esac
done

find_python
[[ "$REDIS_PORT" =~ ^[0-9]+$ && "$RAY_PORT" =~ ^[0-9]+$ ]] || die "ports must be numbers" "--redis-port 6380 --ray-port 6379"
[ "$REDIS_PORT" != "$RAY_PORT" ] || die "Redis and Ray cannot share port $RAY_PORT" \
  "give Redis its own port: --redis-port $DEFAULT_REDIS_PORT (Ray's GCS keeps $RAY_PORT)"
if [ -z "$BIND" ]; then
  BIND="$(detect_ip)"
  [ -n "$BIND" ] || die "could not find this machine's LAN address" "pass it: --bind 192.168.1.10 (see ifconfig / ip addr)"
  say "LAN address: $BIND (pass --bind to choose another)"
fi
command -v redis-server >/dev/null 2>&1 || die "redis-server is not installed on this machine" \
  "macOS: brew install redis; Debian/Ubuntu: sudo apt-get install redis-server"

umask 077
mkdir -p "$STATE/redis"
chmod 700 "$STATE"

# ---- the journal's password: $SWARM_REDIS_PASSWORD, else a file made once (mode 600)
PASSWORD_FILE="$STATE/redis.password"
if [ -n "${SWARM_REDIS_PASSWORD:-}" ]; then
  PW="$SWARM_REDIS_PASSWORD"
  PW_SHELL='$SWARM_REDIS_PASSWORD'
  PW_FROM='$SWARM_REDIS_PASSWORD'
else
  if [ ! -s "$PASSWORD_FILE" ]; then
    write_secret "$PASSWORD_FILE" "$(new_secret)"
    say "made a Redis password in $PASSWORD_FILE (mode 600)"
  fi
  PW="$(cat "$PASSWORD_FILE")"
  PW_SHELL="\$(cat $PASSWORD_FILE)"
  PW_FROM="$PASSWORD_FILE"
fi
[[ "$PW" =~ ^[A-Za-z0-9._~-]+$ ]] || die "the Redis password has characters that cannot go into redis://:PASSWORD@host URLs" \
  "use letters, digits and . _ ~ - only (delete $PASSWORD_FILE to get a new random one)"

redis_ping() {  # authenticated PING of our Redis; exit 0 when it answers PONG
  SWARM_PW="$PW" "$PY" - "$BIND" "$REDIS_PORT" <<'EOF' 2>/dev/null
import os, sys, redis
r = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), password=os.environ["SWARM_PW"],
                socket_timeout=2, socket_connect_timeout=2)
sys.exit(0 if r.ping() else 1)
EOF
}

# ---- Redis: render the config (password appended here, never in the repo), start, wait for PING
PIDFILE="$STATE/redis/redis.pid"
if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null \
   && ps -o comm= -p "$(cat "$PIDFILE")" 2>/dev/null | grep -q redis; then
  redis_ping || die "a redis-server from an earlier head.sh (pid $(cat "$PIDFILE")) runs but does not answer on $BIND:$REDIS_PORT with this password" \
    "stop it with deploy/stop.sh --state $STATE, then run head.sh again"
  say "Redis already running (pid $(cat "$PIDFILE")) on $BIND:$REDIS_PORT"
else
  if tcp_open "$BIND" "$REDIS_PORT" 1; then
    die "something else listens on $BIND:$REDIS_PORT" "pick another port: --redis-port PORT (and use it in the journal URL)"
  fi
  sed -e "s|@BIND@|$BIND|g" -e "s|@PORT@|$REDIS_PORT|g" -e "s|@DIR@|$STATE/redis|g" \
    "$REPO/deploy/redis.conf.template" > "$STATE/redis.conf.tmp"
  printf '\n# from %s\nrequirepass %s\n' "$PW_FROM" "$PW" >> "$STATE/redis.conf.tmp"
  mv -f "$STATE/redis.conf.tmp" "$STATE/redis.conf"
  redis-server "$STATE/redis.conf" || die "redis-server did not start: $(tail -n 5 "$STATE/redis/redis.log" 2>/dev/null)" \
    "read $STATE/redis/redis.log (is $BIND an address of this machine? --bind ADDR)"
  up=0
  for _ in $(seq 1 60); do
    if redis_ping; then up=1; break; fi
    sleep 0.5
  done
  [ "$up" = 1 ] || die "Redis does not answer an authenticated PING on $BIND:$REDIS_PORT: $(tail -n 5 "$STATE/redis/redis.log" 2>/dev/null)" \
    "read $STATE/redis/redis.log"
  say "Redis up on $BIND:$REDIS_PORT (password on, append-only fsync every second, data in $STATE/redis)"
fi
JOURNAL_SHELL="redis://:$PW_SHELL@$BIND:$REDIS_PORT/0"

# ---- the Ray token: $RAY_AUTH_TOKEN, else the token file (made once)
TOKEN_FILE="$(token_path)"
if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
  say "Ray token: from \$RAY_AUTH_TOKEN"
  TOKEN_FROM="the value of \$RAY_AUTH_TOKEN here"
else
  if [ ! -s "$TOKEN_FILE" ]; then
    write_secret "$TOKEN_FILE" "$(new_secret)"
    say "made a Ray auth token in $TOKEN_FILE (mode 600)"
  else
    chmod 600 "$TOKEN_FILE"   # a token a local `ray.init()` made is world-readable (umask 022)
    say "Ray token: $TOKEN_FILE"
  fi
  TOKEN_FROM="$TOKEN_FILE"
fi
export RAY_AUTH_MODE=token
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1   # Ray refuses multi-node clusters with macOS nodes without it
export RAY_USAGE_STATS_ENABLED=0

# ---- this machine as a worker too: the same checks as join.sh
FP=""
if [ "$WORKER" = 1 ]; then
  check_node
  RESOURCES='{"mlx": 1}'
else
  RESOURCES='{}'
fi
FP_JSON="$(cd "$REPO" && "$PY" prepare.py --fingerprint 2>/dev/null | tail -n 1 || true)"
FP="$(printf '%s' "$FP_JSON" | "$PY" -c 'import json, sys
try: print(json.loads(sys.stdin.read()).get("fingerprint", ""))
except ValueError: pass' 2>/dev/null || true)"

# ---- what to run elsewhere (also saved in $STATE/join.txt)
ME="$(id -un)@$(hostname)"
JOIN="deploy/join.sh --head $BIND:$RAY_PORT --token-file ~/ray_auth_token --redis $BIND:$REDIS_PORT"
[ -n "$FP" ] && JOIN="$JOIN --fingerprint $FP"
PROFILE_ENV=""
[ -n "${AUTORESEARCH_PROFILE:-}" ] && PROFILE_ENV="AUTORESEARCH_PROFILE=$AUTORESEARCH_PROFILE "
{
  say ""
  say "== the swarm's head: Ray at $BIND:$RAY_PORT (token auth), journal Redis at $BIND:$REDIS_PORT (password)"
  say ""
  say "On each Mac that joins, in its checkout of this repository (after \`uv sync\` and"
  say "\`${PROFILE_ENV}uv run prepare.py\`, the same profile as here):"
  say "  1. copy the Ray token from this machine ($TOKEN_FROM):"
  if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    say "       scp $ME:$TOKEN_FILE ~/ray_auth_token"
    say "     (or print it here with \`cat $TOKEN_FILE\` and paste it into ~/ray_auth_token there)"
  else
    say "       paste it into ~/ray_auth_token there (or export RAY_AUTH_TOKEN=... there and drop --token-file)"
  fi
  say "  2. join the cluster:"
  say "       $JOIN"
  [ -z "$FP" ] && say "     (no prepared data here, so no --fingerprint check: the coordinator still checks it per track)"
  say ""
  say "Then start the campaign on this machine:"
  say "  RAY_AUTH_MODE=token RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 ${PROFILE_ENV}uv run swarm run --address $BIND:$RAY_PORT --journal \"$JOURNAL_SHELL\""
  say "  (RAY_ENABLE_UV_RUN_RUNTIME_ENV=0: each Mac runs its own checkout, not a copy of this one under \`uv run\`)"
  say "Check the whole cluster:"
  say "  RAY_AUTH_MODE=token RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 uv run swarm doctor --cluster --address $BIND:$RAY_PORT --journal \"$JOURNAL_SHELL\""
  say "Read the lab journal (anywhere the password is known):"
  say "  uv run swarm journal \"$JOURNAL_SHELL\""
  say "Stop: deploy/stop.sh (on each Mac, and here: Ray and Redis)"
} > "$STATE/join.txt"

# for stop.sh and a later head.sh
cat > "$STATE/head.env" <<EOF
BIND=$BIND
RAY_PORT=$RAY_PORT
REDIS_PORT=$REDIS_PORT
TEMP_DIR=$TEMP_DIR
EOF

# ---- the Ray head
RAY_ARGS=(start --head --node-ip-address "$BIND" --port "$RAY_PORT" --num-cpus "$NUM_CPUS"
          --resources "$RESOURCES" --include-dashboard=false --disable-usage-stats)
[ -n "$TEMP_DIR" ] && RAY_ARGS+=(--temp-dir "$TEMP_DIR")
RAY_ARGS+=("${EXTRA[@]}")
if [ "$BLOCK" = 1 ]; then
  cat "$STATE/join.txt"
  keep_awake $$ "$STATE/caffeinate.pid"      # the coordinator and Redis live here: no sleep either
  exec "$RAY" "${RAY_ARGS[@]}" --block
fi
if ! start_ray "$STATE/ray-start.log" "$TEMP_DIR" "${RAY_ARGS[@]}"; then
  tail -n 15 "$STATE/ray-start.log" >&2
  if grep -q "already running\|already in use\|Address already" "$STATE/ray-start.log"; then
    die "Ray could not start on $BIND:$RAY_PORT: a Ray node or another program holds the port" \
      "deploy/stop.sh --state $STATE (stops this machine's Ray), or choose --ray-port"
  fi
  die "ray start --head failed (log: $STATE/ray-start.log)" "read the lines above; \`uv run swarm doctor\` checks this machine"
fi
say "Ray head up on $BIND:$RAY_PORT (token auth; $([ "$WORKER" = 1 ] && echo 'this machine runs trials too' || echo 'no trials here'))"
# the coordinator and Redis live here: a sleeping head stops the whole swarm
pid="$(raylet_pid "$TEMP_DIR" || true)"
[ -n "$pid" ] && keep_awake "$pid" "$STATE/caffeinate.pid"
cat "$STATE/join.txt"
