# Shared by deploy/head.sh, deploy/join.sh and deploy/stop.sh (sourced, not run).
#
# Every failure goes through die(): one "error:" line saying what is wrong and
# one "fix:" line saying what to do, then exit 1.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where head.sh keeps Redis's config, data, password and pid files (never in the repo).
DEFAULT_STATE="${XDG_STATE_HOME:-$HOME/.local/state}/autoresearch-swarm"
# Ray's and Redis's default ports are both 6379: the swarm moves Redis to 6380.
DEFAULT_RAY_PORT=6379
DEFAULT_REDIS_PORT=6380

say()  { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die()  {  # die "what is wrong" "what to do"
  printf 'error: %s\n' "$1" >&2
  [ -n "${2:-}" ] && printf 'fix: %s\n' "$2" >&2
  exit 1
}

# PY and RAY: the project's interpreter and ray CLI ($SWARM_PYTHON, else the repo's .venv,
# made with `uv sync` when missing). Called once by each script.
find_python() {
  if [ -n "${SWARM_PYTHON:-}" ]; then
    PY="$SWARM_PYTHON"
  elif [ -x "$REPO/.venv/bin/python" ]; then
    PY="$REPO/.venv/bin/python"
  elif command -v uv >/dev/null 2>&1; then
    say "no .venv in $REPO yet: running \`uv sync --frozen\` (once)"
    (cd "$REPO" && uv sync --frozen) || die "uv sync failed in $REPO" \
      "run \`uv sync\` there by hand and read its error (network? Python >= 3.10?)"
    PY="$REPO/.venv/bin/python"
  else
    die "no Python environment for the swarm in $REPO" \
      "install uv (curl -LsSf https://astral.sh/uv/install.sh | sh, or pip install uv), then run \`uv sync\` in $REPO"
  fi
  [ -x "$PY" ] || die "$PY is not an executable Python" "point SWARM_PYTHON at the project's interpreter or run \`uv sync\`"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
    || die "$("$PY" -V 2>&1) is too old: the swarm needs Python >= 3.10" "uv python install 3.11 && uv sync"
  RAY="$(dirname "$PY")/ray"
  [ -x "$RAY" ] || die "no ray command next to $PY" "run \`uv sync\` in $REPO (ray is a dependency)"
}

# The file Ray reads its token from: $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
token_path() {
  printf '%s\n' "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
}

# Write a secret to a file only its owner can read (the folder too).
write_secret() {  # write_secret FILE VALUE
  ( umask 077; mkdir -p "$(dirname "$1")"; printf '%s' "$2" > "$1.tmp.$$" && mv -f "$1.tmp.$$" "$1" )
  chmod 600 "$1"
}

# A random hex secret (Ray's own tokens are 32 random bytes, hex).
new_secret() {
  "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")'
}

# This machine's LAN address: the one its default route leaves from (no packet is sent).
detect_ip() {
  local ip=""
  if [ "$(uname -s)" = Darwin ]; then
    local ifc
    ifc="$(route -n get default 2>/dev/null | awk '/interface:/ {print $2}')"
    [ -n "$ifc" ] && ip="$(ipconfig getifaddr "$ifc" 2>/dev/null || true)"
  else
    ip="$(ip -4 route get 192.0.2.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n1)"
  fi
  printf '%s\n' "$ip"
}

# Is HOST:PORT accepting TCP connections? (a plain connect, no data sent)
tcp_open() {  # tcp_open HOST PORT [TIMEOUT]
  "$PY" - "$1" "$2" "${3:-3}" <<'EOF' 2>/dev/null
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError:
    sys.exit(1)
EOF
}

# The node checks of `swarm doctor` (Python, MLX, OpenBLAS, prepared data and its fingerprint).
check_node() {  # check_node [--fingerprint HEX]
  say "checking this machine (swarm doctor):"
  local rc=0
  (cd "$REPO" && "$PY" -m swarm.doctor --node "$@") || rc=$?
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 1 ] && die "this machine is not ready to run trials (see the ✗ lines above)" \
      "do what their fix: lines say, then run this script again"
    die "swarm doctor itself failed (exit $rc)" "run \`uv sync\` in $REPO, then \`uv run swarm doctor\`"
  fi
}

