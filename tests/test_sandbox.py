"""The trial sandbox (worker/sandbox.py) with real bubblewrap: each test runs a small Python
program inside it and checks what that program could and could not do, next to a control
that shows the same probe works outside (or with the rule turned off).

The layout is a fake machine under tmp_path (itself under /tmp, which the sandbox masks):
a HOME with secrets and a data cache, a trial clone, a scratch folder. The interpreter is
this test run's own venv python, so the real venv and its site-packages are in play.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, _ping
from worker import sandbox
from worker.sandbox import (
    Policy,
    SandboxError,
    macos_profile,
    python_paths,
    resolve_mode,
    wrap,
)

PY = sys.executable
# Generous deadline for conditions a test waits on (a loaded, shared machine).
DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def mode():
    return resolve_mode("bwrap")


@pytest.fixture
def box(tmp_path, monkeypatch):
    """A fake HOME (secrets, a data cache with val/test shards), a clone, a scratch folder."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("ray-token-secret")
    state = home / ".local" / "state" / "autoresearch-swarm"
    state.mkdir(parents=True)
    (state / "redis.password").write_text("redis-pw-secret")
    (home / "notes.txt").write_text("not a secret")
    data = home / ".cache" / "autoresearch-swarm" / "tiny" / "data"
    data.mkdir(parents=True)
    for name in ("shard_00000.parquet", "shard_06541.parquet", "shard_06542.parquet"):
        (data / name).write_text(name)
    (data / "heldout").mkdir()
    (data / "heldout" / "rows.txt").write_text("held-out rows")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text("print('train')\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("HOME", str(home))   # placeholders and SECRETS follow the fake HOME
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}

    class Box:
        pass

    b = Box()
    b.home, b.data, b.repo, b.scratch, b.env = home, data, repo, scratch, env
    b.val, b.test, b.heldout = data / "shard_06542.parquet", data / "shard_06541.parquet", data / "heldout"
    b.policy = Policy(cwd=repo, read_only=python_paths(PY) + (data,),
                      hidden=(b.val, b.test, b.heldout), writable=(scratch,))
    return b


def run_in(box, mode, code, policy=None, env=None, timeout=DEADLINE_S):
    argv, env = wrap([PY, "-c", code], policy or box.policy, mode, env or box.env)
    return subprocess.run(argv, env=env, check=False, capture_output=True, text=True, timeout=timeout)


def report(r) -> dict:
    """The inner program prints one JSON line last."""
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


# A helper the inner programs share: try an action, record the error's name or "ok".
TRY = '''
import json, os, sys
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return f"{type(e).__name__}: {e}"
out = {}
'''


def test_tcp_to_local_redis_denied(box, mode, tmp_path):
    with RedisServer(tmp_path / "redis") as srv:
        assert _ping(srv.port, srv.password)          # control: reachable from outside
        code = TRY + f'''
import socket
out["tcp"] = attempt(lambda: socket.create_connection(("127.0.0.1", {srv.port}), timeout=5).close())
print(json.dumps(out))
'''
        assert report(run_in(box, mode, code))["tcp"].startswith("ConnectionRefusedError")
        open_net = replace(box.policy, network=True)
        assert report(run_in(box, mode, code, policy=open_net))["tcp"] == "ok"


def test_unix_socket_of_a_host_service_unreachable(box, mode):
    """--unshare-net does not cover sockets on the file system: /dev/shm and /run are masked."""
    path = f"/dev/shm/sbx-test-{uuid.uuid4().hex}.sock"
    srv = socket.socket(socket.AF_UNIX)
    try:
        srv.bind(path)
        srv.listen()
        socket.socket(socket.AF_UNIX).connect(path)    # control: reachable from outside
        code = TRY + f'''
import socket
out["unix"] = attempt(lambda: socket.socket(socket.AF_UNIX).connect({path!r}))
out["run"] = sorted(os.listdir("/run"))
print(json.dumps(out))
'''
        out = report(run_in(box, mode, code))
        assert out["unix"].startswith("FileNotFoundError"), out
        assert out["run"] == []
    finally:
        srv.close()
        os.unlink(path)


