"""The agent runs ahead of the workers: a proposer stuck in a call does not stop dispatching,
every call's usage lands in the journal as agent_usage, the analyst writes a lab note every N
verdicts, and an AgentError is the backend's failure (overload: tried again; bad key: the
campaign stops with the message), never the hypothesis's."""

import io
import threading
import time
from dataclasses import replace

import pytest
from campaign_events import events_of, of_type, state_of
from synthetic import make_repo

from agents.base import AgentError
from agents.base import Proposer
from agents.offline import OfflineImplementer, OfflineProposer
from agents.proposals import title_params
from agents.usage import UsageMeter, usage_record
from rich.console import Console

from coordinator.campaign import Campaign
from swarm.cli import render_status
from coordinator.config import load_config

SYNTH_ENV = {"AUTORESEARCH_SYNTH_SLEEP": "0.3"}   # a trial "trains" this long
UNTIL = "600s"    # a campaign's safety stop, far beyond what its trials need on a loaded machine


@pytest.fixture(scope="module")
def ray_local():
    import ray
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, resources={"mlx": 2}, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def config(repo, tag, **flags):
    flags = {"repo": str(repo), "campaign": tag, "poll_s": 0.2, "env": dict(SYNTH_ENV), **flags}
    return load_config(flags, environ={})


def record(meter, agent, purpose):
    meter.add(usage_record(agent, "claude-sonnet-4-5", purpose,
                           {"input_tokens": 1000, "output_tokens": 100}, latency_s=0.01))


class GatedProposer(Proposer):
    """The offline agent's ideas; the first call answers at once, every later call blocks
    until the gate opens (a model that takes forever). Each answered call records usage."""
    name = "gated"

    def __init__(self):
        self.offline = OfflineProposer(seed=0)
        self.usage = UsageMeter()
        self.gate = threading.Event()
        self.calls = 0
        self.blocked_at = None

    def drain_usage(self):
        return self.usage.drain()

    def propose(self, ctx, n):
        self.calls += 1
        if self.calls > 1:
            self.blocked_at = self.blocked_at or time.time()
            self.gate.wait()
        hs = self.offline.propose(ctx, n)
        record(self.usage, self.name, "propose")
        return hs


class MeteredImplementer(OfflineImplementer):
    name = "metered"

    def __init__(self):
        super().__init__()
        self.usage = UsageMeter()

    def drain_usage(self):
        return self.usage.drain()

    def implement(self, h, workspace):
        record(self.usage, self.name, "implement")
        return super().implement(h, workspace)


def test_stuck_agent_does_not_stop_the_workers(ray_local, tmp_path):
    """After one batch of hypotheses (6: at least 8 trials of work) the proposer hangs; the workers keep running the buffered
    candidates until --max-trials (the loop never waits on the agent), every answered call's
    usage is journaled, and the analyst writes a lab note after analyst_every verdicts."""
    repo = make_repo(tmp_path / "repo")
    proposer, implementer = GatedProposer(), MeteredImplementer()
    cfg = config(repo, "ahead", workers=2, max_trials=8, baseline_trials=2, buffer=6, agent_threads=4,
                 analyst_every=3, smoke=False, heldout=False, until=UNTIL)
    try:
        reason = Campaign(cfg, agent=(proposer, implementer), log=lambda m: None).run()
    finally:
        proposer.gate.set()             # let the hung call end (its thread is not waited for)
    assert reason == "reached --max-trials 8"
    events = events_of(repo, "ahead")
    # the second proposal hung before the campaign ended, and trials kept starting on both workers
    assert proposer.calls >= 2 and proposer.blocked_at is not None
    later = [ev for ev in of_type(events, "trial_started") if ev.time > proposer.blocked_at]
    assert len(later) >= 4 and {ev.data["worker"] for ev in later} == {"w1", "w2"}
    # only the first batch was proposed: the hung call never answered
    proposed = of_type(events, "hypothesis_proposed")
    created = of_type(events, "candidate_created")
    assert 0 < len(proposed) <= 6 and len(created) == len(proposed)
    assert all(ev.data["implementer"] == "metered" for ev in created)
    # one agent_usage per answered call: one proposal, one implementation per candidate
    usage = of_type(events, "agent_usage")
    assert [u.data["purpose"] for u in usage].count("propose") == 1
    assert [u.data["purpose"] for u in usage].count("implement") == len(created)
    assert all(u.source == "coordinator" and u.data["input_tokens"] == 1000 for u in usage)
    buf = io.StringIO()
    render_status(state_of(events, "ahead"), Console(file=buf, width=200))
    assert f"agent usage: {len(usage)} calls, {1000 * len(usage):,} input" in buf.getvalue()
    # the analyst's note comes after its third verdict
    notes = of_type(events, "lab_note")
    assert notes and notes[0].data["author"] == "analyst" and notes[0].data["text"]
    first_note = events.index(notes[0])
    assert len(of_type(events[:first_note], "verdict")) >= 3