# Keep a Mac awake (display, idle, disk and system sleep) while PID lives.
keep_awake() {  # keep_awake PID PIDFILE
  [ "$(uname -s)" = Darwin ] || return 0
  if ! command -v caffeinate >/dev/null 2>&1; then
    warn "caffeinate not found: this Mac may sleep mid-trial (System Settings > Energy: prevent sleep)"
    return 0
  fi
  caffeinate -dims -w "$1" >/dev/null 2>&1 &
  echo $! > "$2"
  say "keeping this Mac awake while Ray runs (caffeinate -dims -w $1; pid $!)"
}

# The raylet of the node whose temp dir is DIR (or any raylet of this user when DIR is empty).
raylet_pid() {  # raylet_pid [TEMP_DIR]
  local pid
  for pid in $(pgrep -x raylet 2>/dev/null || pgrep -f '/raylet ' 2>/dev/null || true); do
    if [ -z "${1:-}" ] || tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1" \
       || ps -o args= -p "$pid" 2>/dev/null | grep -qF -- "$1"; then
      echo "$pid"; return 0
    fi
  done
  return 1
}

# The Ray processes of the node under DIR (their command lines name DIR/session_...), and
# their descendants (Ray's agents and workers retitle themselves, so they are found through
# their parents). Never this script, its children or its ancestors.
node_pids() {  # node_pids DIR
  ps -eo pid=,ppid=,args= | NODE_DIR="$1" SELF="$$" awk '
    { pid[NR] = $1; parent[$1] = $2; if (index($0, ENVIRON["NODE_DIR"] "/session_") > 0) hit[$1] = 1 }
    function related(p,   q) {             # p is SELF, one of its ancestors, or one of its descendants
      for (q = ENVIRON["SELF"]; q != "" && q != 0; q = parent[q]) if (q == p) return 1
      for (q = p; q != "" && q != 0; q = parent[q]) if (q == ENVIRON["SELF"]) return 1
      return 0
    }
    END {
      for (p in hit) if (!related(p)) keep[p] = 1
      do { grew = 0
           for (i = 1; i <= NR; i++) { p = pid[i]
             if (!(p in keep) && (parent[p] in keep) && !related(p)) { keep[p] = 1; grew = 1 } }
      } while (grew)
      for (p in keep) print p
    }'
}

# Stop the Ray node that runs under TEMP_DIR: SIGTERM, then SIGKILL after 10 s.
stop_ray_node() {  # stop_ray_node TEMP_DIR
  local pids alive p
  pids="$(node_pids "$1" || true)"
  if [ -z "$pids" ]; then
    say "no Ray node runs under $1"
    return 0
  fi
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 20); do
    alive=""
    for p in $pids; do   # a zombie is gone already: only its parent has not reaped it yet
      kill -0 "$p" 2>/dev/null && [ "$(ps -o stat= -p "$p" 2>/dev/null | cut -c1)" != Z ] && alive="$alive $p"
    done
    [ -z "$alive" ] && break
    sleep 0.5
  done
  # shellcheck disable=SC2086
  [ -n "$alive" ] && kill -KILL $alive 2>/dev/null || true
  say "stopped the Ray node under $1 ($(echo $pids | wc -w | tr -d ' ') processes)"
}

# `ray start ARGS...` with its output in LOG. A busy machine can make Ray give up on its
# own raylet (it waits 30 s for it): then the half-started node is stopped and Ray gets
# one more try. Returns ray's exit status.
start_ray() {  # start_ray LOG TEMP_DIR ARGS...
  local log="$1" temp="$2" attempt
  shift 2
  for attempt in 1 2; do
    if "$RAY" "$@" > "$log" 2>&1; then return 0; fi
    grep -q "timed out during startup" "$log" && [ "$attempt" = 1 ] || return 1
    say "Ray's node start timed out (a busy machine?): stopping the half-started node, trying once more"
    if [ -n "$temp" ]; then stop_ray_node "$temp" >/dev/null; else "$RAY" stop >/dev/null 2>&1 || true; fi
  done
  return 1
}
