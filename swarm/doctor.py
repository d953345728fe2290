"""
`swarm doctor`: is this machine, the journal, the Ray cluster ready for a swarm? One line
per check (✓ fine, ! works but read this, ✗ broken) and a `fix:` line saying what to do.

    swarm doctor                                   this machine: Python, MLX, OpenBLAS, data, git
    swarm doctor --journal redis://:PW@HEAD:6380/0 + the journal reachable with its password
    swarm doctor --address HEAD:6379 [--cluster]   + the Ray cluster: token auth, nodes, mlx
                                                   resources; --cluster runs the machine checks
                                                   on every node, through Ray
    swarm doctor --node [--fingerprint HEX]        what a worker machine needs (deploy/join.sh)

Exit status 0 when no check failed, 1 otherwise. Each check is a small function
returning (ok, detail, fix) (None when it does not apply here), so tests and other
tools can call them one by one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Oldest Python the project supports (pyproject: requires-python).
MIN_PYTHON = (3, 10)
# Seconds a fingerprint command may take (it verifies the prepared cache: hashes the shards).
FINGERPRINT_TIMEOUT = 300
# Seconds to connect to the Ray cluster and list its nodes.
RAY_TIMEOUT = 60.0
# Seconds (--cluster) to hear back from every node: a node's first task starts a Python
# worker there, imports MLX and runs the data check (a fingerprint, itself bounded above).
NODE_CHECKS_TIMEOUT = 240.0
# Default where the Ray token lives when neither RAY_AUTH_TOKEN nor RAY_AUTH_TOKEN_PATH is set.
RAY_TOKEN_FILE = "~/.ray/auth_token"
MARKS = {True: "✓", False: "✗", "warn": "!"}   # fine, broken, works but read the fix


# -----------------------------------------------------------------------------
# Checks of this machine. Each returns (ok, detail, fix) or None (not applicable);
# ok=True with a fix is a warning: it works, but read the advice.

def check_python(version=None, executable=None):
    v = tuple(version or sys.version_info[:3])
    where = executable or sys.executable
    text = ".".join(str(x) for x in v)
    if v[:2] < MIN_PYTHON:
        return False, f"Python {text} ({where}) is too old", \
            "the swarm needs Python >= 3.10: `uv python install 3.11` then `uv sync`"
    return True, f"Python {text} ({where})", None


def check_mlx(probe=None, system=None):
    """probe: {'backend', 'version', 'error'?} as worker.hardware.probe_mlx() returns it."""
    if probe is None:
        from worker.hardware import probe_mlx
        probe = probe_mlx()
    system = system or platform.system()
    backend, version = probe.get("backend", "none"), probe.get("version")
    if backend == "none" or not version:
        why = probe.get("error") or "import failed"
        fix = "run `uv sync` (it installs mlx[cpu]: Metal on macOS, the CPU build on Linux)"
        if system == "Linux":
            fix += "; on Linux MLX's wheel needs glibc >= 2.35 and x86_64/aarch64"
        return False, f"MLX does not import: {why}", fix
    if system == "Darwin" and backend != "metal":
        return False, f"MLX {version} runs on the {backend}, not Metal", \
            "use a native arm64 Python on Apple Silicon (`uv python install`, not an x86 one under Rosetta), " \
            "then `uv sync`"
    return True, f"MLX {version}, {backend} backend", None


def _preloaded(lib_path: str) -> bool:
    """Is this library mapped into this process (LD_PRELOAD took effect)? The maps show the
    file the soname link points to (libopenblasp-r0.3.21.so), so both names count."""
    names = {os.path.basename(lib_path), os.path.basename(os.path.realpath(lib_path))}
    try:
        with open("/proc/self/maps") as f:
            return any(os.path.basename(line.split()[-1]) in names for line in f if "/" in line)
    except OSError:
        return False


def check_openblas(backend: str | None, system=None, path=None, preloaded=None):
    """Linux, CPU backend: MLX's bundled reference BLAS is ~30x slower than OpenBLAS for fp32."""
    system = system or platform.system()
    if system != "Linux" or backend not in ("cpu", None):
        return None
    if path is None:
        from worker.runner import openblas_path
        path = openblas_path()
    if not path:
        return False, "OpenBLAS is not installed: MLX on the CPU would use its slow reference BLAS " \
                      "(~6 instead of ~195 GFLOP/s fp32 on 2 cores), and results on this machine would " \
                      "form a much slower track", "sudo apt-get install libopenblas0-pthread"
    here = _preloaded(path) if preloaded is None else preloaded
    if here:
        return True, f"{path}: preloaded here, and by the worker for every trial", None
    return True, f"{path}: the worker preloads it for every trial (by hand: LD_PRELOAD={path})", None


