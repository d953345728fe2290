"""`swarm doctor`: each check on good and bad input, with real components (a real
redis-server, real git repositories, the real prepared tiny data, the real MLX)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from swarm import doctor
from journal import open_journal
from redis_server import RedisServer, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def git(repo, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout


def research_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "train.py").write_text("print('train')\n")
    (path / "prepare.py").write_text("print('prepare')\n")
    (path / "evaluate.py").write_text("print('evaluate')\n")
    git(path, "init", "-q", "-b", "master")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "start")
    return path


# -----------------------------------------------------------------------------

def test_python_version():
    ok, detail, fix = doctor.check_python()
    assert ok is True and sys.executable in detail and fix is None
    ok, detail, fix = doctor.check_python((3, 9, 18), "/usr/bin/python3.9")
    assert ok is False and "3.9.18" in detail and "too old" in detail and "uv python install" in fix


def test_mlx_probe_and_backend():
    # the real MLX of this environment (a subprocess import, as a worker's trial sees it)
    ok, detail, fix = doctor.check_mlx()
    assert ok is True and "MLX " in detail and "backend" in detail, (detail, fix)
    ok, detail, fix = doctor.check_mlx({"backend": "none", "version": None, "error": "ImportError('libmlx.so')"},
                                       system="Linux")
    assert ok is False and "libmlx.so" in detail and "uv sync" in fix and "glibc" in fix
    # a Mac whose MLX fell back to the CPU (an x86 Python under Rosetta) is not ready
    ok, detail, fix = doctor.check_mlx({"backend": "cpu", "version": "0.29.0"}, system="Darwin")
    assert ok is False and "not Metal" in detail and "arm64" in fix
    assert doctor.check_mlx({"backend": "metal", "version": "0.29.0"}, system="Darwin")[0] is True
    assert doctor.check_mlx({"backend": "cpu", "version": "0.29.0"}, system="Linux")[0] is True


def test_openblas():
    assert doctor.check_openblas("metal", system="Darwin") is None
    assert doctor.check_openblas("cuda", system="Linux") is None
    ok, detail, fix = doctor.check_openblas("cpu", system="Linux", path="")
    assert ok is False and "not installed" in detail and "libopenblas0-pthread" in fix
    lib = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
    ok, detail, fix = doctor.check_openblas("cpu", system="Linux", path=lib, preloaded=False)
    assert ok is True and "the worker preloads it" in detail and f"LD_PRELOAD={lib}" in detail
    ok, detail, _ = doctor.check_openblas("cpu", system="Linux", path=lib, preloaded=True)
    assert ok is True and "preloaded here" in detail
    # this machine, for real: installed means found, and LD_PRELOAD of a child shows as preloaded
    from worker.runner import openblas_path
    real = openblas_path()
    if real:
        assert doctor.check_openblas("cpu")[0] is True
        code = "from swarm.doctor import check_openblas; print(check_openblas('cpu')[1])"
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                             env={**os.environ, "LD_PRELOAD": real}, timeout=300).stdout
        assert "preloaded here" in out


def test_data_fingerprint(tiny_data, tmp_path):
    env = {**os.environ, **tiny_data.env}
    fp = json.loads(subprocess.run([sys.executable, "prepare.py", "--fingerprint"], cwd=REPO_ROOT, env=env,
                                   capture_output=True, text=True, timeout=300).stdout.splitlines()[-1])
    ok, detail, fix = doctor.check_data(REPO_ROOT, None, env=env)
    assert ok is True and f"fingerprint {fp['fingerprint'][:12]}" in detail and "profile tiny" in detail
    ok, detail, fix = doctor.check_data(REPO_ROOT, fp["fingerprint"], env=env)
    assert ok is True and "as expected" in detail
    ok, detail, fix = doctor.check_data(REPO_ROOT, "0" * 64, env=env)
    assert ok is False and "differs from the expected 000000000000" in detail and "same profile" in fix
    # an empty cache: nothing prepared for the profile; the fix names the profile
    empty = {**env, "AUTORESEARCH_CACHE": str(tmp_path / "empty")}
    ok, detail, fix = doctor.check_data(REPO_ROOT, None, env=empty)
    assert ok is False and "no prepared data for profile tiny" in detail
    assert "AUTORESEARCH_PROFILE=tiny uv run prepare.py" in fix


def test_git_state(tmp_path):
    ok, detail, fix = doctor.check_git(tmp_path)
    assert ok is False and "not a git repository" in detail and "git init" in fix

    repo = research_repo(tmp_path / "r")
    ok, detail, fix = doctor.check_git(repo)
    assert ok is True and fix is None and "committed and clean" in detail

    (repo / "train.py").write_text("print('edited')\n")
    ok, detail, fix = doctor.check_git(repo)
    assert ok is True and "uncommitted changes in train.py" in detail and "git commit" in fix

    import hashlib
    good = {"prepare.py": hashlib.sha256((repo / "prepare.py").read_bytes()).hexdigest()}
    assert doctor.check_git(repo, good)[0] is True
    ok, detail, fix = doctor.check_git(repo, {"prepare.py": "0" * 64})
    assert ok is False and "prepare.py differ from the campaign's" in detail

    (repo / "prepare.py").unlink()
    ok, detail, _ = doctor.check_git(repo)
    assert ok is False and "prepare.py missing" in detail


def test_journal_reachable_with_auth(tmp_path):
    with RedisServer(tmp_path / "redis") as srv:
        with open_journal(srv.url, campaign="doc1") as j:
            j.emit("campaign_started", source="test", config={}, target={}, fixed_hashes={"prepare.py": "ab" * 32})
        (ok, detail, fix), hashes = doctor.check_journal(srv.url)
        assert ok is True and "1 campaign(s) (doc1)" in detail and srv.password not in detail and hashes is None
        (ok, detail, fix), hashes = doctor.check_journal(srv.url, "doc1")
        assert ok is True and hashes == {"prepare.py": "ab" * 32}
        (ok, detail, fix), _ = doctor.check_journal(srv.url, "nope")
        assert ok is False and "no campaign 'nope'" in detail

        wrong = srv.url.replace(srv.password, "wrong-password")
        (ok, detail, fix), _ = doctor.check_journal(wrong)
        assert ok is False and "authentication failed" in detail and "wrong-password" not in detail
        assert "redis.password" in fix
        (ok, detail, fix), _ = doctor.check_journal(f"redis://127.0.0.1:{srv.port}/0")
        assert ok is False and "requires a password" in detail

    (ok, detail, fix), _ = doctor.check_journal(f"redis://:pw@127.0.0.1:{free_port()}/0")
    assert ok is False and "cannot reach Redis" in detail and "6380" in fix
    (ok, detail, fix), _ = doctor.check_journal(str(tmp_path / "missing.db"))
    assert ok is False and "no journal file" in detail


def test_ray_auth(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    ok, detail, fix = doctor.check_ray_auth({}, home)
    assert ok is False and "no Ray auth token" in detail and "scp" in fix

    token = home / ".ray" / "auth_token"
    token.write_text("a" * 64)
    token.chmod(0o600)
    ok, detail, fix = doctor.check_ray_auth({}, home)
    assert ok is False and "RAY_AUTH_MODE is not set" in detail and "export RAY_AUTH_MODE=token" in fix
    ok, detail, fix = doctor.check_ray_auth({"RAY_AUTH_MODE": "token"}, home)
    assert ok is True and str(token) in detail and fix is None
    token.chmod(0o644)
    ok, detail, fix = doctor.check_ray_auth({"RAY_AUTH_MODE": "token"}, home)
    assert ok is True and "readable by others" in detail and fix == f"chmod 600 {token}"

    other = tmp_path / "elsewhere"
    other.write_text("b" * 64)
    other.chmod(0o600)
    ok, detail, _ = doctor.check_ray_auth({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(other)}, home)
    assert ok is True and str(other) in detail
    ok, detail, _ = doctor.check_ray_auth({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "c" * 64}, tmp_path / "none")
    assert ok is True and "$RAY_AUTH_TOKEN" in detail


def test_ray_results_judged():
    ok, detail, fix = doctor.check_ray("h:6379", {"error": "AuthenticationError: RPC error: InvalidAuthToken"})
    assert ok is False and "refused" in detail and "RAY_AUTH_MODE=token" in fix
    ok, detail, fix = doctor.check_ray("h:6379", {"error": "no answer within 60 s"})
    assert ok is False and "cannot connect to Ray at h:6379" in detail and "deploy/head.sh" in fix
    ok, detail, fix = doctor.check_ray("h:6379", {"error": "ConnectionError: Failed to connect"}, auth_ok=False)
    assert ok is False and "fix the ray auth line first" in fix
    head = {"id": "a", "ip": "10.0.0.1", "alive": True, "mlx": 0}
    ok, detail, fix = doctor.check_ray("h:6379", {"nodes": [head], "mlx_free": 0})
    assert ok is False and "no worker can be placed" in detail and "deploy/join.sh --head h:6379" in fix
    mac = {"id": "b", "ip": "10.0.0.2", "alive": True, "mlx": 1,
           "checks": [["data", True, "profile tiny, fingerprint 0123456789ab", None]]}
    gone = {"id": "c", "ip": "10.0.0.3", "alive": False, "mlx": 1}
    ok, detail, fix = doctor.check_ray("h:6379", {"nodes": [head, mac, gone], "mlx_free": 1})
    assert ok is True and "2 node(s) alive, 1 mlx (1 free), 1 dead" in detail

    lines = {label: (ok, detail) for label, ok, detail, _ in doctor.node_lines({"nodes": [head, mac, gone]})}
    assert lines["node 10.0.0.3"][0] == "warn" and "dead" in lines["node 10.0.0.3"][1]
    assert lines["10.0.0.2 data"][0] is True and "fingerprints" not in lines
    other = dict(mac, id="d", ip="10.0.0.4", checks=[["data", True, "profile tiny, fingerprint ffffffffffff", None]])
    lines = {label: (ok, detail) for label, ok, detail, _ in doctor.node_lines({"nodes": [mac, other]})}
    assert lines["fingerprints"][0] == "warn" and "0123456789ab: 10.0.0.2" in lines["fingerprints"][1]


def test_ray_probe_times_out_on_nothing():
    """Nothing listens there: the probe gives up after its timeout instead of hanging."""
    result = doctor.probe_ray(f"127.0.0.1:{free_port()}", timeout=8)
    assert "error" in result
    ok, detail, fix = doctor.check_ray("x", result)
    assert ok is False and "cannot connect" in detail


def test_doctor_command(tiny_data):
    """`swarm doctor --node` exits 0 on a ready machine, 1 with ✗ and fix: lines otherwise."""
    env = {**os.environ, **{k: v for k, v in tiny_data.env.items() if k != "LD_PRELOAD"}}
    good = subprocess.run([sys.executable, "-m", "swarm.doctor", "--node"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "✓ python" in good.stdout and "✓ mlx" in good.stdout and "✓ data" in good.stdout
    assert "all good" in good.stdout
    bad = subprocess.run([sys.executable, "-m", "swarm.doctor", "--node", "--fingerprint", "f" * 64],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert "✗ data" in bad.stdout and "fix: prepare the same data" in bad.stdout and "1 problem(s)" in bad.stdout


def test_node_checks_that_did_not_come_back():
    gone = {"id": "a", "ip": "10.0.0.2", "alive": True, "mlx": 1,
            "checks_error": "TaskUnschedulableError: The node specified via NodeAffinitySchedulingStrategy "
                            "doesn't exist any more or is infeasible, and soft=False was specified."}
    silent = {"id": "b", "ip": "10.0.0.3", "alive": True, "mlx": 1, "checks_error": "no answer within 60 s"}
    lines = {label: (ok, detail, fix) for label, ok, detail, fix in doctor.node_lines({"nodes": [gone, silent]})}
    assert lines["10.0.0.2 checks"][0] == "warn" and "left while being checked" in lines["10.0.0.2 checks"][1]
    assert lines["10.0.0.3 checks"][0] is False and "asleep or cut off" in lines["10.0.0.3 checks"][2]
