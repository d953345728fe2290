#!/usr/bin/env bash
# Join this Mac (or Linux box) to the swarm as one worker: checks MLX, the prepared data
# and its fingerprint, installs the Ray token, starts a Ray node with one `mlx` resource,
# and keeps a Mac awake while it runs. Run it from a checkout of this repository.
#
#   deploy/join.sh --head ADDR:PORT [--token-file FILE] [--fingerprint HEX] [--redis HOST:PORT]
#                  [--node-ip ADDR] [--num-cpus 1] [--state DIR] [--temp-dir DIR] [--block]
#                  [--no-keep-awake] [-- RAY START ARGS...]
#
# The token comes from --token-file (installed to ~/.ray/auth_token, mode 600), else
# $RAY_AUTH_TOKEN, else an already installed ~/.ray/auth_token ($RAY_AUTH_TOKEN_PATH).
# deploy/head.sh prints this command, filled in, for each Mac.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

HEAD=""                  # the Ray head, ADDR:PORT
TOKEN_SRC=""             # a file holding the head's Ray token
FINGERPRINT=""           # the data fingerprint the head expects (prepare.py --fingerprint there)
REDIS=""                 # the journal's Redis HOST:PORT, checked reachable
NODE_IP=""               # this machine's address as the others see it (default: Ray picks)
NUM_CPUS=1
STATE="$DEFAULT_STATE"
TEMP_DIR=""
BLOCK=0
KEEP_AWAKE=1
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --head) HEAD="$2"; shift 2 ;;
    --token-file) TOKEN_SRC="$2"; shift 2 ;;
    --fingerprint) FINGERPRINT="$2"; shift 2 ;;
    --redis) REDIS="$2"; shift 2 ;;
    --node-ip) NODE_IP="$2"; shift 2 ;;
    --num-cpus) NUM_CPUS="$2"; shift 2 ;;
    --state) STATE="$2"; shift 2 ;;
    --temp-dir) TEMP_DIR="$2"; shift 2 ;;
    --block) BLOCK=1; shift ;;
    --no-keep-awake) KEEP_AWAKE=0; shift ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) printf 'error: unknown option %s\n' "$1" >&2; usage 2 ;;
  esac
done

[ -n "$HEAD" ] || die "which head? --head is missing" \
  "pass the address deploy/head.sh printed on the head machine: --head 192.168.1.10:6379"
[[ "$HEAD" =~ ^[^:]+:[0-9]+$ ]] || die "--head $HEAD is not ADDR:PORT" "e.g. --head 192.168.1.10:6379"
HEAD_HOST="${HEAD%:*}"
HEAD_PORT="${HEAD##*:}"
find_python
umask 077
mkdir -p "$STATE"

# ---- the Ray token (first: without it nothing else matters)
TOKEN_FILE="$(token_path)"
if [ -n "$TOKEN_SRC" ]; then
  [ -s "$TOKEN_SRC" ] || die "token file $TOKEN_SRC is missing or empty" \
    "copy the head's token first: scp HEAD_USER@$HEAD_HOST:.ray/auth_token $TOKEN_SRC"
  TOKEN="$(tr -d '\r\n' < "$TOKEN_SRC")"
  [[ "$TOKEN" =~ ^[A-Za-z0-9._~+/=-]{32,}$ ]] || die "$TOKEN_SRC does not look like a Ray token (one line of 32+ letters and digits, no spaces)" \
    "copy ~/.ray/auth_token from the head again (scp, or cat it there and paste it here)"
  if [ "$(cd "$(dirname "$TOKEN_SRC")" && pwd)/$(basename "$TOKEN_SRC")" != "$TOKEN_FILE" ]; then
    write_secret "$TOKEN_FILE" "$TOKEN"
    say "installed the Ray token in $TOKEN_FILE (mode 600)"
  fi
elif [ -n "${RAY_AUTH_TOKEN:-}" ]; then
  write_secret "$TOKEN_FILE" "$RAY_AUTH_TOKEN"
  say "installed the Ray token from \$RAY_AUTH_TOKEN in $TOKEN_FILE (mode 600)"
