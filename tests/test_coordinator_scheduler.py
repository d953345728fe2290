"""The coordinator's pure parts: config loading, the state folded from journal events,
scheduling (priority, track isolation, parallel seeds, never idle) and decisions."""

import random
import time

import pytest

from coordinator.config import ConfigError, load_config, parse_until
from coordinator.scheduler import (MAINLINE_AGE_EVERY, Policy, baseline_demand, decide_candidate, decide_retest,
                                   pending_decisions, schedule, work)
from coordinator.state import CampaignState
from core import stats
from core.stats import StatsConfig, noise_floor
from journal import Event

A = "cpu-x/tiny/4s/aaaaaaaaaaaa"
B = "apple-m3/tiny/4s/aaaaaaaaaaaa"
INIT = "0" * 40
POLICY = Policy(baseline_trials=3, retest_trials=4, smoke=True, stats=StatsConfig(max_trials=8))


class Journal:
    """Events folded into a CampaignState as the coordinator would (a list stands in for the store)."""

    def __init__(self):
        self.events = []
        self.state = CampaignState("t")
        self.n = 0
        self.emit("campaign_started", config={"heldout": True}, target={}, initial_commit=INIT,
                  fixed_hashes={})

    def emit(self, type_, **data):
        ev = Event(campaign="t", source="test", type=type_, data=data, time=1000.0 + len(self.events))
        self.events.append(ev)
        self.state.apply(ev, str(len(self.events)))
        return ev

    def join(self, worker, track):
        self.emit("worker_joined", worker=worker, track=track, data_fingerprint="f" * 64)

    def trial(self, track, commit, kind, seed, value=None, status="ok", cid=None, worker="w1", finish=True):
        self.n += 1
        tid = f"t{self.n}"
        self.emit("trial_started", trial_id=tid, worker=worker, track=track, commit=commit, seed=seed,
                  kind=kind, candidate_id=cid)
        if finish:
            self.finish(tid, value, status)
        return tid

    def finish(self, tid, value=None, status="ok", reason=""):
        t = self.state.trials[tid]
        self.emit("trial_finished", trial_id=tid, worker=t.worker, track=t.track, commit=t.commit, seed=t.seed,
                  kind=t.kind, candidate_id=t.candidate_id, status=status,
                  crash_class=None if status == "ok" else "exception", reason=reason,
                  val_bpb=value if status == "ok" else None)

    def candidate(self, track, cid, base=INIT, content=None):
        hid = "h" + cid
        self.emit("hypothesis_proposed", hypothesis_id=hid, title=f"change {cid}", rationale="", agent="test",
                  track=track, mainline_commit=base, params={"X": cid})
        self.emit("candidate_created", candidate_id=cid, hypothesis_id=hid, track=track,
                  commit="c" + cid.ljust(39, "0"), base_commit=base, diff="", content=content)
        return "c" + cid.ljust(39, "0")

    def baselines(self, track, values=(2.00, 2.01, 1.99)):
        for i, v in enumerate(values):
            self.trial(track, INIT, "baseline", i, v)

    def decide(self, policy=POLICY):
        for kind, cid in pending_decisions(self.state):
            if kind == "candidate":
                d = decide_candidate(self.state, cid, policy)
                if d:
                    self.emit("verdict", **d)
            else:
                d = decide_retest(self.state, cid, policy)
                if d:
                    self.emit("retested", **d)


def kinds(assignments):
    return [a.kind for a in assignments]


# -----------------------------------------------------------------------------
# config

def test_config_flags_over_toml_over_defaults(tmp_path):
    (tmp_path / "swarm.toml").write_text('workers = 3\nretest_trials = 2\nlease-s = 30\n'
                                         '[agents]\nmodel = "m1"\n')
    cfg = load_config({"repo": str(tmp_path), "retest_trials": 5, "agents": {"command": "c"}},
                      environ={"AUTORESEARCH_PROFILE": "tiny", "SWARM_JOURNAL": "redis://h:1/0"})
    assert cfg.workers == 3 and cfg.retest_trials == 5 and cfg.lease_s == 30.0
    assert cfg.baseline_trials == 5 and cfg.agent == "auto"  # defaults
    assert cfg.env == {"AUTORESEARCH_PROFILE": "tiny"}     # passed to every trial
    assert cfg.journal_url == "redis://h:1/0"
    assert cfg.agents == {"model": "m1", "command": "c"}
    assert load_config({"repo": str(tmp_path)}, environ={}).journal_url == str(tmp_path / ".swarm" / "journal.db")