def test_secrets_under_home_unreadable(box, mode):
    secrets = [box.home / ".ray" / "auth_token",
               box.home / ".local" / "state" / "autoresearch-swarm" / "redis.password"]
    code = TRY + f'''
for p in {[str(s) for s in secrets]!r} + [os.path.join(os.environ["HOME"], "notes.txt")]:
    out[p] = attempt(lambda: open(p).read())
out["home"] = os.listdir(os.environ["HOME"])
print(json.dumps(out))
'''
    out = report(run_in(box, mode, code))
    # HOME is an empty mask: the data cache's mount points are all that shows
    assert out.pop("home") == [".cache"]
    assert all(v.startswith("FileNotFoundError") for v in out.values()), out
    # a policy that binds the whole HOME back: the secret stores stay unreadable, the rest reads
    exposed = replace(box.policy, read_only=box.policy.read_only + (box.home,))
    out = report(run_in(box, mode, code, policy=exposed))
    assert out.pop(str(box.home / "notes.txt")) == "ok"
    out.pop("home")
    for p, v in out.items():
        assert v == f"PermissionError: [Errno 13] Permission denied: '{p}'", (p, v)


def test_hidden_paths_inside_read_only_data(box, mode):
    """Hidden files and folders inside a read-only folder, itself under the masked HOME."""
    code = TRY + f'''
for p in {[str(box.data / "shard_00000.parquet"), str(box.val), str(box.test),
           str(box.heldout / "rows.txt")]!r}:
    out[p] = attempt(lambda: open(p).read())
out["list"] = attempt(lambda: os.listdir({str(box.heldout)!r}))
print(json.dumps(out))
'''
    out = report(run_in(box, mode, code))
    assert out.pop(str(box.data / "shard_00000.parquet")) == "ok"
    assert out.pop("list") == f"PermissionError: [Errno 13] Permission denied: '{box.heldout}'"
    for p, v in out.items():
        assert v == f"PermissionError: [Errno 13] Permission denied: '{p}'", (p, v)
    # the error a training script gets names the path: what the worker classifies on
    r = run_in(box, mode, f"open({str(box.val)!r}, 'rb').read()")
    assert r.returncode == 1 and f"PermissionError: [Errno 13] Permission denied: '{box.val}'" in r.stderr


def test_home_nested_inside_a_read_only_path(box, mode, tmp_path):
    """A read-only path that contains HOME (mask under a bind) and data under HOME (bind under mask)."""
    policy = replace(box.policy, read_only=box.policy.read_only + (tmp_path,))
    code = TRY + f'''
for p in {[str(box.repo / "train.py"), str(box.home / "notes.txt"), str(box.home / ".ray" / "auth_token"),
           str(box.data / "shard_00000.parquet"), str(box.val)]!r}:
    out[p] = attempt(lambda: open(p).read())
print(json.dumps(out))
'''
    out = report(run_in(box, mode, code, policy=policy))
    assert out[str(box.repo / "train.py")] == "ok"
    assert out[str(box.home / "notes.txt")].startswith("FileNotFoundError")     # HOME masked again
    assert out[str(box.home / ".ray" / "auth_token")].startswith("FileNotFoundError")
    assert out[str(box.data / "shard_00000.parquet")] == "ok"
    assert out[str(box.val)].startswith("PermissionError")


def test_writes_only_to_scratch_and_private_tmp(box, mode):
    purelib = Path(sysconfig.get_paths()["purelib"])    # this venv's site-packages
    assert purelib.is_relative_to(Path(sys.prefix))
    pth = purelib / f"zz_sbx_{uuid.uuid4().hex}.pth"
    tmp_marker = f"/tmp/sbx-{uuid.uuid4().hex}"
    targets = {"cwd": box.repo / "train.py", "cwd_new": box.repo / "new.py", "pth": pth,
               "data": box.data / "new.parquet", "val": box.val, "home": box.home / "x",
               "var_tmp": Path(f"/var/tmp/sbx-{uuid.uuid4().hex}"), "root": Path("/sbx-test")}
    code = TRY + f'''
for k, p in { {k: str(v) for k, v in targets.items()}!r}.items():
    out[k] = attempt(lambda: open(p, "a").write("x"))
out["scratch"] = attempt(lambda: open({str(box.scratch / "ckpt.bin")!r}, "w").write("weights"))
out["tmp"] = attempt(lambda: open({tmp_marker!r}, "w").write("x"))
print(json.dumps(out))
'''
    try:
        out = report(run_in(box, mode, code))
    finally:
        pth.unlink(missing_ok=True)
    assert out.pop("scratch") == "ok" and (box.scratch / "ckpt.bin").read_text() == "weights"
    assert out.pop("tmp") == "ok" and not os.path.exists(tmp_marker)        # private /tmp
    assert out.pop("val").startswith("PermissionError")
    for k, v in out.items():
        assert v.startswith(("OSError: [Errno 30] Read-only file system", "PermissionError")), (k, v)
    assert not pth.exists() and (box.repo / "train.py").read_text() == "print('train')\n"
    assert not (box.repo / "new.py").exists() and not (box.data / "new.parquet").exists()


