#!/usr/bin/env bash
# Make this machine's part of the swarm come back after a reboot: a launchd agent on
# macOS, a systemd unit on Linux, running deploy/head.sh or deploy/join.sh with --block.
#
#   deploy/install-service.sh head [head.sh options]            e.g. --bind 192.168.1.10
#   deploy/install-service.sh node --head ADDR:PORT [join.sh options]
#   deploy/install-service.sh --print [--kind launchd|systemd] head|node ...   show it, install nothing
#
# Join once by hand first (deploy/join.sh ... --token-file FILE installs the Ray token);
# the service then finds the token in ~/.ray/auth_token. $AUTORESEARCH_PROFILE and
# $AUTORESEARCH_CACHE, when set, go into the service's environment.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

PRINT=0
KIND=""                   # launchd | systemd (default: this machine's)
while [ $# -gt 0 ]; do
  case "$1" in
    --print) PRINT=1; shift ;;
    --kind) KIND="$2"; shift 2 ;;
    *) break ;;
  esac
done
ROLE="${1:-}"
[ $# -gt 0 ] && shift
case "$ROLE" in
  head) SCRIPT="$REPO/deploy/head.sh" ;;
  node) SCRIPT="$REPO/deploy/join.sh" ;;
  -h|--help) usage 0 ;;
  *) die "say which service: head or node" "deploy/install-service.sh node --head 192.168.1.10:6379" ;;
esac
for a in "$@"; do
  [ "$a" = "--block" ] && die "--block is added by the service itself" "leave it out"
  [ "$a" = "--token-file" ] && die "the service must not depend on a token file that may go away" \
    "join once by hand with --token-file (it installs the token in ~/.ray/auth_token), then install the service without it"
done
if [ "$ROLE" = node ]; then
  printf '%s\n' "$@" | grep -qx -- "--head" || die "a node service needs --head ADDR:PORT" \
    "deploy/install-service.sh node --head 192.168.1.10:6379"
  if [ "$PRINT" = 0 ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "$(token_path)" ]; then
    die "no Ray token in $(token_path) yet" "join once by hand first: deploy/join.sh --head ... --token-file FILE"
  fi
fi
find_python

[ -n "$KIND" ] || KIND="$([ "$(uname -s)" = Darwin ] && echo launchd || echo systemd)"
case "$KIND" in
  launchd) TEMPLATE="$REPO/deploy/launchd/com.autoresearch-swarm.$ROLE.plist"
           DEST="$HOME/Library/LaunchAgents/com.autoresearch-swarm.$ROLE.plist" ;;
  systemd) TEMPLATE="$REPO/deploy/systemd/autoresearch-swarm-$ROLE.service"
           DEST="/etc/systemd/system/autoresearch-swarm-$ROLE.service" ;;
  *) die "--kind $KIND: use launchd (macOS) or systemd (Linux)" "leave --kind out to get this machine's" ;;
esac
[ "$PRINT" = 1 ] || [ "$KIND" = "$([ "$(uname -s)" = Darwin ] && echo launchd || echo systemd)" ] \
  || die "a $KIND service cannot be installed on $(uname -s)" "use --print to only show it"

# Fill in the placeholders, quoting every value for its file format.
RENDERED="$("$PY" - "$KIND" "$TEMPLATE" "$REPO" "$HOME" "$(id -un)" "$SCRIPT" "$@" <<'PYEOF'
import os, sys
from xml.sax.saxutils import escape
kind, template, repo, home, user, script, *args = sys.argv[1:]
argv = ["/bin/bash", script, *args, "--block"]
env = {k: os.environ[k] for k in ("AUTORESEARCH_PROFILE", "AUTORESEARCH_CACHE") if os.environ.get(k)}
if kind == "launchd":
    fill = {"@ARGS@": "\n".join(f"    <string>{escape(a)}</string>" for a in argv),
            "@ENV@\n": "".join(f"    <key>{escape(k)}</key>\n    <string>{escape(v)}</string>\n"
                               for k, v in env.items()),
            "@REPO@": escape(repo), "@HOME@": escape(home), "@USER@": escape(user)}
else:
    def q(s):   # systemd: double quotes, backslash escapes; % and $ are systemd's own specials
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'
    fill = {"@ARGS@": " ".join([argv[0]] + [q(a) for a in argv[1:]]),
            "@ENV@\n": "".join(f"Environment={q(f'{k}={v}')}\n" for k, v in env.items()),
            "@REPO@": repo, "@HOME@": home, "@USER@": user}
text = open(template).read()
for key, value in fill.items():
    text = text.replace(key, value)
sys.stdout.write(text)
PYEOF
)"
if [ "$PRINT" = 1 ]; then
  printf '%s\n' "$RENDERED"
  exit 0
fi

if [ "$KIND" = launchd ]; then
  mkdir -p "$(dirname "$DEST")" "$HOME/Library/Logs"
  printf '%s\n' "$RENDERED" > "$DEST"
  launchctl bootout "gui/$(id -u)" "$DEST" 2>/dev/null || true
  launchctl bootstrap "gui/$(id -u)" "$DEST" || die "launchctl could not load $DEST" "run: launchctl bootstrap gui/$(id -u) $DEST"
  say "installed $DEST: it starts now and at every login (log: ~/Library/Logs/autoresearch-swarm-$ROLE.log)"
  say "for a Mac that must come back without anyone logging in: System Settings > Users & Groups > automatic login"
  say "remove: launchctl bootout gui/$(id -u) $DEST && rm $DEST"
else
  UNIT="$(basename "$DEST")"
  if [ "$(id -u)" = 0 ]; then
    printf '%s\n' "$RENDERED" > "$DEST"
    systemctl daemon-reload
    systemctl enable --now "$UNIT"
    say "installed and started $DEST (logs: journalctl -u $UNIT -f)"
  else
    mkdir -p "$DEFAULT_STATE"
    printf '%s\n' "$RENDERED" > "$DEFAULT_STATE/$UNIT"
    say "wrote $DEFAULT_STATE/$UNIT; install it as root:"
    say "  sudo cp $DEFAULT_STATE/$UNIT $DEST && sudo systemctl daemon-reload && sudo systemctl enable --now $UNIT"
  fi
fi
