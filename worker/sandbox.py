"""The sandbox every trial runs in (training and evaluation): one path policy, two platforms.

A trial runs code a language model wrote, unattended, on a machine that holds the cluster's
keys. The sandbox gives it the code, the interpreter and the training data read-only, one
writable scratch folder, a private empty /tmp and an empty HOME, no network, and makes the
files it must not see (the val/test shards, the journal, the secret stores below) unreadable.

- Linux: bubblewrap. The whole tree read-only, tmpfs masks over HOME, /home, /tmp, /var/tmp
  and /run (sockets of system services live there), the needed paths bound back, own PID, net,
  IPC and UTS namespaces, no capabilities. When the sandbox's first process exits, the kernel
  kills everything else in its PID namespace: nothing the trial started outlives it.
- macOS: sandbox-exec with a generated SBPL profile (reads allowed except hidden paths and
  secret stores, writes only to scratch, no network, no signals to processes outside the
  sandbox). macOS has no PID namespace: a child that leaves the trial's process group
  (setsid) is not stopped by the sandbox.
- off: the command unchanged (debugging only; the worker journals it on every trial).

A hidden path reads as `PermissionError: [Errno 13] Permission denied: '<path>'` inside the
sandbox (Linux: an empty mode-000 placeholder is bound over it; macOS: the profile denies it),
so the worker can tell "opened a hidden path" from the log.

The worker stops a trial with killpg(SIGTERM), then SIGKILL. bwrap itself dies on SIGTERM and
takes the sandbox with it at once, so the trial could not save and exit: the command line has
bwrap ignore SIGTERM (`env --ignore-signal=TERM`, coreutils >= 8.31) and the command inside
gets the default back (`env --default-signal=TERM`). bwrap then exits with the trial's status.

    mode = resolve_mode("auto")                       # once, at worker start: fails early, clearly
    policy = Policy(cwd=clone, read_only=python_paths(venv_python) + (data_dir,),
                    hidden=(val_shard, test_shard, journal_file), writable=(scratch,))
    argv, env = wrap(cmd, policy, mode, env)          # then Popen(argv, env=env, start_new_session=True)
    rc = returncode(proc.returncode, mode)            # bwrap's 128+N back to -N (killed by signal N)
"""

import functools
import os
import platform
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MODES = ("auto", "bwrap", "sandbox-exec", "off")
# Secret stores under HOME, never readable from a trial even when a path above them is bound
# back (Linux) or readable (macOS): cluster and API tokens, keys, credentials, shell history.
SECRETS = (".ray", ".ssh", ".gnupg", ".aws", ".azure", ".kube", ".docker", ".netrc", ".pypirc",
           ".git-credentials", ".config/gcloud", ".config/gh", ".config/anthropic", ".anthropic",
           ".claude", ".claude.json", ".local/state/autoresearch-swarm", ".bash_history",
           ".zsh_history", ".python_history", "Library/Keychains", "Library/Cookies",
           "Library/Application Support/com.apple.TCC")
# Linux: directories replaced by an empty tmpfs (before the policy's paths are bound back).
# /tmp stays writable (the private /tmp); the others are remounted read-only.
MASKS = ("/tmp", "/var/tmp", "/run", "/home")
# Linux: the probe that tells "bwrap works here" (the namespaces and options wrap() uses).
PROBE = ("--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid",
         "--unshare-net", "--cap-drop", "ALL")
# Seconds the probe may take (bwrap starts in ~10 ms; a loaded machine is slower).
PROBE_TIMEOUT = 30.0
# Linux: empty, mode-000 stand-ins bound over hidden files and folders (under HOME, which no
# trial sees). Recreated when missing (a cleaner may remove them while a worker runs for days).
PLACEHOLDER_DIR = Path("~/.local/state/autoresearch-swarm/sandbox")
# macOS: Keychain services a trial must not ask for secrets (reading the keychain files is denied
# too, but securityd answers over Mach, not the file system).
MACOS_DENY_MACH = ("com.apple.SecurityServer", "com.apple.securityd", "com.apple.securityd.xpc",
                   "com.apple.security.agent", "com.apple.security.authhost")
