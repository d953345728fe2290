"""Secrets stay where they belong (safety/redact.py):

- the journal holds no password: config-carrying events are redacted on append
  (the coordinator's campaign_started config holds redis://:PASSWORD@host:port/db);
- no reader prints one, even from a journal an older version wrote with the password
  in it: `swarm journal` in every format, --plot, --follow, `swarm status`, through
  the real SQLite and Redis backends;
- an agent command runs without the journal URL, the Redis password, the Ray token
  or any URL with a password, and keeps its own API key;
- a worker actor (a real Ray worker process started by a driver that holds
  ANTHROPIC_API_KEY) drops it from its own environment.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_worker import standin_repo

from agents.base import Hypothesis
from agents.command_agent import CommandImplementer
from coordinator.config import SwarmConfig
from journal import Event, open_journal
from journal.views import replay
from safety.redact import agent_env, is_secret, redact, redact_text, scrub_environ
from tests.redis_server import PASSWORD, redis_server  # noqa: F401 (fixture)
from worker import make_full_bundle

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-ant-test-SECRET-4242"
TOKEN = "tok-SECRET-5151"


def config_with_secrets(journal_url: str) -> dict:
    """The coordinator's real config as campaign_started records it, with a key and a token in it."""
    return SwarmConfig(journal=journal_url, agents={"model": "claude-x", "api_key": API_KEY},
                       env={"AUTORESEARCH_PROFILE": "tiny", "HF_TOKEN": TOKEN}).to_dict()


def test_redaction_rule():
    assert redact_text("redis://:pw@10.0.0.5:6380/2") == "redis://:***@10.0.0.5:6380/2"
    assert redact_text("rediss://swarm:p%40ss@head.local:6380/0") == "rediss://swarm:***@head.local:6380/0"
    assert redact_text("redis://head:6380/0?password=pw&db=1") == "redis://head:6380/0?password=***&db=1"
    assert redact_text("/home/me/.swarm/journal.db") == "/home/me/.swarm/journal.db"
    cfg = redact(config_with_secrets("redis://:pw@h:6380/0"))
    assert cfg["journal"] == "redis://:***@h:6380/0" and cfg["agents"] == {"model": "claude-x", "api_key": "***"}
    assert cfg["env"] == {"AUTORESEARCH_PROFILE": "tiny", "HF_TOKEN": "***"} and cfg["baseline_trials"] == 5
    assert is_secret("ANTHROPIC_API_KEY") and is_secret("X", "redis://:pw@h:1/0") and not is_secret("PATH", "/bin")
    env = {"ANTHROPIC_API_KEY": "k", "SWARM_JOURNAL": "j.db", "PATH": "/bin", "RAY_ADDRESS": "h:6379"}
    assert scrub_environ(env) == ["ANTHROPIC_API_KEY", "SWARM_JOURNAL"] and env == {"PATH": "/bin",
                                                                                    "RAY_ADDRESS": "h:6379"}


# -- the journal and everything that reads it ------------------------------------------------------

def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _follow_until(url, campaign, fmt, wanted_id, write_more) -> str:
    """`swarm journal --follow` output until the event `wanted_id` (written by write_more() once the
    follower printed the first line) has been printed."""
    cmd = [sys.executable, "-m", "journal", url, "--campaign", campaign, "--follow"] + (["--format", fmt] if fmt else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    reader = threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout])
    reader.start()
    try:
        deadline = time.monotonic() + 120    # generous: a loaded machine
        while not lines and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        write_more()
        while not any(wanted_id in x or "campaign_resumed" in x for x in lines) \
                and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=10)
    return "".join(lines)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_no_password_in_the_journal_or_any_view(backend, tmp_path, request):
    if backend == "sqlite":
        url = str(tmp_path / "journal.db")
        password = "hunter2-SECRET-7373"
        recorded_url = f"redis://:{password}@10.1.2.3:6380/0"   # what the config of an earlier campaign held
    else:
        url = request.getfixturevalue("redis_server").url
        password, recorded_url = PASSWORD, url
    secrets = (password, API_KEY, TOKEN)
    old, new = f"old-{backend}-{os.getpid()}", f"new-{backend}-{os.getpid()}"

    # a campaign journaled by an earlier version: the password went into the store as it was
    with open_journal(url, campaign=old) as j:
        started = Event(campaign=old, source="coordinator", type="campaign_started",
                        data={"config": config_with_secrets(recorded_url), "target": {"name": "t"}})
        j._append(started)
        j.emit("lab_note", source="analyst", author="analyst", title="first note", text="nothing yet")
        raw = json.dumps([ev.to_dict() for _, ev in j._page(None, 10)])
        assert password in raw and API_KEY in raw        # the old journal really holds them
        state = replay(list(j.read()), old)               # what every view is built from (plot too)
    assert state.config["journal"] == recorded_url.replace(password, "***")

    # today's writer: the store itself never holds them
    with open_journal(url, campaign=new) as j:
        j.emit("campaign_started", source="coordinator", config=config_with_secrets(recorded_url), target={})
        j.emit("campaign_resumed", source="coordinator", config=config_with_secrets(recorded_url))
        raw = json.dumps([ev.to_dict() for _, ev in j._page(None, 10)])
    assert not any(s in raw for s in secrets)
    assert recorded_url.replace(password, "***") in raw   # host, port and database stay readable

    outputs = {}
    for fmt in ("table", "markdown", "tsv", "json"):
        r = _cli("-m", "journal", url, "--campaign", old, "--format", fmt)
        assert r.returncode == 0, r.stderr
        outputs[fmt] = r.stdout + r.stderr
    assert recorded_url.replace(password, "***") in outputs["markdown"]   # the config is shown, redacted
    plot = tmp_path / "p.png"
    r = _cli("-m", "journal", url, "--campaign", old, "--plot", str(plot))
    assert r.returncode == 0 and plot.exists(), r.stderr
    outputs["plot"] = r.stdout + r.stderr
    r = _cli("-m", "swarm.cli", "status", "--journal", url, "--campaign", old)
    assert r.returncode == 0 and f"campaign {old}" in r.stdout, r.stdout + r.stderr
    outputs["status"] = r.stdout + r.stderr

    # --follow: the events so far, then an old-style campaign_resumed arriving live
    for fmt in ("json", None):
        resumed = Event(campaign=old, source="coordinator", type="campaign_resumed",
                        data={"config": config_with_secrets(recorded_url)})

        def write_more(ev=resumed):
            with open_journal(url, campaign=old) as j:
                j._append(ev)
        outputs[f"follow-{fmt}"] = out = _follow_until(url, old, fmt, resumed.id, write_more)
        assert "campaign_resumed" in out, out                 # the live event was printed
        if fmt == "json":
            assert started.id in out and resumed.id in out

    for what, text in outputs.items():
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{what} printed {leaked}"


