"""A whole night: one coordinator per campaign (an owner lease in the journal; a second one is
refused, naming the owner), `swarm resume` keeps the campaign's worker count, and a Redis
journal restarted mid-campaign (30 s away) loses and repeats nothing."""

import threading
import time
from collections import Counter

import pytest
from campaign_events import events_of, of_type
from synthetic import make_repo
from test_coordinator_campaign import check_consistent, config, ray_local  # noqa: F401  (fixture)

from coordinator.campaign import Campaign, CampaignError
from coordinator.state import CampaignState
from journal import Event
from journal.views import replay

WAIT_S = 300           # generous deadline of every condition waited on (a loaded machine, tests in parallel)


def wait_for(cond, what, timeout=WAIT_S):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def started(repo, tag, url=None, trials=1):
    try:
        return len(of_type(events_of(repo, tag, url), "trial_finished")) >= trials
    except Exception:        # the journal is not there yet
        return False


def test_owner_lease_folds_claims_renewals_expiry_and_release():
    st = CampaignState("t")

    def claim(owner, t, release=False):
        st.apply(Event(campaign="t", source="coordinator", type="coordinator_lease", time=t,
                       data={"owner": owner, "host": "h", "pid": 1, "lease_s": 90.0, "release": release}))

    claim("A", 1000.0)
    claim("B", 1050.0)                          # A's lease holds: B's claim loses
    assert st.owner_now(1060.0)["owner"] == "A"
    claim("A", 1080.0)                          # A renews
    assert st.owner_now(1169.0)["owner"] == "A" and st.owner_now(1171.0) is None
    claim("B", 1175.0)                          # A's lease expired: B takes over
    claim("A", 1180.0)                          # A's late renewal does not take it back
    assert st.owner_now(1181.0)["owner"] == "B"
    claim("A", 1190.0, release=True)            # only the holder releases
    assert st.owner_now(1191.0)["owner"] == "B"
    claim("B", 1195.0, release=True)
    assert st.owner_now(1196.0) is None


def test_a_second_coordinator_is_refused_and_resume_keeps_the_worker_count(ray_local, tmp_path):  # noqa: F811
    repo = make_repo(tmp_path / "repo")
    cfg = config(repo, "own1", workers=1, env={"AUTORESEARCH_SYNTH_SLEEP": "0.5"})
    out = {}
    first = threading.Thread(target=lambda: out.setdefault("reason", Campaign(cfg, log=lambda m: None).run()))
    first.start()
    try:
        wait_for(lambda: started(repo, "own1"), "the first coordinator's first trial")
        for resume in (True, False):            # `swarm resume` and `swarm run --campaign own1`
            with pytest.raises(CampaignError, match="driven by another coordinator") as e:
                Campaign(config(repo, "own1"), resume_only=resume, log=lambda m: None).run()
            assert ":" in str(e.value) and "lease expires" in str(e.value)
    finally:
        from swarm.cli import main as swarm
        swarm(["stop", "--repo", str(repo), "--campaign", "own1", "--reason", "test"])
        first.join(WAIT_S)
    assert not first.is_alive() and out["reason"] == "stop requested (test)"
    before = events_of(repo, "own1")
    leases = [ev.data for ev in of_type(before, "coordinator_lease")]
    assert len({d["owner"] for d in leases}) == 1 and leases[-1]["release"]   # the refused ones wrote nothing
    assert replay(before).unknown == []        # `swarm journal` reads every event a campaign writes

    # resumed without --workers: the campaign's own count (1), not the cluster's 2 mlx resources
    reason = Campaign(config(repo, "own1", max_trials=3), resume_only=True, log=lambda m: None).run()
    assert reason == "reached --max-trials 3"
    after = events_of(repo, "own1")[len(before):]
    assert {ev.data["worker"] for ev in of_type(after, "worker_joined")} == {"w1"}
    check_consistent(repo, "own1", events_of(repo, "own1"))


