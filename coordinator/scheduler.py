"""
Scheduling and decisions: pure functions of the CampaignState, no I/O.

schedule(state, idle, policy) -> assignments. Work of a track, in priority order:
  1. baseline trials of the trusted mainline until it has baseline_trials ok
     values (nothing is judged without the mainline's own noise);
  2. more seeds for promising candidates (what the last verdict asked for; the
     most promising first; several seeds go to several workers at once);
  3. re-test trials of the merge in flight, then the held-out run of a promotion;
  4. the first trial of new candidates (oldest first).
A worker with none of this to do while the agent is still working on its
track's next candidates runs another baseline of the trusted mainline (every
extra value sharpens each comparison against it), up to max_baselines: an
accelerator never waits for a language model.
A worker only ever gets work of its own track. What is "needed" is derived
from the state (wanted - finished - in flight), so an aborted trial is simply
needed again: re-queued without a queue.

next_decision(state, policy) names the next decision the state is missing
(a verdict, a re-test decision, a promotion or revert, the next merge, a
held-out result); the campaign carries it out and journals it, then asks
again. decide_candidate / decide_retest go through coordinator/stats.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator import stats
from coordinator.state import FINAL_VERDICTS, CampaignState

IDLE_BASELINES_PER_SEED = 4   # max_baselines = this x max_seeds: idle workers stop adding baselines there


@dataclass(frozen=True)
class Policy:
    """What scheduling and decisions need from the SwarmConfig."""
    baseline_trials: int = 3
    retest_trials: int = 4
    smoke: bool = True
    stats: stats.StatsConfig = field(default_factory=stats.StatsConfig)
    max_baselines: int = 32            # baselines of one mainline at most, idle ones included

    @classmethod
    def from_config(cls, cfg, direction: str = "minimize") -> Policy:
        return cls(baseline_trials=cfg.baseline_trials, retest_trials=cfg.retest_trials,
                   smoke=cfg.smoke, stats=cfg.stats_config(direction),
                   max_baselines=max(cfg.baseline_trials, IDLE_BASELINES_PER_SEED * cfg.max_seeds))


@dataclass(frozen=True)
class Assignment:
    worker: str
    track: str
    commit: str
    seed: int
    kind: str                          # baseline | candidate | retest | heldout
    candidate_id: str | None = None    # the candidate (candidate trials) or the merged one (retest)
    base_commit: str | None = None     # what the commit may differ from only in editable files
    smoke: bool = False


@dataclass(frozen=True)
class Work:
    kind: str
    commit: str
    candidate_id: str | None
    base_commit: str | None
    smoke: bool
    demand: int


# -----------------------------------------------------------------------------
# What a track needs

def baseline_demand(state: CampaignState, track: str, policy: Policy) -> int:
    ts = state.swarm[track]
    c = ts.trusted
    have = len(state.commit_values(track, c))
    running = state.live_count(track, c, "baseline") + state.live_count(track, c, "retest")
    return max(0, policy.baseline_trials - have - running)


def candidate_demand(state: CampaignState, cid: str, policy: Policy) -> int:
    c = state.candidates[cid]
    v = c.verdict
    if v is None:
        wanted = 1
    elif v.get("verdict") == "promising":
        wanted = int(v.get("trials") or 0) + int(v.get("more_trials") or 0)
    else:
        return 0
    wanted = min(wanted, policy.stats.max_trials)
    return max(0, wanted - state.candidate_done(cid) - state.live_count(c.track, c.commit, "candidate"))


def retest_demand(state: CampaignState, cid: str, policy: Policy) -> int:
    m = state.merges[cid]
    r = m.retest
    if m.outcome is not None or (r is not None and r.get("final")):
        return 0
    wanted = policy.retest_trials
    if r is not None:
        wanted = max(wanted, int(r.get("trials") or 0) + int(r.get("more_trials") or 0))
    wanted = min(wanted, policy.stats.max_trials)
    return max(0, wanted - state.retest_done(cid) - state.live_count(m.track, m.commit, "retest"))


def work(state: CampaignState, track: str, policy: Policy):
    """Work items of one track, highest priority first (a generator: cheap to stop early)."""
    ts = state.swarm.get(track)
    if ts is None or state.fatal:
        return
    n = baseline_demand(state, track, policy)
    if n:
        yield Work("baseline", ts.trusted, None, None, False, n)

    promising, fresh = [], []
    for cid in ts.open:
        v = state.candidates[cid].verdict
        if v is None:
            fresh.append(cid)
        elif v.get("verdict") == "promising":
            promising.append((v.get("p_value") if v.get("p_value") is not None else 1.0, cid))
    for _, cid in sorted(promising):
        n = candidate_demand(state, cid, policy)
        if n:
            c = state.candidates[cid]
            yield Work("candidate", c.commit, cid, c.base_commit, False, n)

    if ts.merge is not None:
        n = retest_demand(state, ts.merge, policy)
        if n:
            m = state.merges[ts.merge]
            first = state.retest_done(ts.merge) + state.live_count(track, m.commit, "retest") == 0
            yield Work("retest", m.commit, m.candidate_id, m.previous, policy.smoke and first, n)
    for (t, commit), got in state.heldout.items():
        if t == track and got is None and state.live_count(track, commit, "heldout") == 0:
            yield Work("heldout", commit, None, None, False, 1)

    for cid in fresh:
        n = candidate_demand(state, cid, policy)
        if n:
            c = state.candidates[cid]
            first = state.candidate_done(cid) == 0
            yield Work("candidate", c.commit, cid, c.base_commit, policy.smoke and first, n)


def schedule(state: CampaignState, idle, policy: Policy, spare=frozenset()) -> list[Assignment]:
    """Assignments for idle workers: idle is a list of (worker name, track). Never across tracks.
    spare: tracks whose agent is working on more candidates: a worker left without work there
    runs another baseline of the mainline meanwhile."""
    by_track: dict[str, list[str]] = {}
    for worker, track in idle:
        by_track.setdefault(track, []).append(worker)
    out = []
    for track, workers in by_track.items():
        free = list(workers)
        for w in work(state, track, policy):
            if not free:
                break
            k = min(w.demand, len(free))
            for seed in state.next_seeds(track, w.commit, w.kind, k):
                out.append(Assignment(free.pop(0), track, w.commit, seed, w.kind, w.candidate_id,
                                      w.base_commit, w.smoke))
        if free and track in spare and not state.fatal:
            trusted = state.swarm[track].trusted
            have = (len(state.commit_values(track, trusted)) + state.live_count(track, trusted, "baseline")
                    + state.live_count(track, trusted, "retest"))
            k = min(len(free), policy.max_baselines - have)
            for seed in state.next_seeds(track, trusted, "baseline", max(0, k)):
                out.append(Assignment(free.pop(0), track, trusted, seed, "baseline"))
    return out


def fresh_candidates(state: CampaignState, track: str) -> int:
    """Candidates of a track ready for a first trial (the agent keeps this topped up)."""
    ts = state.swarm.get(track)
    if ts is None:
        return 0
    n = 0
    for cid in ts.open:
        c = state.candidates[cid]
        if c.verdict is None and state.candidate_done(cid) == 0 \
                and state.live_count(track, c.commit, "candidate") == 0:
            n += 1
    return n


# -----------------------------------------------------------------------------
# Decisions

def pending_decisions(state: CampaignState) -> list[tuple[str, str]]:
    """("candidate", id) and ("retest", id) with finished trials not yet judged."""
    return [("candidate", c) for c in sorted(state.undecided)] + \
           [("retest", c) for c in sorted(state.retest_undecided)]


def _decision_data(d: stats.Decision, dof) -> dict:
    return {"verdict": d.verdict, "test": d.test, "p_value": d.p_value, "confidence": d.confidence,
            "effect_bpb": d.effect_bpb, "effect_sigma": d.effect_sigma, "noise_floor": d.noise_floor,
            "noise_dof": dof, "trials": d.trials, "candidate_mean": d.candidate_mean,
            "mainline_mean": d.mainline_mean, "more_trials": d.more_trials}


def _first_failure(state: CampaignState, track, commit, kind):
    tid = state.failures.get((track, commit, kind))
    return state.trials[tid] if tid else None


def _mainline_ready(state: CampaignState, track, commit, policy) -> bool:
    """The values a candidate is compared with are complete (or will not grow)."""
    have = len(state.commit_values(track, commit))
    if have >= policy.baseline_trials:
        return True
    running = state.live_count(track, commit, "baseline") + state.live_count(track, commit, "retest")
    return have >= 1 and running == 0 and commit != state.swarm[track].trusted


def decide_candidate(state: CampaignState, cid: str, policy: Policy) -> dict | None:
    """Verdict event data for a candidate, or None when it cannot be judged yet."""
    c = state.candidates[cid]
    v = c.verdict
    if v is not None and v.get("verdict") in FINAL_VERDICTS:
        return None
    base = {"candidate_id": cid, "hypothesis_id": c.hypothesis_id, "track": c.track,
            "base_commit": c.base_commit, "commit": c.commit}
    values = state.commit_values(c.track, c.commit)
    done = state.candidate_done(cid)
    if done > len(values):            # a trial crashed or was invalid: no more seeds
        t = _first_failure(state, c.track, c.commit, "candidate")
        verdict = "invalid" if t is not None and t.status == "invalid" else "crash"
        return {**base, "verdict": verdict, "test": "none: the candidate did not run cleanly",
                "p_value": None, "confidence": None, "effect_bpb": None, "effect_sigma": None,
                "noise_floor": None, "trials": done, "candidate_mean": None, "mainline_mean": None,
                "more_trials": 0, "reason": t.reason if t else "trial failed",
                "crash_class": t.crash_class if t else None, "trial_id": t.trial_id if t else None}
    if not values or not _mainline_ready(state, c.track, c.base_commit, policy):
        return None
    sigma, dof = state.noise(c.track, exclude=c.commit)
    d = stats.decide(values, state.commit_values(c.track, c.base_commit), sigma, dof, policy.stats)
    return {**base, **_decision_data(d, dof)}


def decide_retest(state: CampaignState, cid: str, policy: Policy) -> dict | None:
    """retested event data for the merge of candidate cid (final: promote or revert), or None."""
    m = state.merges[cid]
    if m.outcome is not None or (m.retest is not None and m.retest.get("final")):
        return None
    base = {"track": m.track, "commit": m.commit, "previous": m.previous, "candidate_id": cid}
    values = state.commit_values(m.track, m.commit)
    done = state.retest_done(cid)
    if done > len(values):
        t = _first_failure(state, m.track, m.commit, "retest")
        return {**base, "verdict": "discard", "final": True, "test": "none: the merged mainline did not run",
                "p_value": None, "confidence": None, "effect_bpb": None, "effect_sigma": None,
                "noise_floor": None, "trials": done, "candidate_mean": None, "mainline_mean": None,
                "more_trials": 0, "reason": f"re-test trial {t.status if t else 'failed'}: "
                                            f"{t.reason if t else ''}".strip()}
    previous = state.commit_values(m.track, m.previous)
    if not values or not previous:
        return None
    sigma, dof = state.noise(m.track, exclude=m.commit)
    d = stats.decide(values, previous, sigma, dof, policy.stats)
    return {**base, **_decision_data(d, dof), "final": d.verdict != "promising"}


def next_decision(state: CampaignState, policy: Policy):
    """The next decision missing from the state, or None when it is complete:
      ("verdict", data) / ("retested", data)   event data to journal
      ("promote", merge) / ("revert", merge)   a re-test reached its final decision
      ("merge", track, candidate_id)           a confirmed candidate, no merge in flight on its track
      ("heldout_result", data)                 a promotion's held-out run finished
    Carrying out a decision must change the state (journal its event), or this repeats it."""
    for kind, cid in pending_decisions(state):
        d = decide_candidate(state, cid, policy) if kind == "candidate" else decide_retest(state, cid, policy)
        if d is not None:
            return ("verdict" if kind == "candidate" else "retested", d)
    for track, ts in state.swarm.items():
        if ts.merge is not None:
            m = state.merges[ts.merge]
            if m.outcome is None and m.retest is not None and m.retest.get("final"):
                return ("promote" if m.retest["verdict"] == "confirmed" else "revert", m)
        elif ts.confirmed and not state.fatal:
            return ("merge", track, ts.confirmed[0])
    for (track, commit), got in state.heldout.items():
        if got not in (None, "done"):
            return ("heldout_result", heldout_data(state, track, commit, state.trials[got]))
    return None


def heldout_data(state: CampaignState, track, commit, t) -> dict:
    """heldout_result data of a promotion's held-out run. test_bpb only when the worker's result says
    the test split was scored (its evaluator's record, or a self-reported target's summary), so a
    run that scored another split never passes a validation figure off as a held-out one."""
    split = (t.metrics or {}).get("eval_split")
    d = {"track": track, "commit": commit, "trial_id": t.trial_id, "status": t.status, "eval_split": split,
         "test_bpb": t.value if split == "test" else None, "reason": t.reason}
    if t.value is not None and split != "test":
        d["val_bpb"] = t.value
        d["reason"] = f"the run evaluated the {split or 'unknown'} split, not test"
    return d