class FlakyProposer(Proposer):
    """Overloaded on its first call, fine on its second, a revoked key on its third."""
    name = "flaky"

    def __init__(self):
        self.offline = OfflineProposer(seed=0)
        self.calls = 0

    def propose(self, ctx, n):
        self.calls += 1
        if self.calls == 1:
            raise AgentError("Anthropic API overloaded (529): try again later", kind="overloaded", status=529)
        if self.calls >= 3:
            raise AgentError("the Anthropic API refused the key (401): check ANTHROPIC_API_KEY", kind="auth",
                             status=401)
        return self.offline.propose(ctx, min(n, 2))


class OverloadedOnce(OfflineImplementer):
    name = "offline"

    def __init__(self):
        super().__init__()
        self.failed = set()

    def implement(self, h, workspace):
        if h.hypothesis_id not in self.failed:
            self.failed.add(h.hypothesis_id)
            raise AgentError("Anthropic API overloaded (529)", kind="overloaded", status=529)
        return super().implement(h, workspace)


def test_agent_errors_requeue_or_stop_never_invalidate(ray_local, tmp_path):
    """Overloaded calls (proposal and implementation) are tried again after a backoff and the
    hypotheses still become candidates; a refused key stops the campaign with its message."""
    repo = make_repo(tmp_path / "repo")
    proposer, implementer = FlakyProposer(), OverloadedOnce()
    cfg = config(repo, "errors", workers=1, max_trials=40, baseline_trials=2, buffer=1, agent_threads=2,
                 analyst_every=0, smoke=False, heldout=False)
    camp = Campaign(cfg, agent=(proposer, implementer), log=lambda m: None)
    camp.agent_backoff_s = 0.2
    reason = camp.run()
    assert "refused the key" in reason and "auth" in reason
    events = events_of(repo, "errors")
    stopped = of_type(events, "campaign_stopped")[-1].data
    assert "refused the key" in stopped["reason"] and stopped["error"] is True
    assert proposer.calls == 3
    assert not of_type(events, "candidate_invalid")
    proposed = {ev.data["hypothesis_id"] for ev in of_type(events, "hypothesis_proposed")}
    built = {ev.data["hypothesis_id"] for ev in of_type(events, "candidate_created")}
    assert proposed and built == proposed and implementer.failed == proposed
    assert of_type(events, "trial_finished")


class CodeChanges(OfflineProposer):
    """The offline agent's ideas as code changes: the title says what to change, no params."""
    name = "code"

    def propose(self, ctx, n):
        return [replace(h, params=None) for h in super().propose(ctx, n)]


class BreaksTheFirst(OfflineImplementer):
    """Makes the change a title names, except that its first implementation does not compile.
    It is not the offline agent (which would build the same thing again), so it is asked to fix it."""
    name = "breaks-first"

    def __init__(self):
        super().__init__()
        self.broken = None
        self.fixes = []                 # the failure reports it was given

    def implement(self, h, workspace):
        super().implement(replace(h, params=title_params(h.title)), workspace)
        if h.fix:
            self.fixes.append((h.hypothesis_id, h.fix))
        elif self.broken is None:
            self.broken = h.hypothesis_id
            path = workspace / "train.py"
            path.write_text(path.read_text() + "\ndef broken(:\n    pass\n")


def test_candidates_are_validated_before_any_worker_sees_them(ray_local, tmp_path):
    """An implementation that does not compile is invalid when it is built (the worker's own
    checks, run by the coordinator): no commit joins the buffer, no trial is spent on it, and
    the implementer gets it back once, with the reason and its diff, and fixes it."""
    repo = make_repo(tmp_path / "repo")
    implementer = BreaksTheFirst()
    cfg = config(repo, "valid", workers=1, max_trials=12, baseline_trials=2, buffer=2, agent_threads=0,
                 max_seeds=2, retest_trials=2, analyst_every=0, smoke=False, heldout=False)
    reason = Campaign(cfg, agent=(CodeChanges(seed=0), implementer), log=lambda m: None).run()
    assert reason == "reached --max-trials 12"
    events = events_of(repo, "valid")
    invalid = of_type(events, "candidate_invalid")
    assert [ev.data["hypothesis_id"] for ev in invalid] == [implementer.broken]
    assert "invalid before any trial" in invalid[0].data["reason"] and "does not compile" in invalid[0].data["reason"]
    assert not [ev for ev in of_type(events, "trial_finished") if ev.data["status"] == "invalid"]
    # the fix: asked for once, with what failed; the second build is a candidate that runs
    # (a code change that crashes in its run, a depth out of memory, may be sent back too)
    fix = [ev for ev in of_type(events, "fix_requested") if ev.data["hypothesis_id"] == implementer.broken]
    assert len(fix) == 1 and fix[0].data["attempt"] == 1
    told = [f for hid, f in implementer.fixes if hid == implementer.broken]
    assert len(told) == 1
    told = told[0]
    assert "does not compile" in told["reason"] and "+def broken(:" in told["diff"]
    rebuilt = [ev for ev in of_type(events, "candidate_created") if ev.data["hypothesis_id"] == implementer.broken]
    assert len(rebuilt) == 1
    ran = {ev.data["candidate_id"] for ev in of_type(events, "trial_started") if ev.data["kind"] == "candidate"}
    assert rebuilt[0].data["candidate_id"] in ran