def test_redis_restarted_mid_campaign_loses_and_repeats_nothing(ray_local, tmp_path):  # noqa: F811
    from redis_server import RedisServer
    repo = make_repo(tmp_path / "repo")
    with RedisServer(tmp_path / "redis") as srv:
        url = srv.url
        cfg = config(repo, "outage1", workers=2, journal=url, max_trials=20,
                     env={"AUTORESEARCH_SYNTH_SLEEP": "1.0"})
        logs, out = [], {}
        runner = threading.Thread(target=lambda: out.setdefault("reason", Campaign(cfg, log=logs.append).run()))
        runner.start()
        try:
            wait_for(lambda: started(repo, "outage1", url, trials=4), "4 trials before the outage")
            srv.restart(kill=True, down_s=30.0)       # a crash, then 30 s without a journal
        finally:
            runner.join(WAIT_S * 2)
        assert not runner.is_alive() and out.get("reason") == "reached --max-trials 20", logs[-10:]
        assert any("waiting for the journal" in m for m in logs) and any("journal is back" in m for m in logs)
        events = events_of(repo, "outage1", url)
    # every event once (appends idempotent by id), every trial finished once, nothing lost
    ids = Counter(ev.id for ev in events)
    assert max(ids.values()) == 1
    check_consistent(repo, "outage1", events)
    started_ids = {ev.data["trial_id"] for ev in of_type(events, "trial_started")}
    finished_ids = {ev.data["trial_id"] for ev in of_type(events, "trial_finished")}
    assert started_ids == finished_ids
    counted = [ev.data for ev in of_type(events, "trial_finished") if ev.data["status"] in ("ok", "crash", "invalid")]
    assert len(counted) >= 20
    # the outage was the journal's silence, not the workers': no trial lost its lease to it
    assert not [ev for ev in of_type(events, "trial_finished") if "lease expired" in (ev.data["reason"] or "")]


def test_a_dead_coordinator_of_this_machine_is_taken_over_at_once():
    """A claim naming the holder it takes over (its pid is gone on this host) wins at once;
    the refusal of a live holder is in the test above."""
    st = CampaignState("t")
    lease = {"host": "h", "pid": 1, "lease_s": 90.0, "release": False}
    st.apply(Event(campaign="t", source="coordinator", type="coordinator_lease", time=1000.0,
                   data={"owner": "A", **lease}))
    st.apply(Event(campaign="t", source="coordinator", type="coordinator_lease", time=1010.0,
                   data={"owner": "B", **lease, "takeover_of": "X"}))      # names someone else: loses
    assert st.owner_now(1011.0)["owner"] == "A"
    st.apply(Event(campaign="t", source="coordinator", type="coordinator_lease", time=1020.0,
                   data={"owner": "B", **lease, "takeover_of": "A"}))
    assert st.owner_now(1021.0)["owner"] == "B"


def test_an_agent_with_nothing_new_is_asked_again_with_the_evidence(ray_local, tmp_path, monkeypatch):  # noqa: F811
    """The campaign never ends for want of ideas: a proposer that returns nothing is asked again
    (with a note on the evidence) and the campaign goes on to --max-trials."""
    import coordinator.pipeline as pipeline_module
    from agents.base import Proposer
    from agents.offline import OfflineImplementer, OfflineProposer

    monkeypatch.setattr(pipeline_module, "EXHAUSTED_RETRY_S", 0.2)

    class DryFirst(Proposer):
        name = "offline"

        def __init__(self):
            self.calls, self.offline = [], OfflineProposer(seed=0)

        def propose(self, ctx, n):
            self.calls.append(list(ctx.notes))
            return [] if len(self.calls) == 1 else self.offline.propose(ctx, n)

    repo = make_repo(tmp_path / "repo")
    agent = DryFirst()
    logs = []
    reason = Campaign(config(repo, "dry1", workers=1, max_trials=10), agent=(agent, OfflineImplementer()),
                      log=logs.append).run()
    assert reason == "reached --max-trials 10", logs[-5:]
    assert len(agent.calls) >= 2 and any("proposed nothing new" in n for n in agent.calls[1])
    assert any("asking again with the evidence" in m for m in logs)
    events = events_of(repo, "dry1")
    assert any(ev.data["kind"] == "candidate" for ev in of_type(events, "trial_finished"))