elif [ ! -s "$TOKEN_FILE" ]; then
  die "no Ray auth token on this machine (the head runs Ray with token auth; looked for --token-file, \$RAY_AUTH_TOKEN, $TOKEN_FILE)" \
    "copy it from the head: scp HEAD_USER@$HEAD_HOST:.ray/auth_token ~/ray_auth_token, then add --token-file ~/ray_auth_token"
else
  say "Ray token: $TOKEN_FILE"
fi
export RAY_AUTH_MODE=token
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1   # Ray refuses macOS nodes in a multi-node cluster without it
export RAY_USAGE_STATS_ENABLED=0

# ---- the network: the head's Ray and the journal's Redis must be reachable from here
tcp_open "$HEAD_HOST" "$HEAD_PORT" 5 || die "cannot reach the Ray head at $HEAD" \
  "start it there with deploy/head.sh; check the address (same network? \`ping $HEAD_HOST\`) and that its firewall lets port $HEAD_PORT in (macOS: System Settings > Network > Firewall)"
if [ -n "$REDIS" ]; then
  tcp_open "${REDIS%:*}" "${REDIS##*:}" 5 || die "cannot reach the journal's Redis at $REDIS" \
    "check that head.sh started it (deploy/head.sh on the head) and that the head's firewall lets port ${REDIS##*:} in"
fi

# ---- this machine: Python, MLX, OpenBLAS, prepared data and its fingerprint
if [ -n "$FINGERPRINT" ]; then check_node --fingerprint "$FINGERPRINT"; else check_node; fi

if pid="$(raylet_pid "$TEMP_DIR")"; then
  die "Ray already runs on this machine (raylet pid $pid)" "stop it first: deploy/stop.sh, then join again"
fi

cat > "$STATE/node.env" <<EOF
HEAD=$HEAD
TEMP_DIR=$TEMP_DIR
EOF

# ---- the Ray node: one `mlx` resource, so exactly one worker actor lands here
RAY_ARGS=(start --address="$HEAD" --resources='{"mlx": 1}' --num-cpus "$NUM_CPUS" --disable-usage-stats)
[ -n "$NODE_IP" ] && RAY_ARGS+=(--node-ip-address "$NODE_IP")
[ -n "$TEMP_DIR" ] && RAY_ARGS+=(--temp-dir "$TEMP_DIR")
RAY_ARGS+=("${EXTRA[@]}")
if [ "$BLOCK" = 1 ]; then
  [ "$KEEP_AWAKE" = 1 ] && keep_awake $$ "$STATE/caffeinate.pid"
  say "joining $HEAD (ray start --block)"
  exec "$RAY" "${RAY_ARGS[@]}" --block
fi
say "joining $HEAD ..."
if ! start_ray "$STATE/ray-start.log" "$TEMP_DIR" "${RAY_ARGS[@]}"; then
  tail -n 8 "$STATE/ray-start.log" >&2
  if grep -q "InvalidAuthToken\|AuthenticationError\|token is missing or incorrect" "$STATE/ray-start.log"; then
    die "the Ray head at $HEAD refused this machine's token" \
      "copy the head's current ~/.ray/auth_token again (scp HEAD_USER@$HEAD_HOST:.ray/auth_token ~/ray_auth_token) and run join.sh with --token-file ~/ray_auth_token"
  fi
  if grep -qi "version mismatch\|ray version" "$STATE/ray-start.log"; then
    die "this machine's Ray differs from the head's" "run \`git pull && uv sync\` on both (the same uv.lock gives the same Ray)"
  fi
  die "ray start failed (log: $STATE/ray-start.log)" \
    "read the lines above; \`uv run swarm doctor --address $HEAD\` checks the connection"
fi
if [ "$KEEP_AWAKE" = 1 ]; then
  pid="$(raylet_pid "$TEMP_DIR" || true)"
  [ -n "$pid" ] && keep_awake "$pid" "$STATE/caffeinate.pid"
fi
say "joined $HEAD: this machine runs one swarm worker (mlx: 1)."
say "check the cluster: RAY_AUTH_MODE=token uv run swarm doctor --cluster --address $HEAD"
say "leave it: deploy/stop.sh"