def test_no_capabilities_inside(box, mode):
    """Run as root, bwrap keeps every capability unless told: the trial could unmount what hides."""
    code = TRY + f'''
import subprocess
status = open("/proc/self/status").read()
out["caps"] = [l.split()[1] for l in status.splitlines() if l.startswith(("CapEff", "CapPrm"))]
out["umount"] = subprocess.run(["umount", {str(box.val)!r}], capture_output=True).returncode
out["val"] = attempt(lambda: open({str(box.val)!r}).read())
print(json.dumps(out))
'''
    out = report(run_in(box, mode, code))
    assert out["caps"] == ["0000000000000000", "0000000000000000"]
    assert out["umount"] != 0 and out["val"].startswith("PermissionError")


def test_tmp_private_and_empty(box, mode):
    planted = Path(f"/tmp/sbx-planted-{uuid.uuid4().hex}")
    planted.write_text("host tmp file")
    try:
        code = "import os, json; print(json.dumps(sorted(os.listdir('/tmp'))))"
        listing = json.loads(run_in(box, mode, code).stdout)
    finally:
        planted.unlink()
    # only the mount points leading to bound paths under /tmp (this test's tmp_path, and the venv
    # when the checkout itself lives under /tmp, as a CI clone may)
    bound = (box.repo, box.data, box.scratch, *python_paths(PY))
    bound_under_tmp = {Path(p).parts[2] for p in bound if str(p).startswith("/tmp/")}
    assert set(listing) == bound_under_tmp


def test_proc_shows_nothing_from_outside(box, mode):
    """A process outside (the worker, say) with a secret in its environment is not in the sandbox's /proc."""
    marker = f"SBX_MARKER_{uuid.uuid4().hex}"
    outside = subprocess.Popen([PY, "-c", "import time; time.sleep(600)"], env={**box.env, marker: "1"})
    try:
        _wait_for(lambda: marker.encode() in Path(f"/proc/{outside.pid}/environ").read_bytes(),
                  "the outside process's environ")      # control: readable from outside
        code = TRY + f'''
found, pids = [], [d for d in os.listdir("/proc") if d.isdigit()]
for pid in pids:
    try:
        if {marker!r}.encode() in open(f"/proc/{{pid}}/environ", "rb").read():
            found.append(pid)
    except OSError:
        pass
out["found"], out["pids"] = found, pids
out["outside"] = attempt(lambda: open("/proc/{outside.pid}/environ", "rb").read())[:40]
print(json.dumps(out))
'''
        out = report(run_in(box, mode, code))
    finally:
        outside.kill()
        outside.wait()
    assert out["found"] == []
    assert len(out["pids"]) <= 3        # bwrap's init and this python (and nothing else)
    assert out["outside"].startswith("FileNotFoundError")


def test_env_is_exactly_what_was_given(box, mode):
    from worker.runner import openblas_path

    env = {**box.env, "AUTORESEARCH_PROFILE": "tiny", "ODD": "a b\n'c\"=d", "EMPTY": ""}
    if openblas_path():                 # a loader variable travels inside, not through bwrap
        env["LD_PRELOAD"] = openblas_path()
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    assert report(run_in(box, mode, code, env=env)) == env
    assert report(run_in(box, mode, code, env={**env, "PWD": "/somewhere"}))["PWD"] == "/somewhere"