def check_data(repo=REPO_ROOT, expected=None, python=None, env=None):
    """The prepared data of the profile ($AUTORESEARCH_PROFILE) through the target's fingerprint command."""
    from core.target import Target, TargetError, parse_fingerprint
    env = dict(os.environ if env is None else env)
    profile = env.get("AUTORESEARCH_PROFILE") or "default"
    try:
        target = Target.load(repo)
    except TargetError as e:
        return False, f"target.toml: {e}", "fix target.toml at the repository root (see CONTRACTS.md)"
    cmd = target.fingerprint_command(python or sys.executable)
    try:
        p = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=FINGERPRINT_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"could not run {' '.join(cmd)}: {e}", f"run it by hand in {repo} and read its error"
    if p.returncode != 0:
        said = " ".join((p.stderr or p.stdout or "").strip().splitlines()[-3:])[:400]
        if target.self_reported:
            return False, f"no prepared data for {target.name}: {said or f'exit {p.returncode}'}", \
                f"prepare it with the fork's own command: {_fork_prepare(repo, target)}"
        return False, f"no prepared data for profile {profile}: {said or f'exit {p.returncode}'}", \
            f"prepare it: `AUTORESEARCH_PROFILE={profile} uv run prepare.py` in {repo} " \
            "(same profile and source as the head)"
    fp = parse_fingerprint(p.stdout)
    value = fp.get("fingerprint")
    if not value:
        return False, f"the fingerprint command printed no fingerprint: {p.stdout.strip()[:200]}", \
            f"run {' '.join(cmd)} in {repo} and read its output"
    what = f"profile {fp.get('profile', profile)}, fingerprint {value[:12]}"
    if target.self_reported:        # a fork: its budget and cache as the worker will use them
        from worker.fork import budget_of
        budget = fp.get("time_budget") or target.time_budget or budget_of(repo)
        what = f"fork {target.name}, fingerprint {value[:12]}" + (f", data {', '.join(target.data)}" if target.data else "")
        fp["time_budget"] = budget
    if fp.get("time_budget"):
        b = fp["time_budget"]
        what += f", time budget {b:g} s" if isinstance(b, int | float) else f", time budget {b} s"
    if expected and value != expected and target.self_reported:
        return False, f"{what}: differs from the expected {expected[:12]}", \
            f"prepare the same data as the head with the fork's own command: {_fork_prepare(repo, target)}, " \
            f"then compare `{' '.join(cmd)}` on both"
    if expected and value != expected:
        return False, f"{what}: differs from the expected {expected[:12]}", \
            "prepare the same data as the head (same profile, same --source or shards): " \
            f"`AUTORESEARCH_PROFILE={fp.get('profile', profile)} uv run prepare.py`, then compare " \
            "`uv run prepare.py --fingerprint` on both"
    return True, what + (" (as expected)" if expected else ""), None


def _fork_prepare(repo: Path, target) -> str:
    """A fork's own data preparation, as its README would say it (never this project's profiles)."""
    where = f" (it fills {', '.join(target.data)})" if target.data else ""
    if (Path(repo) / "prepare.py").is_file():
        return f"`cd {repo} && uv run prepare.py`{where}"
    return f"the fork's own preparation step in {repo}{where}"


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def check_git(repo=REPO_ROOT, campaign_hashes: dict | None = None):
    """A git repository; the target's files committed and clean; fixed files as the campaign has them."""
    from safety.gitsafe import run_git
    repo = Path(repo)
    p = run_git(["rev-parse", "--show-toplevel"], repo, capture_output=True, text=True)
    if p.returncode != 0:
        return False, f"{repo} is not a git repository", \
            f"`git init && git add -A && git commit -m start` in {repo} (the swarm keeps every trial as a commit)"
    from core.target import Target, TargetError
    try:
        target = Target.load(repo)
    except TargetError as e:
        return False, f"target.toml: {e}", "fix target.toml at the repository root"
    files = list(target.fixed) + [f for f in target.editable if not any(ch in f for ch in "*?[")]
    missing = [f for f in files if not (repo / f).exists()]
    if missing:
        return False, f"{', '.join(missing)} missing in {repo}", \
            "point --repo at the research repository (train.py, prepare.py, target.toml)"
    head = run_git(["rev-parse", "--short=12", "HEAD"], repo, capture_output=True, text=True)
    if head.returncode != 0:
        return False, f"{repo} has no commit yet", "`git add -A && git commit -m start`"
    st = run_git(["status", "--porcelain", "--untracked-files=all", "--", *files], repo,
                 capture_output=True, text=True)
    dirty = [line[3:] for line in st.stdout.splitlines() if line.strip()]
    if campaign_hashes:
        differ = [f for f, h in campaign_hashes.items() if _sha256(repo / f) != h]
        if differ:
            return False, f"{', '.join(differ)} differ from the campaign's (sha256)", \
                "check out the commit the campaign started from (`git log`), or start a new campaign"
    if dirty:
        return True, f"{repo} at {head.stdout.strip()}: uncommitted changes in {', '.join(dirty)}", \
            "commit them (`git commit -am ...`): a campaign starts from the last commit, without them"
    return True, f"{repo} at {head.stdout.strip()}: {', '.join(files)} committed and clean", None


