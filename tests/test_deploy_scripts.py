"""The deploy scripts and files on their own, on loopback only, without a Ray cluster:
join.sh's checks (each failure says what to fix), the Redis config template with a
real redis-server, stop.sh (only its node's processes; Redis stopped with its AOF kept),
the service files (launchd, systemd) and Ray's own validation of cluster.yaml.
The scripts run as a user would run them, with HOME pointing into the test's folder."""

import json
import os
import plistlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from redis_server import _ping, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
TOKEN = "5f" * 32        # what `ray get-auth-token --generate` makes: 32 random bytes, hex


def script_env(home: Path, **extra) -> dict:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(script, *args, home: Path, timeout=120, **extra):
    return subprocess.run(["bash", str(DEPLOY / script), *map(str, args)], cwd=REPO_ROOT,
                          env=script_env(home, **extra), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def listener():
    """A TCP port on loopback that accepts connections (a stand-in for a reachable head)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


# -----------------------------------------------------------------------------
# join.sh

def test_join_needs_a_head(home):
    p = run("join.sh", home=home)
    assert p.returncode == 1
    assert "error: which head? --head is missing" in p.stderr and "fix: pass the address" in p.stderr
    p = run("join.sh", "--head", "10.0.0.1", home=home)
    assert p.returncode == 1 and "is not ADDR:PORT" in p.stderr


def test_join_without_any_token(home):
    p = run("join.sh", "--head", f"127.0.0.1:{free_port()}", home=home)
    assert p.returncode == 1
    assert "error: no Ray auth token on this machine" in p.stderr
    assert "fix: copy it from the head: scp HEAD_USER@127.0.0.1:.ray/auth_token" in p.stderr
    assert not (home / ".ray").exists()


def test_join_rejects_a_file_that_is_no_token(home):
    bad = home / "token.txt"
    bad.write_text("paste the token here\n")
    p = run("join.sh", "--head", f"127.0.0.1:{free_port()}", "--token-file", bad, home=home)
    assert p.returncode == 1 and "does not look like a Ray token" in p.stderr
    p = run("join.sh", "--head", f"127.0.0.1:{free_port()}", "--token-file", home / "missing", home=home)
    assert p.returncode == 1 and "is missing or empty" in p.stderr


def test_join_installs_the_token_then_needs_the_head(home):
    """The token is installed (mode 600) before the network check; an unreachable head is named."""
    src = home / "ray_auth_token"
    src.write_text(TOKEN + "\n")
    port = free_port()
    p = run("join.sh", "--head", f"127.0.0.1:{port}", "--token-file", src, home=home)
    assert p.returncode == 1
    assert f"error: cannot reach the Ray head at 127.0.0.1:{port}" in p.stderr and "firewall" in p.stderr
    token = home / ".ray" / "auth_token"
    assert token.read_text() == TOKEN and token.stat().st_mode & 0o777 == 0o600
    # RAY_AUTH_TOKEN_PATH moves where it goes; RAY_AUTH_TOKEN alone is installed too
    elsewhere = home / "tokens" / "ray"
    p = run("join.sh", "--head", f"127.0.0.1:{port}", "--token-file", src, home=home,
            RAY_AUTH_TOKEN_PATH=elsewhere)
    assert elsewhere.read_text() == TOKEN and "cannot reach the Ray head" in p.stderr
    token.unlink()
    p = run("join.sh", "--head", f"127.0.0.1:{port}", home=home, RAY_AUTH_TOKEN="ab" * 32)
    assert token.read_text() == "ab" * 32 and "cannot reach the Ray head" in p.stderr


def test_join_checks_redis_then_the_data(home, listener, tiny_data):
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(TOKEN)
    redis_port = free_port()
    p = run("join.sh", "--head", f"127.0.0.1:{listener}", "--redis", f"127.0.0.1:{redis_port}", home=home)
    assert p.returncode == 1 and f"cannot reach the journal's Redis at 127.0.0.1:{redis_port}" in p.stderr

    # the head answers, but this machine's data is not what the head expects: no Ray node starts
    env = {k: v for k, v in tiny_data.env.items() if k != "LD_PRELOAD"}
    p = run("join.sh", "--head", f"127.0.0.1:{listener}", "--fingerprint", "e" * 64, "--temp-dir",
            home / "ray", home=home, timeout=300, **env)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "✓ mlx" in p.stdout and "✗ data" in p.stdout and "differs from the expected eeeeeeeeeeee" in p.stdout
    assert "error: this machine is not ready to run trials" in p.stderr
    assert not (home / "ray").exists()


# -----------------------------------------------------------------------------
# head.sh (the whole script runs in test_deploy.py's cluster; here what fails before it starts)

def test_head_refuses_one_port_for_both(home):
    p = run("head.sh", "--bind", "127.0.0.1", "--redis-port", "6379", "--ray-port", "6379", home=home)
    assert p.returncode == 1
    assert "Redis and Ray cannot share port 6379" in p.stderr and "--redis-port 6380" in p.stderr
    p = run("head.sh", "--bind", "127.0.0.1", "--frobnicate", home=home)
    assert p.returncode == 2 and "unknown option --frobnicate" in p.stderr


def test_head_refuses_a_password_that_breaks_urls(home):
    p = run("head.sh", "--bind", "127.0.0.1", "--state", home / "state", home=home,
            SWARM_REDIS_PASSWORD="p@ss:word")
    assert p.returncode == 1 and "cannot go into redis://:PASSWORD@host URLs" in p.stderr


# -----------------------------------------------------------------------------
# Redis config + stop.sh

def render_redis_conf(state: Path, port: int, password: str) -> Path:
    """What head.sh does: fill in the template, append requirepass (the password never in the repo)."""
    text = (DEPLOY / "redis.conf.template").read_text()
    assert "requirepass" not in text.replace("`requirepass`", "")
    (state / "redis").mkdir(parents=True)
    text = text.replace("@BIND@", "127.0.0.1").replace("@PORT@", str(port)).replace("@DIR@", str(state / "redis"))
    conf = state / "redis.conf"
    conf.write_text(text + f"\nrequirepass {password}\n")
    return conf


def test_redis_template_and_stop_keep_the_journal(tmp_path, home):
    """The template's Redis: a password, AOF fsync every second, destructive commands off;
    stop.sh stops it through its pid file and the append-only file stays."""
    import redis
    state = home / "state"
    port = free_port()
    conf = render_redis_conf(state, port, "pw-123")
    subprocess.run(["redis-server", str(conf)], check=True, timeout=30)   # daemonizes itself
    pidfile = state / "redis" / "redis.pid"
    try:
        deadline = time.time() + 120    # generous: a loaded machine
        while not _ping(port, "pw-123") and time.time() < deadline:
            time.sleep(0.1)
        assert _ping(port, "pw-123") and not _ping(port, None)
        r = redis.Redis(port=port, password="pw-123")
        assert r.info("persistence")["aof_enabled"] == 1
        r.xadd("swarm:t:events", {"e": "kept"})
        for cmd in ("FLUSHALL", "FLUSHDB", "CONFIG GET dir"):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                r.execute_command(*cmd.split())
        r.close()
        p = run("stop.sh", "--state", state, "--temp-dir", tmp_path / "no-ray-here", home=home)
        assert p.returncode == 0, p.stderr
        assert "stopped Redis" in p.stdout and "the journal stays in" in p.stdout
        assert not _ping(port, "pw-123") and not pidfile.exists()
        aof = b"".join(f.read_bytes() for f in (state / "redis").rglob("*.aof*") if f.is_file())
        assert b"kept" in aof
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def test_stop_only_takes_its_own_node(tmp_path, home):
    """stop.sh --temp-dir stops the processes of the Ray node under that folder (and what they
    started), nothing else: not another node, not a process that merely mentions the folder."""
    node, other = tmp_path / "n1", tmp_path / "n2"
    sleeper = "import subprocess, sys, time\n" \
              "if sys.argv[2] == 'parent':\n" \
              "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n" \
              "time.sleep(600)\n"
    procs = [subprocess.Popen([sys.executable, "-c", sleeper, f"--session-dir={d}/session_2026_1", "parent"])
             for d in (node, other)]
    bystander = subprocess.Popen([sys.executable, "-c", sleeper, f"--note={node}", "alone"])
    children = []
    try:
        deadline = time.time() + 120
        while len(children) < 2 and time.time() < deadline:
            out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
            children = [int(pid) for pid, ppid in (line.split() for line in out.splitlines())
                        if int(ppid) in (procs[0].pid, procs[1].pid)]
            time.sleep(0.1)
        assert len(children) == 2
        p = run("stop.sh", "--state", home / "state", "--temp-dir", node, home=home)
        assert p.returncode == 0, p.stderr
        assert f"stopped the Ray node under {node} (2 processes)" in p.stdout
        assert procs[0].wait(timeout=120) == -signal.SIGTERM
        assert procs[1].poll() is None and bystander.poll() is None
        alive = [c for c in children if os.path.exists(f"/proc/{c}") and
                 open(f"/proc/{c}/stat").read().split()[2] != "Z"]
        assert len(alive) == 1
    finally:
        for pr in procs + [bystander]:
            if pr.poll() is None:
                pr.kill()
                pr.wait()
        for c in children:
            try:
                os.kill(c, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -----------------------------------------------------------------------------
# Service files and cluster.yaml

def test_services_run_the_scripts_in_block_mode(home):
    env = {"AUTORESEARCH_PROFILE": "tiny"}
    p = run("install-service.sh", "--print", "--kind", "launchd", "node", "--head", "10.0.0.1:6379",
            "--fingerprint", "ab" * 32, home=home, **env)
    assert p.returncode == 0, p.stderr
    plist = plistlib.loads(p.stdout.encode())
    assert plist["Label"] == "com.autoresearch-swarm.node" and plist["RunAtLoad"] and plist["KeepAlive"]
    assert plist["ProgramArguments"] == ["/bin/bash", str(DEPLOY / "join.sh"), "--head", "10.0.0.1:6379",
                                         "--fingerprint", "ab" * 32, "--block"]
    assert plist["EnvironmentVariables"]["AUTORESEARCH_PROFILE"] == "tiny"
    assert plist["WorkingDirectory"] == str(REPO_ROOT)

    p = run("install-service.sh", "--print", "--kind", "launchd", "head", "--bind", "10.0.0.1", home=home)
    plist = plistlib.loads(p.stdout.encode())
    assert plist["ProgramArguments"][1:] == [str(DEPLOY / "head.sh"), "--bind", "10.0.0.1", "--block"]

    p = run("install-service.sh", "--print", "--kind", "systemd", "node", "--head", "10.0.0.1:6379",
            "--num-cpus", "2", home=home, **env)
    assert p.returncode == 0, p.stderr
    unit = p.stdout
    assert f'ExecStart=/bin/bash "{DEPLOY}/join.sh" "--head" "10.0.0.1:6379" "--num-cpus" "2" "--block"' in unit
    assert "Restart=always" in unit and "WantedBy=multi-user.target" in unit
    assert 'Environment="AUTORESEARCH_PROFILE=tiny"' in unit and f"ExecStop={DEPLOY}/stop.sh" in unit
    assert "@" not in unit.replace("@NAME@", "")

    for bad, said in ((["node"], "needs --head"), (["node", "--head", "h:1", "--block"], "added by the service"),
                      (["node", "--head", "h:1", "--token-file", "t"], "token file that may go away"),
                      (["bogus"], "say which service")):
        p = run("install-service.sh", "--print", *bad, home=home)
        assert p.returncode == 1 and said in p.stderr, (bad, p.stderr)


def test_cluster_yaml_is_valid_for_ray_up():
    from ray.autoscaler._private.util import prepare_config, validate_config
    raw = (DEPLOY / "cluster.yaml").read_text()
    config = yaml.safe_load(raw)
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] == "HEAD_IP" and len(config["provider"]["worker_ips"]) == 2
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    validate_config(prepare_config(json.loads(json.dumps(config))))
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "deploy/head.sh --bind HEAD_IP" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "deploy/join.sh --head $RAY_HEAD_IP:6379" in worker
    setup = " ".join(config["setup_commands"])
    assert "uv sync --frozen" in setup and "prepare.py" in setup and "chmod 600 ~/.ray/auth_token" in setup
