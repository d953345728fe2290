"""A model backend runs as its own Ray actor: the real `anthropic` SDK, in the actor's process,
against the local Messages API stand-in answering as a research model. The campaign gets plain
answers back and journals them (hypotheses, candidates, usage of every call, lab notes); the key
never leaves the environment; a node without the key gets the agents in the coordinator instead;
a killed actor is restarted and its calls are tried again."""

import io
import json
import os
import re

import pytest
from anthropic_standin import StandIn, outside_fences
from campaign_events import events_of, of_type, state_of
from model_standin import ResearchModel
from synthetic import make_repo

from agents.constant_rewriter import constant_values
from rich.console import Console

from coordinator.campaign import Campaign
from swarm.cli import render_status
from coordinator.config import load_config

KEY = "sk-standin-actor-0123456789"
SYNTH_ENV = {"AUTORESEARCH_SYNTH_SLEEP": "0.3"}
UNTIL = "600s"    # a campaign's safety stop, far beyond what its trials need on a loaded machine


@pytest.fixture(scope="module")
def ray_with_key():
    """A local Ray whose processes (the agent actor's too) see the API key, as a head node
    started from a shell that exported it would."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    os.environ["ANTHROPIC_API_KEY"] = KEY
    try:
        ray.init(address="local", num_cpus=2, resources={"mlx": 2}, include_dashboard=False, log_to_driver=False)
        yield ray
    finally:
        ray.shutdown()
        os.environ.pop("ANTHROPIC_API_KEY", None)


def config(repo, tag, api, **flags):
    flags = {"repo": str(repo), "campaign": tag, "poll_s": 0.2, "env": dict(SYNTH_ENV), "agent": "anthropic",
             "agents": {"anthropic": {"base_url": api.url, "model": "claude-standin", "max_attempts": 2}},
             **flags}
    return load_config(flags, environ={})


def test_model_backend_runs_as_a_ray_actor(ray_with_key, tmp_path):
    repo = make_repo(tmp_path / "repo")
    model = ResearchModel()
    with StandIn(responder=model, delay_s=0.2) as api:
        cfg = config(repo, "actor", api, workers=2, max_trials=30, baseline_trials=2, buffer=4, agent_threads=4,
                     analyst_every=3, smoke=False, heldout=False, until=UNTIL)
        camp = Campaign(cfg, log=lambda m: None)
        reason = camp.run()
    assert reason == "reached --max-trials 30"
    # the agent answered from its own process, not the coordinator's
    assert camp.agents.runner.actor is not None and camp.agents.runner.info["pid"] != os.getpid()
    assert camp.agents.runner.backend == "anthropic"
    assert api.requests and {r.headers["authorization"] for r in api.requests} == {f"Bearer {KEY}"}

    events = events_of(repo, "actor")
    # every model call is journaled once, by the coordinator, with tokens and latency
    usage = of_type(events, "agent_usage")
    assert len(usage) == len(api.requests) == sum(model.calls.values())
    assert all(u.source == "coordinator" and u.data["input_tokens"] > 0 and u.data["latency_s"] > 0
               for u in usage)
    assert {u.data["purpose"] for u in usage} >= {"propose", "implement", "analyst"}
    # swarm status shows the calls, their tokens and their latency (the stand-in waits 0.2 s)
    buf = io.StringIO()
    render_status(state_of(events, "actor"), Console(file=buf, width=200))
    shown = re.search(r"agent usage: (\d+) calls, .* mean latency (\d+\.\d)s", buf.getvalue())
    assert shown and int(shown.group(1)) == len(usage) and float(shown.group(2)) >= 0.2
    # constant-only hypotheses are set at once; the others are the model's edits, one constant each
    created = of_type(events, "candidate_created")
    by = {}
    for ev in created:
        by.setdefault(ev.data["implementer"], []).append(ev)
    assert set(by) == {"constants", "anthropic"}, set(by)
    assert sum(1 for u in usage if u.data["purpose"] == "implement") >= len(by["anthropic"])
    hyp = {ev.data["hypothesis_id"]: ev.data for ev in of_type(events, "hypothesis_proposed")}
    for ev in by["anthropic"]:
        assert not hyp[ev.data["hypothesis_id"]].get("params")
        changed = [line for line in ev.data["diff"].splitlines() if line.startswith("+") and " = " in line]
        assert len(changed) == 1, ev.data["diff"]
    initial = constant_values((repo / "train.py").read_text())
    assert initial["WARMDOWN_RATIO"] == 0.5          # the campaign never edits the checkout itself
    # the model's lab note, after the analyst's third verdict
    notes = of_type(events, "lab_note")
    assert notes and notes[0].data["author"] == "analyst"
    assert len(of_type(events[:events.index(notes[0])], "verdict")) >= 3
    # the key is in no event
    assert KEY not in json.dumps([ev.data for ev in events])


def test_without_the_key_on_the_ray_node_the_agents_run_in_the_coordinator(ray_with_key, tmp_path, monkeypatch):
    """The coordinator sees the key, its Ray node does not (a head started by a service, or
    before the key was exported): the campaign still runs, with the agents in the coordinator's
    process, and says how to give them their actor."""
    monkeypatch.setenv("SWARM_TEST_LATE_KEY", KEY)   # after Ray started: the node's processes lack it
    repo = make_repo(tmp_path / "repo")
    logs = []
    with StandIn(responder=ResearchModel()) as api:
        cfg = config(repo, "nokey", api, workers=1, max_trials=10, baseline_trials=2, smoke=False, heldout=False,
                     analyst_every=0, until=UNTIL)
        cfg.agents["anthropic"]["api_key_env"] = "SWARM_TEST_LATE_KEY"
        camp = Campaign(cfg, log=logs.append)
        reason = camp.run()
    assert reason == "reached --max-trials 10"
    assert camp.agents.runner.actor is None and camp.agents.runner.backend == "anthropic"
    note = [line for line in logs if "started without $SWARM_TEST_LATE_KEY" in line]
    assert note and "export SWARM_TEST_LATE_KEY before `ray start --head`" in note[0]
    assert api.requests and {r.headers["authorization"] for r in api.requests} == {f"Bearer {KEY}"}
    assert of_type(events_of(repo, "nokey"), "candidate_created")


def test_a_killed_agent_actor_is_restarted_and_its_calls_tried_again(ray_with_key, tmp_path):
    """The agent actor's process dies during a model call (a crash, the OOM killer): Ray starts it
    again, the call in flight comes back as an error, and the campaign tries it again after a
    backoff. No hypothesis is lost or marked invalid because of it."""
    import signal
    import threading
    import time

    from swarm.cli import main as swarm

    repo = make_repo(tmp_path / "repo")
    model = ResearchModel()
    holder, killed = {}, threading.Event()

    def responder(request):
        if len(api.requests) == 2 and not killed.is_set():   # the second call: kill its caller
            killed.set()
            os.kill(holder["camp"].agents.runner.info["pid"], signal.SIGKILL)
        return model(request)

    logs = []
    seen = threading.Event()

    def stop_when_a_call_after_the_restart_is_journaled():
        # a condition, not a trial count: on a loaded machine the restart may take longer than 10 trials
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (killed.is_set() and len(
                of_type(events_of(repo, "killed"), "agent_usage")) >= 2):
            time.sleep(0.5)
        seen.set()
        swarm(["stop", "--repo", str(repo), "--campaign", "killed", "--reason", "test"])

    with StandIn(responder=responder, delay_s=0.3) as api:
        cfg = config(repo, "killed", api, workers=1, max_trials=10_000, baseline_trials=2, buffer=2,
                     agent_threads=2, analyst_every=0, smoke=False, heldout=False, until="900s")
        camp = holder["camp"] = Campaign(cfg, log=logs.append)
        camp.agent_backoff_s = 0.2
        watcher = threading.Thread(target=stop_when_a_call_after_the_restart_is_journaled, daemon=True)
        watcher.start()
        reason = camp.run()
        watcher.join(60)
    assert killed.is_set() and seen.is_set()
    assert reason == "stop requested (test)", logs[-5:]
    assert any("the agent actor stopped answering" in line for line in logs), logs
    events = events_of(repo, "killed")
    assert not of_type(events, "candidate_invalid")
    proposed = {ev.data["hypothesis_id"] for ev in of_type(events, "hypothesis_proposed")}
    built = {ev.data["hypothesis_id"] for ev in of_type(events, "candidate_created")}
    assert built and built <= proposed
    # calls after the restart were answered (by the restarted process) and journaled
    assert len(of_type(events, "agent_usage")) >= 2


def test_a_crashing_implementation_goes_back_to_the_model_with_its_log(ray_with_key, tmp_path):
    """The model's first edit crashes in the worker's smoke run: the candidate is invalid, and the
    model is asked once more, shown the failed diff and the log's tail inside a fence; its fix
    becomes a candidate that trains."""
    repo = make_repo(tmp_path / "repo")
    model = ResearchModel()
    first = {}

    def responder(request):
        reply = model(request)
        uses = [b for b in reply.body.get("content", []) if b.get("name") == "replace_in_file"]
        if uses and not first:                      # the first edit: it breaks train.py at import
            first["text"] = request.text()
            uses[0]["input"]["new"] += "\nraise RuntimeError('boom: this edit crashes on purpose')"
        return reply

    with StandIn(responder=responder) as api:
        cfg = config(repo, "fix", api, workers=1, max_trials=12, baseline_trials=2, buffer=2, agent_threads=2,
                     analyst_every=0, smoke=True, heldout=False, until=UNTIL)
        reason = Campaign(cfg, log=lambda m: None).run()
        requests = list(api.requests)
    assert reason == "reached --max-trials 12"
    events = events_of(repo, "fix")
    fix = of_type(events, "fix_requested")
    assert len(fix) == 1 and fix[0].data["attempt"] == 1 and "boom" in fix[0].data["log_tail"]
    hid = fix[0].data["hypothesis_id"]
    verdicts = {ev.data["candidate_id"]: ev.data["verdict"] for ev in of_type(events, "verdict")}
    built = [ev.data["candidate_id"] for ev in of_type(events, "candidate_created") if ev.data["hypothesis_id"] == hid]
    assert len(built) == 2 and verdicts.get(built[0]) == "invalid"
    assert verdicts.get(built[1]) in ("discard", "promising", "confirmed")   # the fix ran
    # the second implement request told the model what failed, the log only inside a fence
    again = [r for r in requests if "the previous implementation did not run" in r.text()]
    assert len(again) == 1
    text = again[0].text()
    assert "+raise RuntimeError('boom" in text                 # its own diff, as a diff
    assert "RuntimeError: boom: this edit crashes on purpose" in text    # the traceback, from the log
    assert "RuntimeError: boom" not in outside_fences(text)
