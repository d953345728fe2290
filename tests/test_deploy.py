"""A swarm across several hosts, simulated on one machine with the deploy scripts.

Each host is a network namespace of its own (ip netns) with one veth link into a
bridge, which lives in a namespace of its own too: nothing here touches the
machine's own network, and no packet can leave the test's namespaces.

  head    10.77.0.1  deploy/head.sh --no-worker: Redis (password, AOF) + Ray head (token auth);
                     the coordinator (`swarm run --address ... --journal redis://...`) runs here
  mac1/2  10.77.0.2-3 deploy/join.sh with the token copied from the head: one `mlx` each
  reader  10.77.0.4  another machine: reads the lab journal live (`swarm journal redis://... --follow`),
                     tries to join without a token and with a wrong one, uses a wrong Redis password

The campaign uses the offline agent and the real tiny-profile train.py (4 s budget).
Once both workers have finished a trial, the host running the next one is cut off
the network mid-trial (its link to the bridge goes down, like a Mac that sleeps or
leaves the Wi-Fi): its trial is journaled aborted once and run again on the other
host. `swarm doctor --cluster` runs on the head before the campaign (every node's own
checks through Ray). Everything the test starts is killed at the end through the
namespaces (`ip netns pids`), and the namespaces are deleted.

Needs root for `ip netns` (CI runs as root); skipped with the reason otherwise. There
is no loopback fallback on purpose: in the machine's own namespace Ray 2.60 also
talks to the cloud metadata address (169.254.169.254) and DNS, traffic a test must
not send; inside a namespace without a route those calls fail at once.
Never `ray stop` here: it stops every Ray process of the machine, other tests' too.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fast_train import fast

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
PYTHON = sys.executable
SUBNET = "10.77.0"                 # the simulated LAN, inside the test's namespaces only
RAY_PORT = 6379                    # deploy defaults: Ray's GCS ...
REDIS_PORT = 6380                  # ... and Redis, on a port of its own
CAMPAIGN = "desk1"
BUDGET = 10                        # seconds of training per trial (train.py's cheap step: many steps, so the
                                   # cut-off has a window of progress events before the trial ends)
EVAL_TOKENS = "8192"               # a small validation set keeps each trial short
LEASE_S = 15                       # a silent worker loses its trial after this long
MAX_TRIALS = 4                     # 2 baselines in parallel, then 1 baseline + 1 candidate, then the re-run
OBJECT_STORE = "100000000"         # bytes of object store per node (bundles are small)
CAMPAIGN_TIMEOUT = 1500            # seconds for the whole campaign, at most (~12 min at load 20-30; pytest stops a test at 1800)
# Target files copied into the research repository the campaign works on.
TARGET_FILES = ("prepare.py", "train.py", "evaluate.py", "target.toml", "program.md")
# Start-up seconds a trial may take on top of its budget until its worker has measured one (the
# target's `grace`, 300 s by default): generous, as this test is about hosts, not the clock, and on
# a loaded machine a 4 s trial has taken over 120 s to start.
GRACE_S = 900


# -----------------------------------------------------------------------------
# Hosts

def _can_netns() -> str | None:
    """None when network namespaces work here, else why not."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "ip netns needs root"
    probe = f"swdprobe{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"ip netns add failed: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*argv, check=True, timeout=60, **kw):
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {p.returncode}: {p.stderr.strip()}")
    return p


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    port: str                      # its veth end on the bridge (down = cut off)
    lan_ns: str
    root: Path                     # its files: home/, ray/ (Ray's --temp-dir)
    base_env: dict = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def temp_dir(self) -> Path:
        return self.root / "ray"

    @property
    def state(self) -> Path:
        return self.home / ".local" / "state" / "autoresearch-swarm"

    def env(self, **extra) -> dict:
        return {**self.base_env, "HOME": str(self.home), **{k: str(v) for k, v in extra.items()}}

    def cmd(self, argv) -> list:
        return ["ip", "netns", "exec", self.ns, *[str(a) for a in argv]]

    def run(self, argv, timeout=120, env=None, **extra_env):
        return subprocess.run(self.cmd(argv), cwd=REPO_ROOT, env=env or self.env(**extra_env),
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, argv, log_path, **extra_env):
        with open(log_path, "w") as log:     # the child keeps its own copy of the descriptor
            return subprocess.Popen(self.cmd(argv), cwd=REPO_ROOT, env=self.env(**extra_env), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def cut(self):
        """Take its link off the bridge: the host runs on, the others cannot reach it."""
        sh("ip", "netns", "exec", self.lan_ns, "ip", "link", "set", self.port, "down")

    def kill_all(self):
        """Every process in its namespace (Ray, Redis, trials): what a power cut does."""
        for _ in range(3):
            pids = sh("ip", "netns", "pids", self.ns, check=False).stdout.split()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            time.sleep(0.3)


class Lan:
    """Namespaced hosts on a bridge: <prefix>-lan holds br0; each host gets eth0 = SUBNET.i/24."""

    def __init__(self, root: Path, names, base_env: dict):
        self.prefix = f"swd{os.getpid()}"
        self.lan_ns = f"{self.prefix}-lan"
        self.hosts: dict[str, Host] = {}
        self._cleanup_stale()
        try:
            sh("ip", "netns", "add", self.lan_ns)
            self._in_lan("ip", "link", "set", "lo", "up")
            self._in_lan("ip", "link", "add", "br0", "type", "bridge")
            self._in_lan("ip", "link", "set", "br0", "up")
            for i, name in enumerate(names, start=1):
                ns, port = f"{self.prefix}-{name}", f"p{i}"
                sh("ip", "netns", "add", ns)
                self.hosts[name] = host = Host(name, ns, f"{SUBNET}.{i}", port, self.lan_ns, root / name, base_env)
                self._in_lan("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._in_lan("ip", "link", "set", port, "master", "br0")
                self._in_lan("ip", "link", "set", port, "up")
                sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
                sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{host.ip}/24", "dev", "eth0")
                sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
                host.home.mkdir(parents=True)
                host.temp_dir.mkdir(parents=True)
        except BaseException:
            self.close()
            raise

    def _in_lan(self, *argv):
        sh("ip", "netns", "exec", self.lan_ns, *argv)

    @staticmethod
    def _cleanup_stale():
        """Namespaces left by an earlier run of this test whose pytest died (named swd<pid>-...)."""
        listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
        for line in listed:
            m = re.match(r"^(swd(\d+)-\S+)", line.strip())
            if m and not os.path.exists(f"/proc/{m.group(2)}"):
                for pid in sh("ip", "netns", "pids", m.group(1), check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                sh("ip", "netns", "del", m.group(1), check=False)

    def close(self):
        for host in self.hosts.values():
            host.kill_all()
        for host in self.hosts.values():
            sh("ip", "netns", "del", host.ns, check=False)
        sh("ip", "netns", "del", self.lan_ns, check=False)


# -----------------------------------------------------------------------------
# Fixtures

def _git(repo, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout.strip()


@pytest.fixture(scope="module")
def lan(tiny_data):
    why = _can_netns()
    if why:
        pytest.skip(f"multi-host deploy test needs network namespaces: {why}")
    # Short paths: Ray's unix sockets live under --temp-dir (at most 107 characters).
    root = Path(tempfile.mkdtemp(prefix="swd", dir="/tmp"))
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
                "RAY_USAGE_STATS_ENABLED": "0",
                # the coordinator runs under `uv run pytest`: without this Ray would start every worker
                # with `uv run` in a copy of this checkout (and try to install packages)
                "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "AUTORESEARCH_CACHE": str(tiny_data.cache_root),
                "AUTORESEARCH_PROFILE": "tiny"}
    net = Lan(root, ["head", "mac1", "mac2", "reader"], base_env)
    try:
        yield net
    finally:
        net.close()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Cluster:
    lan: Lan
    head_out: str
    journal: str                   # redis://:PW@head:6380/0
    fingerprint: str
    join_line: str


@pytest.fixture(scope="module")
def cluster(lan, tiny_data):
    head = lan.hosts["head"]
    p = head.run([DEPLOY / "head.sh", "--bind", head.ip, "--no-worker", "--temp-dir", head.temp_dir,
                  "--", "--object-store-memory", OBJECT_STORE], timeout=240)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    password_file = head.state / "redis.password"
    password = password_file.read_text().strip()
    assert password and password_file.stat().st_mode & 0o777 == 0o600
    assert (head.home / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600
    # the password is read from its file in what head.sh prints, never shown itself
    assert password not in out
    assert f'redis://:$(cat {password_file})@{head.ip}:{REDIS_PORT}/0' in out
    assert ("RAY_AUTH_MODE=token RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 AUTORESEARCH_PROFILE=tiny uv run swarm run "
            f"--address {head.ip}:{RAY_PORT}") in out
    join_line = next(line.strip() for line in out.splitlines() if line.strip().startswith("deploy/join.sh"))
    fingerprint = json.loads(subprocess.run([PYTHON, "prepare.py", "--fingerprint"], cwd=REPO_ROOT,
                                            env={**os.environ, **tiny_data.env}, capture_output=True,
                                            text=True, timeout=120).stdout.splitlines()[-1])["fingerprint"]
    assert f"--head {head.ip}:{RAY_PORT}" in join_line and f"--fingerprint {fingerprint}" in join_line
    assert f"--redis {head.ip}:{REDIS_PORT}" in join_line
    return Cluster(lan, out, f"redis://:{password}@{head.ip}:{REDIS_PORT}/0", fingerprint, join_line)


def join(host: Host, join_line: str, token_file: str | None = "~/ray_auth_token", timeout=240):
    """Run the join command head.sh printed, on `host` (plus what several nodes on one machine need)."""
    argv = join_line.split()
    argv[0] = str(DEPLOY / "join.sh")
    if token_file is None:
        i = argv.index("--token-file")
        del argv[i:i + 2]
    else:
        argv[argv.index("--token-file") + 1] = token_file.replace("~", str(host.home))
    argv += ["--node-ip", host.ip, "--temp-dir", str(host.temp_dir), "--no-keep-awake",
             "--", "--object-store-memory", OBJECT_STORE]
    return host.run(argv, timeout=timeout)


def scp_token(src: Host, dst: Host):
    """What `scp head:~/.ray/auth_token ~/ray_auth_token` does between two machines."""
    shutil.copy(src.home / ".ray" / "auth_token", dst.home / "ray_auth_token")


# -----------------------------------------------------------------------------
# Tests

def test_redis_and_ray_on_the_head(cluster):
    """Redis answers only with the password, only on the LAN address; its config in the
    state folder has the password, the repository's template does not."""
    lan = cluster.lan
    head, reader = lan.hosts["head"], lan.hosts["reader"]
    conf = (head.state / "redis.conf").read_text()
    password = cluster.journal.split(":")[2].split("@")[0]
    assert f"requirepass {password}" in conf and f"bind {head.ip}\n" in conf
    assert "appendonly yes" in conf and "appendfsync everysec" in conf and f"port {REDIS_PORT}" in conf
    assert (head.state / "redis.conf").stat().st_mode & 0o777 == 0o600
    assert password not in (DEPLOY / "redis.conf.template").read_text()
    probe = ("import redis, sys\nr = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), password=sys.argv[3] or None,"
             " socket_timeout=3, socket_connect_timeout=3)\n"
             "try:\n    print(r.ping())\nexcept Exception as e:\n    print(type(e).__name__)\n")

    def said(host, addr, pw):
        return host.run([PYTHON, "-c", probe, addr, REDIS_PORT, pw], timeout=60).stdout.strip()

    assert said(reader, head.ip, password) == "True"
    assert said(reader, head.ip, "") == "AuthenticationError"
    assert said(reader, head.ip, "wrong") == "AuthenticationError"
    # bound to the LAN address only: not even the head's own loopback
    assert said(head, "127.0.0.1", password) == "ConnectionError"


def test_join_without_a_token_says_what_to_do(cluster):
    """A Mac that never got the head's token: join.sh stops before starting anything."""
    reader = cluster.lan.hosts["reader"]
    p = join(reader, cluster.join_line, token_file=None, timeout=60)
    assert p.returncode == 1
    assert "error: no Ray auth token on this machine" in p.stderr
    assert f"scp HEAD_USER@{cluster.lan.hosts['head'].ip}:.ray/auth_token" in p.stderr
    assert not (reader.home / ".ray" / "auth_token").exists()
    assert not list(reader.temp_dir.iterdir()), "no Ray node may start without a token"


def test_join_with_a_wrong_token_is_refused(cluster):
    """A Mac with a stale token: the head refuses it and join.sh says to copy the token again."""
    reader = cluster.lan.hosts["reader"]
    (reader.home / "ray_auth_token").write_text("0f" * 32)
    p = join(reader, cluster.join_line, timeout=240)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"error: the Ray head at {cluster.lan.hosts['head'].ip}:{RAY_PORT} refused this machine's token" \
        in p.stderr, p.stdout + p.stderr
    assert "fix: copy the head's current ~/.ray/auth_token again" in p.stderr
    reader.kill_all()      # whatever a refused `ray start` left behind


@pytest.fixture(scope="module")
def joined(cluster):
    """mac1 and mac2 join, each with the token copied from the head (one after the other:
    on 2 busy cores two Ray nodes starting at once can miss Ray's own 30 s start-up wait)."""
    lan = cluster.lan
    head = lan.hosts["head"]
    for name in ("mac1", "mac2"):
        host = lan.hosts[name]
        scp_token(head, host)
        p = join(host, cluster.join_line, timeout=300)
        log = p.stdout + p.stderr
        assert p.returncode == 0, f"{name}: join.sh failed:\n{log}"
        assert "✓ data" in log and f"fingerprint {cluster.fingerprint[:12]}" in log, log
        assert f"joined {head.ip}:{RAY_PORT}" in log
        token = host.home / ".ray" / "auth_token"
        assert token.read_text() == (head.home / ".ray" / "auth_token").read_text()
        assert token.stat().st_mode & 0o777 == 0o600
    return cluster


def test_doctor_checks_the_whole_cluster(joined):
    """`swarm doctor --cluster` on the head: every node, its mlx resource and its own data check."""
    lan = joined.lan
    head = lan.hosts["head"]
    p = head.run([PYTHON, "-m", "swarm.doctor", "--cluster", "--address", f"{head.ip}:{RAY_PORT}",
                  "--journal", joined.journal, "--fingerprint", joined.fingerprint], timeout=400,
                 RAY_AUTH_MODE="token")
    out = p.stdout
    assert "✓ ray auth" in out and "✓ journal" in out, out
    ray_line = next(line for line in out.splitlines() if re.search(rf"[✓✗] ray +{re.escape(head.ip)}:", line))
    assert "✓" in ray_line, out
    assert "3 node(s) alive, 2 mlx (2 free)" in ray_line, out
    for name in ("mac1", "mac2"):
        ip = lan.hosts[name].ip
        assert re.search(rf"✓ node {re.escape(ip)} +alive, mlx 1", out), out
        assert re.search(rf"✓ +{re.escape(ip)} data .*fingerprint {joined.fingerprint[:12]}.*as expected", out), out
        assert re.search(rf"✓ +{re.escape(ip)} mlx ", out), out
    assert "all good" in out and p.returncode == 0, out

    # the same without RAY_AUTH_MODE=token: Ray does not present the token, and the doctor says so
    q = head.run([PYTHON, "-m", "swarm.doctor", "--address", f"{head.ip}:{RAY_PORT}"], timeout=400)
    assert q.returncode == 1, q.stdout
    assert re.search(r"✗ ray auth +RAY_AUTH_MODE is not set", q.stdout), q.stdout
    assert "fix: export RAY_AUTH_MODE=token" in q.stdout
    assert re.search(rf"✗ ray +cannot connect to Ray at {re.escape(head.ip)}:{RAY_PORT}", q.stdout), q.stdout
    assert "fix: fix the ray auth line first" in q.stdout


def _event_reader(host: Host, url: str, log_path: Path):
    """`swarm journal URL --follow --format json` on another host: every event, as it arrives."""
    proc = host.popen([PYTHON, "-m", "swarm.cli", "journal", url, "--campaign", CAMPAIGN, "--follow",
                       "--format", "json"], log_path)
    events: list = []

    def pump():
        with open(log_path) as f:
            while True:
                line = f.readline()
                if not line:
                    if proc.poll() is not None:
                        return
                    time.sleep(0.2)
                    continue
                if line.startswith("{"):
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        pass
    threading.Thread(target=pump, daemon=True).start()
    return proc, events


def _owner(lan: Lan, worker: str) -> str | None:
    """The host whose home holds the clone of worker `worker` (workers clone into ~/.autoresearch-swarm)."""
    for name, host in lan.hosts.items():
        if (host.home / ".autoresearch-swarm" / "workers" / CAMPAIGN / worker / "repo").is_dir():
            return name
    return None


def test_campaign_across_hosts_survives_a_host_cut_off(joined, tiny_data, tmp_path):
    cluster = joined
    lan = cluster.lan
    head, reader = lan.hosts["head"], lan.hosts["reader"]

    repo = tmp_path / "research"
    repo.mkdir()
    for name in TARGET_FILES:
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, repo / name)
    with open(repo / "target.toml", "a") as f:
        f.write(f"grace = {GRACE_S}\n")
    (repo / "train.py").write_text(fast((repo / "train.py").read_text()))
    _git(repo, "init", "-q", "-b", "master")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "start")

    follower, events = _event_reader(reader, cluster.journal, tmp_path / "follow.log")
    run_log = tmp_path / "run.log"
    coordinator = head.popen(
        [PYTHON, "-m", "swarm.cli", "run", "--address", f"{head.ip}:{RAY_PORT}", "--journal", cluster.journal,
         "--repo", repo, "--campaign", CAMPAIGN, "--agent", "offline", "--time-budget", BUDGET,
         "--baseline-trials", "3", "--max-trials", MAX_TRIALS, "--lease", LEASE_S, "--no-smoke", "--no-heldout",
         "--env", f"AUTORESEARCH_EVAL_TOKENS={EVAL_TOKENS}"],
        run_log, RAY_AUTH_MODE="token")

    def log_tail():
        return run_log.read_text()[-4000:]

    def of(type_, **match):
        return [e for e in list(events) if e["type"] == type_
                and all(e["data"].get(k) == v for k, v in match.items())]

    cut = None
    try:
        deadline = time.time() + CAMPAIGN_TIMEOUT
        while time.time() < deadline and coordinator.poll() is None:
            done = {e["data"]["worker"] for e in of("trial_finished", status="ok")}
            if cut is None and len(done) >= 2:
                # both hosts have run a trial: cut off the host of the next trial, mid-training
                first_round = {e["data"]["trial_id"] for e in of("trial_finished")}
                for e in of("trial_progress"):
                    tid = e["data"]["trial_id"]
                    if tid not in first_round and not of("trial_finished", trial_id=tid):
                        started = of("trial_started", trial_id=tid)
                        cut = {"trial_id": tid, "worker": e["data"]["worker"],
                               "host": _owner(lan, e["data"]["worker"]),
                               "kind": started[0]["data"]["kind"] if started else None}
                        lan.hosts[cut["host"]].cut()
                        break
            time.sleep(0.3)
        else:
            if coordinator.poll() is None:
                pytest.fail(f"the campaign did not finish in {CAMPAIGN_TIMEOUT} s:\n{log_tail()}")
        assert coordinator.wait(timeout=60) == 0, log_tail()
    finally:
        if coordinator.poll() is None:
            os.killpg(coordinator.pid, signal.SIGKILL)
        # the follower sees the last event before it is stopped
        deadline = time.time() + 120
        while time.time() < deadline and coordinator.returncode is not None and not of("campaign_stopped"):
            time.sleep(0.3)
        os.killpg(follower.pid, signal.SIGTERM)
        follower.wait(timeout=30)

    assert cut is not None, f"no trial to cut off:\n{log_tail()}"
    assert "reached --max-trials" in log_tail(), log_tail()

    # every host ran trials, each worker in its own clone on its own branch
    joined_ev = of("worker_joined")
    workers = sorted(e["data"]["worker"] for e in joined_ev)
    assert len(workers) == 2 and len({e["data"]["track"] for e in joined_ev}) == 1
    owners = {w: _owner(lan, w) for w in workers}
    assert sorted(owners.values()) == ["mac1", "mac2"], owners
    for w, host in owners.items():
        assert of("trial_finished", worker=w, status="ok"), f"no trial finished on {host}"
        clone = lan.hosts[host].home / ".autoresearch-swarm" / "workers" / CAMPAIGN / w / "repo"
        assert _git(clone, "rev-parse", "--abbrev-ref", "HEAD") == f"swarm/{CAMPAIGN}/{w}"
        assert _git(clone, "rev-parse", "--verify", f"refs/heads/swarm/{CAMPAIGN}/{w}")
        assert list((clone.parent / "logs").glob("*.log")), f"no trial log on {host}"

    # the trial cut off mid-training was journaled aborted once, then run again on the other host
    cut_ev = of("trial_finished", trial_id=cut["trial_id"])
    assert len(cut_ev) == 1 and cut_ev[0]["data"]["status"] == "aborted", cut_ev
    assert f"worker {cut['worker']} lost" in cut_ev[0]["data"]["reason"]
    assert any(e["data"]["worker"] == cut["worker"] for e in of("worker_lost"))
    key = (cut_ev[0]["data"]["commit"], cut_ev[0]["data"]["kind"], cut_ev[0]["data"]["seed"])
    redone = [e["data"] for e in of("trial_finished", status="ok")
              if (e["data"]["commit"], e["data"]["kind"], e["data"]["seed"]) == key]
    assert len(redone) == 1 and redone[0]["worker"] != cut["worker"], redone
    ok = [e["data"] for e in of("trial_finished", status="ok")]
    assert len(ok) == MAX_TRIALS and all(0 < d["val_bpb"] < 20 for d in ok)
    assert len({d["trial_id"] for d in ok}) == len(ok)
    assert of("candidate_created") and of("campaign_stopped")

    # the lab journal, read on another host: one results.tsv row per counted trial
    p = reader.run([PYTHON, "-m", "swarm.cli", "journal", cluster.journal, "--campaign", CAMPAIGN,
                    "--format", "tsv"], timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [line.split("\t") for line in p.stdout.splitlines() if line.strip()]
    rows = {r[lines[0].index("trial_id")]: dict(zip(lines[0], r, strict=True)) for r in lines[1:]}
    assert {d["trial_id"] for d in ok} <= set(rows), p.stdout
    assert rows[cut["trial_id"]]["status"] == "aborted" and rows[cut["trial_id"]]["worker"] == cut["worker"]
    # persisted: the events are in Redis's append-only file on the head's disk
    aof = b"".join(f.read_bytes() for f in (head.state / "redis").rglob("*.aof*") if f.is_file())
    assert cut["trial_id"].encode() in aof


def test_wrong_redis_password_is_a_clear_error(joined):
    lan = joined.lan
    reader = lan.hosts["reader"]
    wrong = re.sub(r"redis://:[^@]+@", "redis://:not-the-password@", joined.journal)
    p = reader.run([PYTHON, "-m", "swarm.cli", "journal", wrong], timeout=120)
    assert p.returncode == 1
    assert "authentication failed: check the password" in p.stderr and "not-the-password" not in p.stderr
    d = reader.run([PYTHON, "-m", "swarm.doctor", "--journal", wrong], timeout=300)
    assert d.returncode == 1
    line = next(line for line in d.stdout.splitlines() if "journal" in line and ("✗" in line or "✓" in line))
    assert "✗" in line and "authentication failed" in line, d.stdout
    assert "fix: use the password head.sh made" in d.stdout