def _processes_with(token: str) -> list:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if token.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def _wait_for(cond, what):
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_double_forked_child_gone_after_exit(box, mode):
    token = f"sbx-orphan-{uuid.uuid4().hex}"
    started, go = box.scratch / "started", box.scratch / "go"
    code = f'''
import os, subprocess, sys, time
if os.fork() == 0:                      # double fork + setsid: leaves the group and the parent
    os.setsid()
    subprocess.Popen([sys.executable, "-c", "import time; open({str(started)!r}, 'w').close(); time.sleep(600)",
                      {token!r}])
    os._exit(0)
while not os.path.exists({str(go)!r}):
    time.sleep(0.05)
'''
    argv, env = wrap([PY, "-c", code], box.policy, mode, box.env)
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        _wait_for(started.exists, "the orphan to start")
        assert _processes_with(token)                   # control: the scan sees it while it runs
        go.touch()
        assert proc.wait(DEADLINE_S) == 0
        _wait_for(lambda: not _processes_with(token), "the orphan to be gone")
    finally:
        proc.kill()
        for pid in _processes_with(token):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_to_the_group_reaches_the_trial(box, mode):
    """The worker's stop: killpg(SIGTERM). The trial's handler runs to the end, bwrap exits with its status."""
    ready, saved = box.scratch / "ready", box.scratch / "saved"
    code = f'''
import signal, sys, time
def save_and_exit(*_):
    time.sleep(0.5)                     # a checkpoint takes a while; bwrap must not cut it short
    open({str(saved)!r}, "w").write("checkpoint")
    sys.exit(3)
signal.signal(signal.SIGTERM, save_and_exit)
open({str(ready)!r}, "w").close()
time.sleep(600)
'''
    argv, env = wrap([PY, "-c", code], box.policy, mode, box.env)
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        _wait_for(ready.exists, "the trial to install its handler")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 3
        assert saved.read_text() == "checkpoint"
    finally:
        proc.kill()
    # without a handler SIGTERM ends it; bwrap reports that as 128 + 15, returncode() as -15
    ready.unlink()
    argv, env = wrap([PY, "-c", f"import time; open({str(ready)!r}, 'w').close(); time.sleep(600)"],
                     box.policy, mode, box.env)
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        _wait_for(ready.exists, "the trial to start")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 128 + signal.SIGTERM
        assert sandbox.returncode(proc.returncode, mode) == -signal.SIGTERM    # what classify reads
    finally:
        proc.kill()


def test_real_venv_python_runs_mlx(box, mode):
    from worker.runner import clean_env

    env = clean_env(base=box.env)
    r = run_in(box, mode, "import mlx.core as mx, numpy; print(mx.sum(mx.array([1, 2, 3])).item())", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "6", r.stderr


def test_missing_bwrap_says_what_to_install(box, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))          # a PATH without bwrap
    for m in ("bwrap", "auto"):
        with pytest.raises(SandboxError) as e:
            resolve_mode(m)
        assert str(e.value) == ("bubblewrap (bwrap) is not installed: install bubblewrap (Debian/Ubuntu: "
                                "sudo apt-get install bubblewrap), or run with --sandbox off "
                                "(debugging only: the trial then runs unconfined)")
    with pytest.raises(SandboxError, match="install bubblewrap"):
        wrap(["true"], box.policy, "bwrap", box.env)
    assert wrap(["true", "x"], box.policy, "off", box.env) == (["true", "x"], box.env)
    assert sandbox.returncode(137, "off") == 137 and sandbox.returncode(137, "bwrap") == -9


def test_unusable_bwrap_names_the_kernel_setting(tmp_path, monkeypatch):
    # A bwrap that fails as it does where user namespaces are off (we may not change the
    # shared machine's sysctl): its message, then the settings to check.
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because "
                    "the kernel does not allow non-privileged user namespaces.' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    sandbox._probe_bwrap.cache_clear()
    try:
        with pytest.raises(SandboxError) as e:
            resolve_mode("bwrap")
    finally:
        sandbox._probe_bwrap.cache_clear()
    msg = str(e.value)
    assert "does not allow non-privileged user namespaces" in msg
    assert "kernel.unprivileged_userns_clone" in msg and "user.max_user_namespaces" in msg
    assert "--sandbox off" in msg


def test_unknown_mode():
    with pytest.raises(SandboxError, match="auto, bwrap, sandbox-exec, off"):
        resolve_mode("docker")


def test_missing_scratch_is_an_error(box, mode):
    policy = replace(box.policy, writable=(box.scratch / "nope",))
    with pytest.raises(SandboxError, match="scratch folder .*nope does not exist"):
        wrap(["true"], policy, mode, box.env)