def test_cache_path_travels_only_to_local_workers(tmp_path):
    environ = {"AUTORESEARCH_PROFILE": "laptop", "AUTORESEARCH_CACHE": "/Users/alice/.cache/ar"}
    local = load_config({"repo": str(tmp_path)}, environ=environ)
    assert local.env == environ
    # each Mac of a cluster keeps its own cache path (another user name): only the profile travels
    cluster = load_config({"repo": str(tmp_path), "address": "10.0.0.1:6379"}, environ=environ)
    assert cluster.env == {"AUTORESEARCH_PROFILE": "laptop"}


@pytest.mark.parametrize("flags, key", [({"baseline_trials": 1}, "baseline_trials"),
                                        ({"confidence": 1.5}, "confidence"),
                                        ({"retest_confidence": 0.4}, "retest_confidence"),
                                        ({"workers": 0}, "workers"),
                                        ({"agent": "gpt"}, "agent"),
                                        ({"campaign": "bad tag!"}, "campaign"),
                                        ({"retest_trials": 9, "max_seeds": 8}, "retest_trials"),
                                        ({"until": "25:00"}, "until"),
                                        ({"bogus": 1}, "bogus")])
def test_config_bad_values_name_the_key(tmp_path, flags, key):
    with pytest.raises(ConfigError, match=key):
        load_config({"repo": str(tmp_path), **flags}, environ={})