# -- the agent command's environment -----------------------------------------------------------------

def test_agent_command_runs_without_the_swarms_credentials(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "train.py").write_text("LR = 0.04\n")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"]):
        subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True)
    swarm = {"SWARM_JOURNAL": "redis://:pw-SECRET-1@head:6380/0", "SWARM_REDIS_PASSWORD": "pw-SECRET-2",
             "REDIS_URL": "redis://head:6380/0", "RAY_AUTH_TOKEN": "ray-SECRET-3",
             "BACKUP_URL": "https://me:pw-SECRET-4@backup.example/x"}
    own = {"ANTHROPIC_API_KEY": "sk-ant-own-key", "OPENAI_API_KEY": "sk-openai-own", "PATH": os.environ["PATH"]}
    for k, v in {**swarm, **own}.items():
        monkeypatch.setenv(k, v)
    dump = tmp_path / "env.json"
    script = tmp_path / "agent.py"
    script.write_text("import json, os, sys\njson.dump(dict(os.environ), open(sys.argv[1], 'w'))\n"
                      "open('train.py', 'w').write('LR = 0.06\\n')\n")
    impl = CommandImplementer({"command": [sys.executable, str(script), str(dump)], "timeout_s": 60,
                               "env": {"EXTRA_JOURNAL": "redis://:pw-SECRET-5@head:6380/0", "MY_SETTING": "1"}})
    h = Hypothesis(hypothesis_id="h1", title="LR up", rationale="r", expected_effect="-0.01", risk="low",
                   agent="t")
    report = impl.implement(h, ws)
    assert report["changed"] == ["train.py"], report
    env = json.loads(dump.read_text())
    assert not (set(swarm) | {"EXTRA_JOURNAL"}) & set(env)
    assert "SECRET" not in json.dumps(env)
    assert {k: env[k] for k in own} == own and env["MY_SETTING"] == "1"       # its own login stays
    assert env["SWARM_HYPOTHESIS_ID"] == "h1" and env["GIT_CONFIG_KEY_0"] == "core.hooksPath"
    assert agent_env({"SWARM_PROMPT": "x", "SWARM_WORKSPACE": "/w"}) == {"SWARM_PROMPT": "x", "SWARM_WORKSPACE": "/w"}


# -- a real Ray worker process -----------------------------------------------------------------------

def test_worker_actor_drops_secrets_from_its_own_environment(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from worker.actor import remote_class

    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("SWARM_JOURNAL", "redis://:pw-SECRET-6@head:6380/0")
    monkeypatch.setenv("SWARM_VISIBLE", "yes")
    path, _ = standin_repo(tmp_path / "src")
    ray.init(address="local", num_cpus=1, resources={"mlx": 1}, include_dashboard=False, log_to_driver=False)
    try:
        @ray.remote(num_cpus=0)
        def environment():
            return dict(os.environ)
        inherited = ray.get(environment.remote(), timeout=300)   # a Ray worker process inherits them
        assert inherited.get("ANTHROPIC_API_KEY") == API_KEY and "SWARM_JOURNAL" in inherited

        actor = remote_class().remote("sec-1", str(tmp_path / "w"), campaign="sectest", heartbeat_s=0)
        ray.get(actor.load_repo.remote(make_full_bundle(path)), timeout=300)
        env = ray.get(actor.__ray_call__.remote(lambda self: dict(os.environ)), timeout=300)
        assert "ANTHROPIC_API_KEY" not in env and "SWARM_JOURNAL" not in env
        assert API_KEY not in json.dumps(env) and "pw-SECRET-6" not in json.dumps(env)
        assert env["SWARM_VISIBLE"] == "yes" and env.get("PATH")           # the rest stays
        assert ray.get(actor.stop.remote(graceful=True), timeout=300) is True
    finally:
        ray.shutdown()