# ---------------------------------------------------------------------------
# macOS profile (sandbox-exec cannot run here: the generated text is checked)


def _sexprs(text: str) -> list:
    """A small reader for SBPL: nested lists of atoms; strings decoded (\\\\, \\", \\n)."""
    token = r'"(?:[^"\\]|\\.)*"|#"(?:[^"\\]|\\.)*"|[()]|[^\s()"]+'
    assert re.sub(token, "", text).strip() == "", "text that is no token"
    tokens = re.findall(token, text)
    stack = [[]]
    for t in tokens:
        if t == "(":
            stack.append([])
        elif t == ")":
            done = stack.pop()
            stack[-1].append(done)
        elif t.startswith('"'):
            stack[-1].append(("str", re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), t[1:-1])))
        else:
            stack[-1].append(t)
    assert len(stack) == 1, "unbalanced parentheses"
    return stack[0]


def _rules(profile: str) -> list:
    """[(action, operation, [(filter, value), ...]), ...] in profile order."""
    out = []
    for form in _sexprs(profile):
        if form[0] in ("allow", "deny"):
            out.append((form[0], form[1], [(f[0], f[1][1] if isinstance(f[1], tuple) else f[1])
                                           for f in form[2:]]))
    return out


def test_macos_profile_rules():
    home = Path("/Users/alice")
    policy = Policy(cwd=home / "swarm/.swarm/clones/w1", read_only=(),
                    hidden=(home / ".cache/autoresearch-swarm/default/data/shard_06542.parquet",
                            Path("/tmp/journal.db")),
                    writable=(Path("/tmp/scratch-1"),))
    rules = _rules(macos_profile(policy, home))
    assert rules[0] == ("allow", "default", [])
    assert ("deny", "network*", []) in rules
    # last match wins: the write allowlist follows the blanket write denial, the hidden denials follow both
    ops = [(a, o) for a, o, _ in rules]
    assert ops.index(("deny", "file-write*")) < ops.index(("allow", "file-write*")) < ops.index(("deny", "file-read*"))
    allowed = [v for a, o, fs in rules if (a, o) == ("allow", "file-write*") for _, v in fs]
    assert "/tmp/scratch-1" in allowed and "/private/tmp/scratch-1" in allowed and "/dev/null" in allowed
    assert str(policy.cwd) not in allowed and str(home) not in allowed
    denied = {v for a, o, fs in rules if (a, o) == ("deny", "file-read*") for _, v in fs}
    for p in (".ray", ".ssh", ".local/state/autoresearch-swarm", "Library/Keychains"):
        assert str(home / p) in denied
    assert str(policy.hidden[0]) in denied and "/private/tmp/journal.db" in denied
    denied_w = {v for a, o, fs in rules if (a, o) == ("deny", "file-write*") and fs for _, v in fs}
    assert denied_w == denied           # hidden stays unwritable inside scratch too
    assert ("allow", "signal", [("target", "same-sandbox")]) in rules
    # network allowed: no network rule at all
    assert all(o != "network*" for _, o, _ in _rules(macos_profile(replace(policy, network=True), home)))


def test_macos_profile_escapes_paths():
    home = Path('/Users/o"brien')
    odd = Path('/Volumes/data/we\\ird "shard").parquet')
    policy = Policy(cwd=home, hidden=(odd,), writable=(Path("/Users/x/scr (1)\nnl"),))
    rules = _rules(macos_profile(policy, home))
    denied = {v for a, o, fs in rules if (a, o) == ("deny", "file-read*") for _, v in fs}
    assert str(odd) in denied and str(home / ".ssh") in denied
    allowed = [v for a, o, fs in rules if (a, o) == ("allow", "file-write*") for _, v in fs]
    assert "/Users/x/scr (1)\nnl" in allowed
    with pytest.raises(SandboxError, match="control character"):
        macos_profile(Policy(cwd=home, hidden=(Path("/a\x07b"),)), home)


def test_macos_wrap_sets_private_tmpdir(box):
    argv, env = wrap([PY, "-c", "pass"], box.policy, "sandbox-exec", box.env)
    assert argv[1] == "-p" and argv[3:] == [PY, "-c", "pass"]
    assert env["TMPDIR"] == str(box.scratch / "tmp") and (box.scratch / "tmp").is_dir()
    assert {k: v for k, v in env.items() if k != "TMPDIR"} == box.env