# macOS: device files a trial may write (inherited stdout/stderr are file descriptors, not paths).
MACOS_DEVICES = ("/dev/null", "/dev/zero", "/dev/tty", "/dev/stdout", "/dev/stderr",
                 "/dev/dtracehelper")
# The fix printed with every "cannot sandbox" error.
RUN_WITHOUT = "or run with --sandbox off (debugging only: the trial then runs unconfined)"


class SandboxError(RuntimeError):
    """The sandbox cannot be set up; the message says what to install or fix."""


@dataclass(frozen=True)
class Policy:
    cwd: Path                       # where the command runs (the trial's clone): readable, not writable
    read_only: tuple = ()           # further paths the process may read (venv, python prefix, data, ...)
    hidden: tuple = ()              # unreadable even inside read_only (val/test shards, the journal, ...)
    writable: tuple = ()            # scratch: the only writable places besides a private /tmp
    network: bool = False


# ---------------------------------------------------------------------------
# Mode


def resolve_mode(mode: str) -> str:
    """The mode to run trials in ("auto": the platform's sandbox), checked to be installed and working."""
    if mode not in MODES:
        raise SandboxError(f"unknown sandbox mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "auto":
        system = platform.system()
        if system not in ("Linux", "Darwin"):
            raise SandboxError(f"no sandbox for {system}: trials are sandboxed on Linux (bubblewrap) "
                               f"and macOS (sandbox-exec); {RUN_WITHOUT}")
        mode = "bwrap" if system == "Linux" else "sandbox-exec"
    if mode == "bwrap":
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxError("bubblewrap (bwrap) is not installed: install bubblewrap "
                               f"(Debian/Ubuntu: sudo apt-get install bubblewrap), {RUN_WITHOUT}")
        _probe_bwrap(bwrap, _env_binary())
    elif mode == "sandbox-exec":
        exe = shutil.which("sandbox-exec")
        if exe is None:
            raise SandboxError("sandbox-exec not found: it is part of macOS (/usr/bin/sandbox-exec) "
                               f"and the sandbox for trials there; on Linux use --sandbox bwrap, {RUN_WITHOUT}")
        _probe_sandbox_exec(exe)
    return mode


@functools.cache
def _env_binary() -> str:
    env = shutil.which("env") or "/usr/bin/env"
    r = subprocess.run([env, "--ignore-signal=TERM", "--default-signal=TERM", "true"],
                       check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise SandboxError(f"{env} cannot set signal dispositions ({r.stderr.strip()}): the sandbox "
                           "needs GNU coreutils >= 8.31 (Debian >= 11, Ubuntu >= 22.04) so that a "
                           f"trial can handle SIGTERM; {RUN_WITHOUT}")
    return env


@functools.cache
def _probe_bwrap(bwrap: str, env: str):
    """Run a trivial sandbox once per process; bwrap's own words plus the settings to check."""
    cmd = [env, "--ignore-signal=TERM", bwrap, *PROBE, "--", env, "--default-signal=TERM", "true"]
    try:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        err, ok = r.stderr.strip(), r.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        err, ok = str(e), False
    if not ok:
        raise SandboxError(
            f"bubblewrap is installed but cannot create a sandbox here: {err or 'no message'}\n"
            "  bwrap needs unprivileged user namespaces: check `sysctl kernel.unprivileged_userns_clone` "
            "(Debian: must be 1), `sysctl user.max_user_namespaces` (must be > 0) and, on Ubuntu >= 23.10, "
            "`sysctl kernel.apparmor_restrict_unprivileged_userns` (0, or an AppArmor profile for bwrap); "
            "inside a container, the container must allow namespaces (e.g. docker --privileged or a "
            f"seccomp profile that permits clone/unshare),\n  {RUN_WITHOUT}")


@functools.cache
def _probe_sandbox_exec(exe: str):
    r = subprocess.run([exe, "-p", "(version 1)(allow default)", "/usr/bin/true"],
                       check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise SandboxError(f"sandbox-exec cannot run a trivial profile: {r.stderr.strip()}; {RUN_WITHOUT}")


# ---------------------------------------------------------------------------
# What an interpreter reads

# Printed by the interpreter itself: its prefixes, its real executable, its import path.
_PATHS_SCRIPT = """\
import json, os, site, sys
paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
         os.path.dirname(os.path.realpath(sys.executable))]
paths += site.getsitepackages() + [p for p in sys.path if p]
if site.ENABLE_USER_SITE:
    paths.append(site.getusersitepackages())
print(json.dumps(paths))
"""


@functools.cache
def python_paths(python: str) -> tuple:
    """What `python` (a venv's interpreter) needs to read: prefixes, its real executable's folder,
    site-packages and its import path (editable installs included). Existing paths only, and
    none inside another of them."""
    import json

    exe = os.path.abspath(shutil.which(python) or python)
    r = subprocess.run([exe, "-E", "-c", _PATHS_SCRIPT], check=False, capture_output=True, text=True, cwd="/")
    if r.returncode != 0:
        raise SandboxError(f"cannot ask {python} for its paths: {r.stderr.strip() or r.returncode}")
    found = {Path(os.path.abspath(p)) for p in json.loads(r.stdout)}
    found |= {Path(os.path.abspath(exe)).parent, Path(os.path.realpath(exe)).parent}
    found |= {Path(os.path.realpath(p)) for p in found}
    found = {p for p in found if p.exists()}
    return tuple(sorted(p for p in found if not any(q != p and _under(p, q) for q in found)))


# ---------------------------------------------------------------------------
# The command line


def wrap(cmd: list, policy: Policy, mode: str, env: dict) -> tuple:
    """The command line to exec and the environment to exec it with, for a resolved mode."""
    if mode == "auto":
        mode = resolve_mode(mode)
    if mode == "off":
        return list(cmd), dict(env)
    if not Path(policy.cwd).is_dir():
        raise SandboxError(f"the trial's folder {policy.cwd} does not exist")
    for w in policy.writable:
        if not Path(w).is_dir():
            raise SandboxError(f"the scratch folder {w} does not exist (create it before the trial)")
    if mode == "bwrap":
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            resolve_mode("bwrap")   # raises the install message
        # Loader variables (LD_PRELOAD of OpenBLAS) must not reach bwrap itself: BLAS threads in
        # the process that creates the namespaces hang it. They are set inside, by the inner env.
        outer = {k: v for k, v in env.items() if not k.startswith("LD_")}
        return bwrap_argv(cmd, policy, env, bwrap, _env_binary()), outer
    if mode == "sandbox-exec":
        env = dict(env)
        if policy.writable:         # a private tmp: the only tmp the profile lets it write
            tmp = Path(policy.writable[0]) / "tmp"
            tmp.mkdir(exist_ok=True)
            env["TMPDIR"] = str(tmp)
        exe = shutil.which("sandbox-exec") or "/usr/bin/sandbox-exec"
        return [exe, "-p", macos_profile(policy, _home(env)), *cmd], env
    raise SandboxError(f"unknown sandbox mode {mode!r}: use one of {', '.join(MODES)}")


def returncode(rc: int, mode: str) -> int:
    """The trial's status in the subprocess convention (-N: killed by signal N). bwrap reports a
    command killed by signal N as exit status 128 + N; a trial that exits with 128 + N itself
    reads the same."""
    if mode == "bwrap" and rc is not None and 128 < rc < 128 + 65:
        return -(rc - 128)
    return rc


def bwrap_argv(cmd: list, policy: Policy, env: dict, bwrap: str = "bwrap", env_bin: str = "env") -> list:
    """The bubblewrap command line for `policy` (mounts in an order where nested paths work)."""
    homes = {_home(env), Path.home(), Path(pwd.getpwuid(os.getuid()).pw_dir)}
    masks = {Path(m) for m in MASKS} | {h for h in homes if h != Path("/")}
    masks = {m for m in masks if m.is_dir() or any(_under(m, n) for n in masks if n != m)}
    # A path is bound back only where a mask hides it (elsewhere `--ro-bind / /` shows it).
    # Given and real path both: a venv under HOME may be a symlink into /opt, or the reverse.
    ro = {p for p in _forms([policy.cwd, *policy.read_only]) if p.exists()}
    rw = set(_forms(policy.writable))
    ro = {p for p in ro - rw if any(_under(p, m) for m in masks)}
    hidden = set(_forms(policy.hidden))
    hidden = {r for p in hidden for r in [Path(os.path.realpath(p))] if r.exists()}
    hidden |= {p for h in homes for s in SECRETS for p in [Path(os.path.realpath(h / s))] if p.exists()}
    hidden = {p for p in hidden if not any(q != p and _under(p, q) for q in hidden)}
    ro = {p for p in ro if not any(_under(p, h) for h in hidden)}
    rw = {p for p in rw if not any(_under(p, h) for h in hidden)}

    # masks and binds in one order by depth: a mask under a bound path (HOME under a read-only
    # /tmp/x) and a bound path under a mask (a venv under HOME) both come out right.
    kind_order = {"mask": 0, "ro": 1, "rw": 2}
    ops = sorted([(m, "mask") for m in masks] + [(p, "ro") for p in ro] + [(p, "rw") for p in rw],
                 key=lambda o: (len(o[0].parts), kind_order[o[1]], str(o[0])))
    args = [env_bin, "--ignore-signal=TERM", bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for path, kind in ops:
        args += {"mask": ["--tmpfs"], "ro": ["--ro-bind", str(path)], "rw": ["--bind", str(path)]}[kind]
        args.append(str(path))
    # hidden last: whatever was bound above them, they stay unreadable. Only those the trial
    # could otherwise see (a secret under a masked HOME is already gone).
    visible = [h for h in sorted(hidden, key=lambda p: (len(p.parts), str(p))) if _visible(h, masks, ro | rw)]
    if visible:
        stand_in = _placeholders()
        for h in visible:
            args += ["--ro-bind", str(stand_in["dir" if h.is_dir() else "file"]), str(h)]
    for m in sorted(masks, key=lambda p: (len(p.parts), str(p))):
        if m != Path("/tmp") and m not in rw:      # /tmp, and a scratch bound right on a mask, stay writable
            args += ["--remount-ro", str(m)]
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not policy.network:
        args.append("--unshare-net")
    # Inside: SIGTERM back to its default, PWD as given (bwrap sets it to --chdir), loader variables.
    inner = [env_bin, "--default-signal=TERM"]
    inner += [f"PWD={env['PWD']}"] if "PWD" in env else ["-u", "PWD"]
    inner += [f"{k}={v}" for k, v in env.items() if k.startswith("LD_")]
    args += ["--die-with-parent", "--cap-drop", "ALL", "--chdir", str(policy.cwd), "--", *inner, *cmd]
    return args


def _placeholders() -> dict:
    """The mode-000 empty file and folder bound over hidden paths (created when missing)."""
    base = Path(os.path.expanduser(str(PLACEHOLDER_DIR)))
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    stand_in = {"file": base / "hidden-file", "dir": base / "hidden-dir"}
    try:
        stand_in["dir"].mkdir(mode=0o000)
    except FileExistsError:         # made before (or by another worker just now)
        pass
    try:                            # O_EXCL: a non-root owner cannot open a mode-000 file again
        os.close(os.open(stand_in["file"], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o000))
    except FileExistsError:
        pass
    for p in stand_in.values():
        os.chmod(p, 0o000)
    return stand_in


def _visible(path: Path, masks: set, binds: set) -> bool:
    """Whether `path` shows in the sandbox: its deepest enclosing mount is a bind, or none is a mask."""
    mounts = [(len(m.parts), False) for m in masks if _under(path, m)]
    mounts += [(len(b.parts), True) for b in binds if _under(path, b)]
    return max(mounts)[1] if mounts else True


# ---------------------------------------------------------------------------
# macOS


def macos_profile(policy: Policy, home: Path) -> str:
    """The sandbox-exec (SBPL) profile: the last matching rule wins, so the denials come last."""
    home = Path(home)
    hidden = [*policy.hidden, *(home / s for s in SECRETS)]
    lines = ["(version 1)", "(allow default)"]
    if not policy.network:
        lines.append("(deny network*)")
    lines.append("(deny file-write*)")
    writable = [f"(subpath {_sbpl_string(p)})" for p in _mac_forms(policy.writable)]
    writable += [f"(literal {_sbpl_string(d)})" for d in MACOS_DEVICES]
    writable.append('(regex #"^/dev/fd/[0-9]+$")')
    lines.append(_sbpl_rule("allow file-write*", writable))
    # MLX's Metal shader cache lives in the per-user cache folder (…/C/com.apple.metal).
    lines.append('(allow file-write* (regex #"^/private/var/folders/[^/]+/[^/]+/C/com\\.apple\\.metal(/|$)"))')
    denied = [f"(subpath {_sbpl_string(p)})" for p in _mac_forms(hidden)]
    lines.append(_sbpl_rule("deny file-read*", denied))
    lines.append(_sbpl_rule("deny file-write*", denied))
    lines.append(_sbpl_rule("deny mach-lookup", [f"(global-name {_sbpl_string(n)})" for n in MACOS_DENY_MACH]))
    # no signals to anything outside the sandbox (the worker, other trials)
    lines += ["(deny signal)", "(allow signal (target same-sandbox))"]
    return "\n".join(lines) + "\n"


def _sbpl_rule(head: str, filters: list) -> str:
    return f"({head}\n" + "\n".join(f"  {f}" for f in filters) + ")"


def _sbpl_string(path) -> str:
    """A path as an SBPL (TinyScheme) string literal: backslash and quote escaped."""
    s = str(path)
    if any(ord(c) < 32 and c not in "\n\t\r" for c in s):
        raise SandboxError(f"path {s!r} has a control character: it cannot be written into a sandbox profile")
    s = s.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + s.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + '"'


def _mac_forms(paths) -> list:
    """Each path as given, resolved, and under /private (the sandbox sees /tmp as /private/tmp)."""
    out = []
    for p in _forms(paths):
        out.append(p)
        for link in ("/tmp", "/var", "/etc"):
            if p == Path(link) or _under(p, Path(link)):
                out.append(Path("/private" + str(p)))
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------
# Paths


def _forms(paths) -> list:
    """Absolute, normalised paths and, where different, their real paths (order kept, no repeats)."""
    out = []
    for p in paths:
        a = Path(os.path.abspath(os.path.expanduser(str(p))))
        out += [a, Path(os.path.realpath(a))]
    return list(dict.fromkeys(out))


def _under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _home(env: dict) -> Path:
    return Path(os.path.abspath(env.get("HOME") or os.path.expanduser("~")))


if __name__ == "__main__":
    # `python -m worker.sandbox [python]`: the mode here, the command line of a typical policy,
    # and the start-up cost (median of RUNS `python -c pass`, plain and sandboxed).
    import statistics
    import tempfile
    import time

    RUNS = 20
    mode = resolve_mode("auto")
    py = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else sys.executable)
    with tempfile.TemporaryDirectory() as scratch:
        pol = Policy(cwd=Path.cwd(), read_only=python_paths(py), writable=(Path(scratch),))
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        argv, wenv = wrap([py, "-c", "pass"], pol, mode, env)
        print("mode:", mode, "\nargv:", " ".join(argv))

        def median_s(cmd, e):
            times = []
            for _ in range(RUNS):
                t = time.perf_counter()
                subprocess.run(cmd, env=e, check=True)
                times.append(time.perf_counter() - t)
            return statistics.median(times)

        plain, boxed = median_s([py, "-c", "pass"], env), median_s(argv, wenv)
        print(f"python -c pass: {plain * 1000:.1f} ms plain, {boxed * 1000:.1f} ms sandboxed "
              f"(+{(boxed - plain) * 1000:.1f} ms, median of {RUNS})")