def test_config_bad_toml_and_missing_repo(tmp_path):
    (tmp_path / "swarm.toml").write_text("workers = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({"repo": str(tmp_path)}, environ={})
    with pytest.raises(ConfigError, match="no such directory"):
        load_config({"repo": str(tmp_path / "nope")}, environ={})


def test_parse_until():
    now = time.mktime((2026, 3, 5, 22, 0, 0, 0, 0, -1))
    assert parse_until("8h", now) == now + 8 * 3600
    assert parse_until("90m", now) == now + 5400
    seven = parse_until("07:00", now)
    assert 0 < seven - now <= 24 * 3600 and time.localtime(seven).tm_hour == 7
    assert parse_until("2026-03-06T07:00", now) == time.mktime((2026, 3, 6, 7, 0, 0, 0, 0, -1))


# -----------------------------------------------------------------------------
# scheduling

def test_baselines_first_then_candidates():
    j = Journal()
    j.join("w1", A)
    j.candidate(A, "a1")
    got = schedule(j.state, [("w1", A), ("w2", A), ("w3", A), ("w4", A)], POLICY)
    assert kinds(got) == ["baseline", "baseline", "baseline", "candidate"]
    assert sorted(a.seed for a in got if a.kind == "baseline") == [0, 1, 2]
    assert got[3].smoke and got[3].base_commit == INIT      # first trial of a candidate: smoke run


def test_priority_order_and_parallel_seeds():
    j = Journal()
    j.join("w1", A)
    j.baselines(A)
    commit = j.candidate(A, "p1")
    j.trial(A, commit, "candidate", 0, 1.97, cid="p1")      # looks good: promising, wants the next look
    j.decide()
    assert j.state.candidates["p1"].verdict["verdict"] == "promising"
    for cid in ("f1", "f2", "f3"):
        j.candidate(A, cid)
    got = schedule(j.state, [(f"w{i}", A) for i in range(10)], POLICY)
    # more seeds of the promising one (look 2 needs 1 more), then one trial per new candidate
    assert kinds(got) == ["candidate", "candidate", "candidate", "candidate"]
    assert [a.candidate_id for a in got] == ["p1", "f1", "f2", "f3"]
    assert got[0].seed == 1 and not got[0].smoke

    # several seeds at once: a look at 4 trials asks for 2 more, run on 2 workers
    j.trial(A, commit, "candidate", 1, 1.975, cid="p1")
    j.decide()
    v = j.state.candidates["p1"].verdict
    assert v["verdict"] == "promising" and v["more_trials"] == 2
    got = schedule(j.state, [("w1", A), ("w2", A)], POLICY)
    assert [(a.candidate_id, a.seed) for a in got] == [("p1", 2), ("p1", 3)]


def test_retest_before_new_candidates_and_after_promising():
    j = Journal()
    j.join("w1", A)
    j.baselines(A)
    j.candidate(A, "f1")
    c = j.candidate(A, "m1")
    j.emit("verdict", candidate_id="m1", hypothesis_id="hm1", track=A, verdict="confirmed", trials=4)
    j.emit("merged", track=A, candidate_id="m1", commit="m" * 40, previous=INIT)
    # the merge and the previous mainline side by side, on the same fresh seeds (pairs)
    got = schedule(j.state, [(f"w{i}", A) for i in range(9)], POLICY)
    assert kinds(got) == ["retest"] * 8 + ["candidate"]
    merge = [a.seed for a in got[:8] if a.commit == "m" * 40]
    previous = [a.seed for a in got[:8] if a.commit == INIT]
    assert merge == previous == [1000, 1001, 1002, 1003]               # fresh: the baselines ran 0-2
    assert got[0].base_commit == INIT and got[0].smoke and not got[1].smoke
    # a pair left half-run (one worker) is completed before a new pair starts
    j2 = Journal()
    j2.join("w1", A)
    j2.baselines(A)
    j2.candidate(A, "m1")
    j2.emit("verdict", candidate_id="m1", hypothesis_id="hm1", track=A, verdict="confirmed", trials=4)
    j2.emit("merged", track=A, candidate_id="m1", commit="m" * 40, previous=INIT)
    j2.trial(A, "m" * 40, "retest", 1000, 1.9, cid="m1")
    got = schedule(j2.state, [("w1", A)], POLICY)
    assert [(a.commit, a.seed) for a in got] == [(INIT, 1000)]
    assert c


def test_track_isolation():
    j = Journal()
    j.join("a1", A)
    j.join("b1", B)
    j.baselines(A)
    for cid in ("x1", "x2", "x3"):
        j.candidate(A, cid)
    # track B needs its own baselines of the same initial commit; A's work never goes to B's workers
    idle = [("a1", A), ("b1", B), ("b2", B), ("b3", B), ("b4", B)]
    got = schedule(j.state, idle, POLICY)
    by_worker = {a.worker: a for a in got}
    assert all(a.track == dict(idle)[a.worker] for a in got)
    assert by_worker["a1"].track == A and by_worker["a1"].kind == "candidate"
    assert [by_worker[w].kind for w in ("b1", "b2", "b3")] == ["baseline"] * 3
    assert "b4" not in by_worker                     # no B work left: idle rather than cross-track


def test_never_idle_while_work_exists():
    rng = random.Random(0)
    for trial in range(30):
        j = Journal()
        j.join("w", A)
        j.baselines(A, values=[2.0 + rng.gauss(0, 0.01) for _ in range(rng.choice([0, 1, 3]))])
        n_cands = rng.randint(0, 6)
        for k in range(n_cands):
            j.candidate(A, f"k{k}")
        demand = sum(w.demand for w in work(j.state, A, POLICY))
        idle = [(f"w{i}", A) for i in range(rng.randint(1, 12))]
        got = schedule(j.state, idle, POLICY)
        assert len(got) == min(len(idle), demand), (trial, len(idle), demand)
        assert len({a.worker for a in got}) == len(got)
        seeds = [(a.commit, a.kind, a.seed) for a in got]
        assert len(set(seeds)) == len(seeds)             # no two workers run the same seed


def test_idle_workers_add_baselines_only_while_the_agent_works():
    """With no work left, a worker of a track whose agent is still thinking runs another baseline
    of the trusted mainline (fresh seeds), up to max_baselines; without the agent working, or on
    another track, it stays idle (the campaign may then end: no more work)."""
    policy = Policy(baseline_trials=3, retest_trials=4, smoke=True, stats=StatsConfig(max_trials=8),
                    max_baselines=6)
    j = Journal()
    j.join("w1", A)
    j.join("b1", B)
    j.baselines(A)                                   # 3 ok: the baseline demand is met
    j.baselines(B)
    idle = [("w1", A), ("w2", A), ("b1", B)]
    assert schedule(j.state, idle, policy) == []     # nothing to do, agent not working: idle
    got = schedule(j.state, idle, policy, spare={A})
    assert [(a.worker, a.kind, a.commit, a.seed) for a in got] == [("w1", "baseline", INIT, 3),
                                                                   ("w2", "baseline", INIT, 4)]
    # real work still comes first: a fresh candidate takes the first worker
    c = j.candidate(A, "k1")
    got = schedule(j.state, idle, policy, spare={A})
    assert [(a.worker, a.kind, a.commit) for a in got] == [("w1", "candidate", c), ("w2", "baseline", INIT)]
    # the cap counts running baselines: 5 ok + 1 running = 6 = max_baselines
    j.trial(A, INIT, "baseline", 3, 2.0)
    j.trial(A, INIT, "baseline", 4, 2.0)
    j.trial(A, INIT, "baseline", 5, finish=False)
    assert [a.kind for a in schedule(j.state, [("w2", A)], policy, spare={A})] == ["candidate"]
    j.trial(A, c, "candidate", 0, finish=False, cid="k1")
    assert schedule(j.state, [("w2", A)], policy, spare={A}) == []


def test_the_mainline_gets_a_baseline_per_candidates_judged_against_it():
    """Every MAINLINE_AGE_EVERY candidates judged against the trusted mainline (a first look that
    compared them: a crash does not count) ask for one more baseline of it, on a fresh seed, ahead
    of other work, up to max_aged_baselines values; the count is folded from the journal (replay
    gives the same)."""
    policy = Policy(baseline_trials=3, retest_trials=4, smoke=True, stats=StatsConfig(max_trials=8),
                    max_aged_baselines=5)
    j = Journal()
    j.join("w1", A)
    j.baselines(A)

    def judge(name, status="ok"):
        c = j.candidate(A, name)
        j.trial(A, c, "candidate", 0, 2.5 if status == "ok" else None, status=status, cid=name)
        j.decide(policy)
        return c

    for i in range(MAINLINE_AGE_EVERY - 1):
        judge(f"a{i}")
    judge("crashed", status="crash")                 # judged, but never compared with the mainline
    assert j.state.candidates["crashed"].verdict["verdict"] == "crash"
    assert baseline_demand(j.state, A, policy) == 0
    assert schedule(j.state, [("w1", A)], policy) == []
    judge("a-last")                                  # the MAINLINE_AGE_EVERY-th compared one
    assert j.state.judged_on[(A, INIT)] == MAINLINE_AGE_EVERY
    got = schedule(j.state, [("w1", A)], policy)
    assert [(a.kind, a.commit, a.seed) for a in got] == [("baseline", INIT, 3)]   # the next fresh seed
    fresh = j.candidate(A, "waiting")                # the baseline goes first, the candidate next
    got = schedule(j.state, [("w1", A), ("w2", A)], policy)
    assert [(a.kind, a.commit) for a in got] == [("baseline", INIT), ("candidate", fresh)]
    j.trial(A, INIT, "baseline", 3, 2.0)
    assert baseline_demand(j.state, A, policy) == 0

    for i in range(3 * MAINLINE_AGE_EVERY):         # 3 more rounds: capped at max_aged_baselines (5)
        judge(f"b{i}")
    assert baseline_demand(j.state, A, policy) == 1
    j.trial(A, INIT, "baseline", 4, 2.0)
    assert baseline_demand(j.state, A, policy) == 0

    replayed = CampaignState("t")
    for pos, ev in enumerate(j.events):
        replayed.apply(ev, str(pos + 1))
    assert replayed.judged_on == j.state.judged_on == {(A, INIT): 4 * MAINLINE_AGE_EVERY}


def test_aborted_trial_is_needed_again_with_its_seed():
    j = Journal()
    j.join("w1", A)
    tid = j.trial(A, INIT, "baseline", 0, finish=False)
    j.trial(A, INIT, "baseline", 1, 2.0)
    got = schedule(j.state, [("w2", A), ("w3", A)], POLICY)
    assert [(a.kind, a.seed) for a in got] == [("baseline", 2)]     # seed 0 is running
    j.finish(tid, status="aborted", reason="lease expired")
    got = schedule(j.state, [("w2", A), ("w3", A)], POLICY)
    assert sorted(a.seed for a in got) == [0, 2]                     # re-queued with its seed
    # a late result for the abandoned trial is ignored: the first trial_finished wins
    j.finish(tid, 1.5, "ok")
    assert j.state.trials[tid].status == "aborted" and j.state.ignored
    assert j.state.commit_values(A, INIT) == [2.0]


def test_dispatched_trial_counts_until_the_worker_confirms_it():
    j = Journal()
    j.join("w1", A)
    j.state.mark_dispatched("d1", "w1", A, INIT, 0, "baseline", None, now=5.0)
    got = schedule(j.state, [("w2", A), ("w3", A), ("w4", A)], POLICY)
    assert sorted(a.seed for a in got) == [1, 2]
    j.emit("trial_started", trial_id="d1", worker="w1", track=A, commit=INIT, seed=0, kind="baseline",
           candidate_id=None)
    assert j.state.leases["d1"].confirmed and len(j.state.leases) == 1


def test_leases_follow_heartbeats_and_progress():
    j = Journal()
    j.join("w1", A)
    tid = j.trial(A, INIT, "baseline", 0, finish=False)
    started = j.state.leases[tid].last_seen
    j.state.apply(Event(campaign="t", type="worker_heartbeat", data={"worker": "w1", "trial_id": tid}),
                  now=started + 30)
    j.state.apply(Event(campaign="t", type="worker_heartbeat", data={"worker": "w2", "trial_id": tid}),
                  now=started + 90)           # another worker's heartbeat does not extend this lease
    assert j.state.leases[tid].last_seen == started + 30
    j.state.apply(Event(campaign="t", type="trial_progress", data={"worker": "w1", "trial_id": tid,
                                                                   "step": 3}), now=started + 40)
    assert j.state.leases[tid].last_seen == started + 40


# -----------------------------------------------------------------------------
# decisions

def test_decisions_wait_for_the_baseline_and_crashes_end_a_candidate():
    j = Journal()
    j.join("w1", A)
    c = j.candidate(A, "a1")
    j.trial(A, INIT, "baseline", 0, 2.0)
    j.trial(A, c, "candidate", 0, 1.9, cid="a1")
    assert decide_candidate(j.state, "a1", POLICY) is None          # baseline still running/short
    j.trial(A, INIT, "baseline", 1, 2.01)
    j.trial(A, INIT, "baseline", 2, 1.99)
    d = decide_candidate(j.state, "a1", POLICY)
    assert d["verdict"] in ("promising", "confirmed") and d["trials"] == 1
    assert d["p_value"] is not None and d["effect_bpb"] == pytest.approx(1.9 - 2.0)

    c2 = j.candidate(A, "a2")
    j.trial(A, c2, "candidate", 0, status="crash", cid="a2")
    d = decide_candidate(j.state, "a2", POLICY)
    assert d["verdict"] == "crash" and d["more_trials"] == 0
    j.emit("verdict", **d)
    assert "a2" not in j.state.swarm[A].open
    assert all(a.candidate_id != "a2" for a in schedule(j.state, [("w1", A), ("w2", A)], POLICY))


def test_crashing_baseline_is_fatal():
    j = Journal()
    j.join("w1", A)
    j.trial(A, INIT, "baseline", 0, status="crash")
    assert j.state.fatal and "baseline" in j.state.fatal
    assert schedule(j.state, [("w1", A)], POLICY) == []


def test_noise_floor_matches_stats_and_leaves_out_the_judged_commit():
    j = Journal()
    j.join("w1", A)
    j.baselines(A, values=(2.0, 2.02, 1.97, 2.01))
    c = j.candidate(A, "a1")
    for s, v in enumerate((1.9, 1.95, 1.92)):
        j.trial(A, c, "candidate", s, v, cid="a1")
    sigma, dof = j.state.noise(A)
    want = noise_floor([[2.0, 2.02, 1.97, 2.01], [1.9, 1.95, 1.92]])
    assert sigma == pytest.approx(want[0]) and dof == want[1]
    assert j.state.noise(A, exclude=c) == pytest.approx(noise_floor([[2.0, 2.02, 1.97, 2.01]]))


def test_retest_promote_and_replay_reproduces_the_state():
    j = Journal()
    j.join("w1", A)
    j.baselines(A)
    c = j.candidate(A, "m1", content="code-m1")
    for s, v in enumerate((1.90, 1.91, 1.89, 1.905)):
        j.trial(A, c, "candidate", s, v, cid="m1")
        j.decide()
    assert j.state.candidates["m1"].verdict["verdict"] == "confirmed"
    assert j.state.swarm[A].confirmed == ["m1"]
    # the look's inputs are journaled with it: values with seeds, sigma, dof
    v = j.state.candidates["m1"].verdict
    assert [s for s, _ in v["inputs"]["candidate"]] == [0, 1] and v["look_trials"] == 2   # confirmed at look 2
    assert [s for s, _ in v["inputs"]["mainline"]] == [0, 1, 2]
    # the merge's train.py is the candidate's: the same code
    j.emit("merged", track=A, candidate_id="m1", commit="m" * 40, previous=INIT, content="code-m1")
    for s, v, prev in zip(range(4), (1.90, 1.905, 1.895, 1.90), (2.0, 2.01, 1.99, 2.005)):
        j.trial(A, "m" * 40, "retest", 1000 + s, v, cid="m1")
        j.decide()
        assert j.state.merges["m1"].retest is None      # a pair is half-run: nothing to decide
        j.trial(A, INIT, "retest", 1000 + s, prev, cid="m1")
        j.decide()
    r = j.state.merges["m1"].retest
    assert r["final"] and r["verdict"] == "confirmed" and r["look_trials"] == 4
    assert [s for s, _ in r["inputs"]["mainline"]] == [1000, 1001, 1002, 1003]
    j.emit("promoted", track=A, commit="m" * 40, previous=INIT, candidate_id="m1", val_bpb=1.9)
    st = j.state
    assert st.swarm[A].trusted == "m" * 40 and st.swarm[A].merge is None
    assert st.heldout == {(A, "m" * 40): None}
    # the re-test trials are the new mainline's baseline: no new baseline trials
    assert kinds(schedule(st, [("w1", A), ("w2", A)], POLICY)) == ["heldout"]
    # more baselines are fresh seeds: never the candidate's (same code, same seed: same value)
    more = Policy(baseline_trials=7, retest_trials=4, smoke=True, stats=StatsConfig(max_trials=8))
    got = [a for a in schedule(st, [("w1", A), ("w2", A), ("w3", A)], more) if a.kind == "baseline"]
    assert [a.seed for a in got] == [4, 5, 6]

    again = CampaignState("t")
    for i, ev in enumerate(j.events):
        again.apply(ev, str(i + 1))
    for attr in ("done", "seeds", "pending_impl", "keys", "undecided", "retest_undecided", "heldout"):
        assert getattr(again, attr) == getattr(st, attr), attr
    assert again.swarm[A].trusted == st.swarm[A].trusted and again.noise(A) == st.noise(A)
    assert [x.candidate_id for x in again.merges.values()] == ["m1"]


def test_each_look_is_decided_once_on_frozen_inputs():
    j = Journal()
    j.join("w1", A)
    j.baselines(A)
    c = j.candidate(A, "p1")
    for s, v in enumerate((1.97, 1.975)):             # ~2.5 sigma better: promising at looks 1 and 2
        j.trial(A, c, "candidate", s, v, cid="p1")
        j.decide()
    verdicts = lambda: [e.data for e in j.events if e.type == "verdict"]  # noqa: E731
    assert [(v["verdict"], v["look_trials"]) for v in verdicts()] == [("promising", 1), ("promising", 2)]
    # new mainline values and a third candidate trial: look 2 is not re-opened
    for s in (3, 4, 5):
        j.trial(A, INIT, "baseline", s, 1.90)
    j.trial(A, c, "candidate", 2, 1.96, cid="p1")
    j.decide()
    assert len(verdicts()) == 2
    j.trial(A, c, "candidate", 3, 1.965, cid="p1")
    j.decide()
    last = verdicts()[-1]
    assert len(verdicts()) == 3 and last["look_trials"] == 4
    assert len(last["inputs"]["mainline"]) == 6           # frozen when look 4 was decided


def test_a_retest_is_never_reverted_on_one_value():
    j = Journal()
    j.join("w1", A)
    j.baselines(A)
    j.candidate(A, "m1")
    j.emit("verdict", candidate_id="m1", hypothesis_id="hm1", track=A, verdict="confirmed", trials=4)
    j.emit("merged", track=A, candidate_id="m1", commit="m" * 40, previous=INIT)
    j.trial(A, "m" * 40, "retest", 1000, 2.10, cid="m1")     # one bad value (10 sigma worse)
    j.trial(A, INIT, "retest", 1000, 2.00, cid="m1")
    j.decide()
    assert j.state.merges["m1"].retest is None and j.state.merges["m1"].outcome is None
    for s in (1001, 1002, 1003):
        j.trial(A, "m" * 40, "retest", s, 1.99, cid="m1")
        j.trial(A, INIT, "retest", s, 2.00, cid="m1")
    j.decide()
    r = j.state.merges["m1"].retest
    assert r["look_trials"] == 4 and "screen" not in r["test"]


def test_a_retest_spends_its_own_alpha():
    # the re-test is a second, independent test of a confirmed candidate: it has its own alpha
    # (retest_confidence, 0.8: 0.1 at its first look of 4 of 8 pairs) and futility stop (0.5 sigma)
    policy = Policy.from_config(load_config({"repo": ".", "retest_confidence": 0.8}, environ={}))
    assert Policy.from_config(load_config({"repo": "."}, environ={})).retest_stats.confidence == 0.9
    assert policy.retest_stats.confidence == 0.8 and policy.retest_stats.futility_sigma == 0.5
    assert policy.stats.confidence == 0.9 and policy.stats.futility_sigma == 0.75
    j = Journal()
    j.join("w1", A)
    j.baselines(A)
    j.candidate(A, "m1")
    j.emit("verdict", candidate_id="m1", hypothesis_id="hm1", track=A, verdict="confirmed", trials=4)
    j.emit("merged", track=A, candidate_id="m1", commit="m" * 40, previous=INIT)
    for s, v, prev in zip(range(1000, 1004), (1.992, 1.997, 1.987, 2.002), (2.005, 1.995, 2.01, 2.0)):
        j.trial(A, "m" * 40, "retest", s, v, cid="m1")
        j.trial(A, INIT, "retest", s, prev, cid="m1")
    d = decide_retest(j.state, "m1", policy)
    assert 0.05 < d["p_value"] <= 0.1 and "alpha 0.1" in d["test"]
    assert d["verdict"] == "confirmed" and d["final"]
    # a stricter re-test (0.9, the default: 0.05 at this look) wants more pairs
    same = Policy.from_config(load_config({"repo": ".", "retest_confidence": 0.9}, environ={}))
    assert decide_retest(j.state, "m1", same)["verdict"] == "promising"


def test_within_seed_correlation_is_measured_and_picks_the_paired_test():
    rng = random.Random(5)
    seed_effect = [rng.gauss(0, 0.03) for _ in range(12)]     # data order and init: shared by every code
    j = Journal()
    j.join("w1", A)
    for s in range(12):
        j.trial(A, INIT, "baseline", s, 2.0 + seed_effect[s] + rng.gauss(0, 0.003))
    other = j.candidate(A, "o1")
    for s in range(10):
        j.trial(A, other, "candidate", s, 2.05 + seed_effect[s] + rng.gauss(0, 0.003), cid="o1")
    rho, pairs = j.state.within_seed_rho(A)
    assert pairs == 10 and rho > 0.8
    # a candidate 1 sigma better takes the mainline's seeds: from 3 pairs on, judged seed by seed
    c = j.candidate(A, "p1")
    for s in range(4):
        j.trial(A, c, "candidate", s, 1.97 + seed_effect[s] + rng.gauss(0, 0.003), cid="p1")
        j.decide()
    v = j.state.candidates["p1"].verdict
    assert v["look_trials"] == 4 and v["inputs"]["paired"] and v["inputs"]["rho"] > 0.8
    assert "paired t-test" in v["test"] and v["verdict"] == "confirmed"
    assert [s for s, _ in v["inputs"]["candidate"]] == [0, 1, 2, 3]
    # independent noise: the unpaired test stays
    assert not stats.paired_is_stronger(0.0, 4, 8, 20, 0.05 / 7)
    assert stats.paired_is_stronger(0.9, 4, 8, 20, 0.05 / 7)