def check_journal(url: str, campaign: str | None = None):
    """(ok, detail, fix) and the campaign's fixed-file hashes (for check_git) when a campaign is named."""
    from journal import JournalError, open_journal
    if "://" not in url and not os.path.exists(url):
        return (False, f"no journal file {url}",
                "start a campaign with `swarm run`, or pass the swarm's redis://:PASSWORD@HEAD:6380/0"), None
    try:
        j = open_journal(url, create=False)
    except JournalError as e:
        return (False, str(e), _journal_fix(str(e))), None
    hashes = None
    try:
        have = j.campaigns()
        detail = f"{j.url}: {len(have)} campaign(s)" + (f" ({', '.join(have[:5])})" if have else "")
        if campaign:
            if campaign not in have:
                return (False, f"{detail}; no campaign {campaign!r}",
                        "check the tag (`swarm journal URL` lists them) or start it with `swarm run`"), None
            j.campaign = campaign
            for _, ev in j.read(limit=200):
                if ev.type == "campaign_started":
                    hashes = dict(ev.data.get("fixed_hashes") or {})
                    break
    except JournalError as e:
        return (False, str(e), _journal_fix(str(e))), None
    finally:
        j.close()
    return (True, detail, None), hashes


def _journal_fix(message: str) -> str:
    if "password" in message or "authentication" in message:
        return "use the password head.sh made: " \
               "redis://:$(cat ~/.local/state/autoresearch-swarm/redis.password)@HEAD:6380/0"
    if "cannot reach" in message:
        return "is Redis up on the head (deploy/head.sh)? right host and port (6380, not Ray's 6379)? firewall?"
    return "check the journal URL: redis://:PASSWORD@HEAD:6380/0 or a journal file"


def check_ray_auth(env=None, home=None):
    """Token auth on this side: RAY_AUTH_MODE=token and a token to present."""
    env = os.environ if env is None else env
    home = Path(home or Path.home())
    mode = env.get("RAY_AUTH_MODE", "")
    if env.get("RAY_AUTH_TOKEN"):
        where = "$RAY_AUTH_TOKEN"
    else:
        path = Path(env.get("RAY_AUTH_TOKEN_PATH") or home / ".ray" / "auth_token")
        where = str(path) if path.is_file() and path.stat().st_size > 0 else None
        if where is None:
            return False, f"no Ray auth token (looked at $RAY_AUTH_TOKEN, {path})", \
                "copy the head's ~/.ray/auth_token here (scp HEAD:.ray/auth_token ~/.ray/auth_token; chmod 600 it)"
        if path.stat().st_mode & 0o077:
            return True, f"token in {where}, readable by others", f"chmod 600 {where}"
    if mode.lower() != "token":
        return False, f"RAY_AUTH_MODE is {mode or 'not set'}: Ray will not present the token ({where})", \
            "export RAY_AUTH_MODE=token (the swarm's Ray cluster uses token auth)"
    return True, f"RAY_AUTH_MODE=token, token from {where}", None


# -----------------------------------------------------------------------------
# The Ray cluster, asked from a subprocess so a hung connection is a timeout, not a hang.

def node_checks(expected_fingerprint=None) -> list:
    """The machine checks a worker needs, as [(name, ok, detail, fix)] (what --node and --cluster run)."""
    from worker.hardware import probe_mlx
    out = [("python", *check_python())]
    probe = probe_mlx()
    out.append(("mlx", *check_mlx(probe)))
    blas = check_openblas(probe.get("backend"))
    if blas is not None:
        out.append(("openblas", *blas))
    out.append(("data", *check_data(REPO_ROOT, expected_fingerprint)))
    return out


def _ray_probe(address: str, cluster: bool, expected: str | None) -> dict:
    """Runs in a child process: connect, list nodes, (cluster) run node_checks on each live node."""
    import ray
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # AuthenticationError, ConnectionError, RuntimeError("Failed to connect to GCS")
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    try:
        nodes = []
        for n in ray.nodes():
            nodes.append({"id": n["NodeID"], "ip": n.get("NodeManagerAddress"), "alive": bool(n.get("Alive")),
                          "mlx": n.get("Resources", {}).get("mlx", 0), "host": n.get("NodeManagerHostname")})
        free = ray.available_resources().get("mlx", 0)
        if cluster:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            remote = ray.remote(num_cpus=0)(node_checks)
            # the machines that run workers (an mlx resource): a --no-worker head needs no data
            refs = {n["id"]: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["id"], soft=False))
                    .remote(expected) for n in nodes if n["alive"] and n["mlx"]}
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=NODE_CHECKS_TIMEOUT)
            for n in nodes:
                ref = refs.get(n["id"])
                if ref is None:
                    continue
                if ref not in ready:
                    n["checks_error"] = f"no answer within {NODE_CHECKS_TIMEOUT:.0f} s"
                    continue
                try:
                    n["checks"] = [list(c) for c in ray.get(ref)]
                except Exception as e:
                    n["checks_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        return {"nodes": nodes, "mlx_free": free}
    finally:
        ray.shutdown()


def probe_ray(address: str, cluster: bool = False, expected: str | None = None,
              timeout: float = RAY_TIMEOUT, env=None) -> dict:
    """{'nodes': [...], 'mlx_free': n} or {'error': text} (a timeout is an error too)."""
    code = ("import json, sys\nfrom swarm.doctor import _ray_probe\n"
            "a = json.loads(sys.argv[1])\nprint('DOCTOR ' + json.dumps(_ray_probe(*a)), flush=True)\n")
    wait = timeout + (NODE_CHECKS_TIMEOUT + 30 if cluster else 0)
    env = dict(os.environ if env is None else env)
    # Under `uv run`, Ray would run the node checks in a copy of this checkout through `uv run`
    # (installing packages there); each node's own checkout is what is checked.
    env.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        p = subprocess.run([sys.executable, "-c", code, json.dumps([address, cluster, expected])],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=wait)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {wait:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("DOCTOR "):
            return json.loads(line[len("DOCTOR "):])
    said = " ".join((p.stderr or "").strip().splitlines()[-2:])[:400]
    return {"error": f"the Ray probe exited {p.returncode}: {said}"}


def check_ray(address: str, result: dict, auth_ok: bool = True):
    """Judge probe_ray's result: reachable, at least one live node with an mlx resource.
    auth_ok: check_ray_auth passed (without token mode Ray just fails to connect to a token cluster)."""
    err = result.get("error")
    if err:
        if re.search(r"auth|token", err, re.IGNORECASE):
            return False, f"Ray at {address} refused this client: {err}", \
                "export RAY_AUTH_MODE=token and copy the head's ~/.ray/auth_token here " \
                "(it must be the head's current one)"
        if not auth_ok:
            return False, f"cannot connect to Ray at {address}: {err}", \
                "fix the ray auth line first: the swarm's cluster only lets in clients with RAY_AUTH_MODE=token " \
                "and the head's token"
        return False, f"cannot connect to Ray at {address}: {err}", \
            "is the head up (deploy/head.sh there)? right address and port (Ray 6379, not Redis's 6380)? firewall?"
    nodes = result.get("nodes", [])
    alive = [n for n in nodes if n["alive"]]
    mlx = sum(n["mlx"] for n in alive)
    detail = f"{address}: {len(alive)} node(s) alive, {mlx:g} mlx ({result.get('mlx_free', 0):g} free)"
    dead = len(nodes) - len(alive)
    if dead:
        detail += f", {dead} dead"
    if mlx < 1:
        return False, detail + ": no worker can be placed", \
            "join each Mac with deploy/join.sh --head " + address + " (it adds the mlx resource)"
    return True, detail, None


def node_lines(result: dict) -> list:
    """Per-node lines under the Ray check: [(label, ok, detail, fix)]."""
    out = []
    fps = {}
    for n in result.get("nodes", []):
        label = f"node {n['ip']}"
        if not n["alive"]:
            out.append((label, "warn", "dead (left the cluster, asleep, or cut off)",
                        "if it should be there: wake it, deploy/join.sh again on it"))
            continue
        state = f"alive, mlx {n['mlx']:g}" + ("" if n["mlx"] else " (runs no worker)")
        out.append((label, True, state, None))
        err = n.get("checks_error")
        if err and re.search(r"doesn't exist any more|infeasible|NodeDied|node.*(dead|died)", err, re.IGNORECASE):
            out.append((f"{n['ip']} checks", "warn", f"the node left while being checked ({err[:160]})",
                        "asleep or off the network? wake it, or deploy/join.sh again on it"))
        elif err:
            out.append((f"{n['ip']} checks", False, err,
                        "is that machine asleep or cut off? otherwise run `uv run swarm doctor --node` on it"))
        for name, ok, detail, fix in n.get("checks", []):
            out.append((f"{n['ip']} {name}", ok, detail, fix))
            if name == "data" and ok:
                m = re.search(r"fingerprint ([0-9a-f]{12})", detail)
                if m and n["mlx"]:
                    fps.setdefault(m.group(1), []).append(n["ip"])
    if len(fps) > 1:
        seen = "; ".join(f"{fp}: {', '.join(ips)}" for fp, ips in fps.items())
        out.append(("fingerprints", "warn", f"the workers hold different data ({seen}): each fingerprint "
                    "is its own track, so their results are never compared",
                    "prepare the same profile and source on every Mac"))
    return out


# -----------------------------------------------------------------------------
# The command

def configure_parser(parser):
    parser.description = "Check this machine, the journal and the Ray cluster; say what to fix."
    parser.add_argument("--address", default=None, help="Ray cluster HEAD:PORT to check (the Ray port, 6379)")
    parser.add_argument("--cluster", action="store_true",
                        help="with --address: also run the machine checks on every node of the cluster")
    parser.add_argument("--journal", default=None,
                        help="journal to check: redis://:PASSWORD@HEAD:6380/0 or a file (default: $SWARM_JOURNAL)")
    parser.add_argument("--campaign", default=None,
                        help="with --journal: check that campaign exists and that prepare.py matches its hash")
    parser.add_argument("--repo", default=None, help="the research repository (default: this checkout)")
    parser.add_argument("--fingerprint", default=None, help="the data fingerprint expected (the head's)")
    parser.add_argument("--node", action="store_true",
                        help="only what a worker machine needs: Python, MLX, OpenBLAS, data (deploy/join.sh)")
    parser.add_argument("--timeout", type=float, default=RAY_TIMEOUT, help="seconds to reach Ray (default 60)")
    return parser


def _print(label: str, ok, detail: str, fix: str | None) -> None:
    """✗ failed, ! works but read the fix, ✓ fine."""
    mark = MARKS[False] if ok is False else MARKS["warn"] if ok == "warn" or fix else MARKS[True]
    print(f"  {mark} {label:<14} {detail}", flush=True)
    if fix and mark != MARKS[True]:
        print(f"      fix: {fix}", flush=True)


def run(args) -> int:
    try:
        sys.stdout.reconfigure(errors="replace")
    except (AttributeError, ValueError):
        pass
    repo = Path(args.repo).expanduser().resolve() if args.repo else REPO_ROOT
    failed = 0

    def show(label, result):
        nonlocal failed
        if result is None:
            return
        ok, detail, fix = result
        _print(label, ok, detail, fix)
        if ok is False:
            failed += 1

    print(f"swarm doctor: {platform.node()} ({platform.system()} {platform.machine()})", flush=True)
    show("python", check_python())
    from worker.hardware import probe_mlx
    probe = probe_mlx()
    show("mlx", check_mlx(probe))
    show("openblas", check_openblas(probe.get("backend")))
    show("data", check_data(repo, args.fingerprint))
    if not args.node:
        hashes = None
        url = args.journal or os.environ.get("SWARM_JOURNAL")
        if url:
            result, hashes = check_journal(url, args.campaign)
            show("journal", result)
        show("git", check_git(repo, hashes))
        if args.address:
            auth = check_ray_auth()
            show("ray auth", auth)
            result = probe_ray(args.address, args.cluster, args.fingerprint, args.timeout)
            show("ray", check_ray(args.address, result, auth_ok=auth[0] is True))
            for label, ok, detail, fix in node_lines(result):
                show(label, (ok, detail, fix))
    if failed:
        print(f"{failed} problem(s): do what the fix: lines say, then run `swarm doctor` again", flush=True)
        return 1
    print("all good", flush=True)
    return 0


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="swarm doctor")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
