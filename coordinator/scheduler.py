"""
Scheduling and decisions: pure functions of the CampaignState, no I/O.

schedule(state, idle, policy) -> assignments. Work of a track, in priority order:
  1. baseline trials of the trusted mainline until it has baseline_trials ok
     values (nothing is judged without the mainline's own noise), then one more
     for every MAINLINE_AGE_EVERY candidates judged against it, up to
     max_aged_baselines (a mainline mean measured unluckily low hides real wins
     for as long as it stands, and it stands longest because nothing beats it);
  2. more seeds for promising candidates (what the last verdict asked for; the
     most promising first; several seeds go to several workers at once);
  3. re-test trials of the merge in flight, side by side with the previous
     mainline on the same fresh seeds (a seed-matched pair), then the held-out
     run of a promotion;
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
again. decide_candidate / decide_retest go through core/stats.py (a re-test
with its own alpha and futility stop, Policy.retest_stats: a second,
independent test of a confirmed candidate).
Each look is decided once, when its planned trials are all in, on inputs that
are frozen then and journaled with the verdict (inputs: the values, their
seeds, sigma, dof, rho): later mainline values never re-open a look.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from core import stats
from coordinator.state import FINAL_VERDICTS, CampaignState

IDLE_BASELINES_PER_SEED = 4   # max_baselines = this x max_seeds: idle workers stop adding baselines there
MAINLINE_AGE_EVERY = 5        # one more baseline of the mainline per this many candidates judged against it ...
AGED_BASELINES_PER_SEED = 2   # ... up to this x max_seeds values (bench/policy_frontier.py: 2-sigma wins
                              # promoted 79% -> 84%, true gain per 100 trials -4%)
RETEST_FUTILITY_SIGMA = 0.5   # a re-test reverts early when the merge is not better by this many sigma: lower
                              # than a candidate's (0.75), its pairs are fresh and a revert loses a found win


@dataclass(frozen=True)
class Policy:
    """What scheduling and decisions need from the SwarmConfig."""
    baseline_trials: int = 3
    retest_trials: int = 4
    smoke: bool = True
    stats: stats.StatsConfig = field(default_factory=stats.StatsConfig)
    max_baselines: int = 32            # baselines of one mainline at most, idle ones included
    max_aged_baselines: int = 16       # values a mainline grows to as candidates are judged against it
    retest_stats: stats.StatsConfig = field(        # a merge's re-test: its own alpha and futility stop
        default_factory=lambda: stats.StatsConfig(confidence=0.9, futility_sigma=RETEST_FUTILITY_SIGMA))

    @classmethod
    def from_config(cls, cfg, direction: str = "minimize") -> Policy:
        s = cfg.stats_config(direction)
        return cls(baseline_trials=cfg.baseline_trials, retest_trials=cfg.retest_trials,
                   smoke=cfg.smoke, stats=s,
                   max_baselines=max(cfg.baseline_trials, IDLE_BASELINES_PER_SEED * cfg.max_seeds),
                   max_aged_baselines=max(cfg.baseline_trials, AGED_BASELINES_PER_SEED * cfg.max_seeds),
                   retest_stats=replace(s, confidence=cfg.retest_confidence, futility_sigma=RETEST_FUTILITY_SIGMA))


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
    seeds: tuple = ()                  # exactly these seeds (a re-test pair)
    prefer: tuple = ()                 # these seeds first (a candidate: its mainline's)


# -----------------------------------------------------------------------------
# What a track needs

def baseline_wanted(state: CampaignState, track: str, policy: Policy) -> int:
    """Values the trusted mainline should have by now: baseline_trials, then one more per
    MAINLINE_AGE_EVERY candidates judged against it, up to max_aged_baselines."""
    c = state.swarm[track].trusted
    aged = state.judged_on.get((track, c), 0) // MAINLINE_AGE_EVERY
    return max(policy.baseline_trials, min(policy.baseline_trials + aged, policy.max_aged_baselines))


def baseline_demand(state: CampaignState, track: str, policy: Policy) -> int:
    ts = state.swarm[track]
    c = ts.trusted
    have = len(state.commit_values(track, c))
    running = state.live_count(track, c, "baseline") + state.live_count(track, c, "retest")
    return max(0, baseline_wanted(state, track, policy) - have - running)


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


def retest_wanted(state: CampaignState, cid: str, policy: Policy) -> int:
    """Seed-matched pairs the re-test of merge cid wants in all (0: decided)."""
    m = state.merges[cid]
    r = m.retest
    if m.outcome is not None or (r is not None and r.get("final")):
        return 0
    wanted = policy.retest_trials
    if r is not None:
        wanted = max(wanted, int(r.get("trials") or 0) + int(r.get("more_trials") or 0))
    return min(wanted, policy.retest_stats.max_trials)


def retest_demand(state: CampaignState, cid: str, policy: Policy) -> int:
    """Re-test trials still to start: new seeds of the merge, and the previous mainline on
    every seed the merge has (each seed is a pair)."""
    m = state.merges[cid]
    mine = state.seeds.get((m.track, m.commit, "retest"), set())
    theirs = state.seeds.get((m.track, m.previous, "retest"), set())
    new = max(0, retest_wanted(state, cid, policy) - len(mine))
    return 2 * new + len(mine - theirs) if retest_wanted(state, cid, policy) else 0


def _retest_work(state: CampaignState, track: str, cid: str, policy: Policy):
    m = state.merges[cid]
    wanted = retest_wanted(state, cid, policy)
    if not wanted:
        return
    mine = state.seeds.get((track, m.commit, "retest"), set())
    theirs = state.seeds.get((track, m.previous, "retest"), set())
    for s in sorted(mine - theirs):                  # complete the pairs first
        yield Work("retest", m.previous, cid, None, False, 1, seeds=(s,))
    first = not mine
    for s in state.next_seeds(track, m.commit, "retest", max(0, wanted - len(mine)), avoid=(m.previous,)):
        yield Work("retest", m.commit, cid, m.previous, policy.smoke and first, 1, seeds=(s,))
        yield Work("retest", m.previous, cid, None, False, 1, seeds=(s,))
        first = False


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
            yield Work("candidate", c.commit, cid, c.base_commit, False, n,
                       prefer=tuple(state.commit_seeds(track, c.base_commit)))

    if ts.merge is not None:
        yield from _retest_work(state, track, ts.merge, policy)
    for (t, commit), got in state.heldout.items():
        if t == track and got is None and state.live_count(track, commit, "heldout") == 0:
            yield Work("heldout", commit, None, None, False, 1)

    for cid in fresh:
        n = candidate_demand(state, cid, policy)
        if n:
            c = state.candidates[cid]
            first = state.candidate_done(cid) == 0
            yield Work("candidate", c.commit, cid, c.base_commit, policy.smoke and first, n,
                       prefer=tuple(state.commit_seeds(track, c.base_commit)))


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
            seeds = list(w.seeds[:k]) if w.seeds else state.next_seeds(track, w.commit, w.kind, k, w.prefer)
            for seed in seeds:
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


def _next_look(cfg: stats.StatsConfig, last: dict | None, screen: bool, first: int) -> int | None:
    """The trial count of the next look not decided yet (None: every look was)."""
    done = int((last or {}).get("look_trials") or (last or {}).get("trials") or 0)
    return next((n for n, _ in stats.look_schedule(cfg, screen, first) if n > done), None)


def _inputs(cand_seeds, cand, main_seeds, main, sigma, dof, rho, pairs) -> dict:
    """What a look was decided on, journaled with its verdict (frozen: never re-decided)."""
    return {"candidate": [[s, x] for s, x in zip(cand_seeds, cand)],
            "mainline": [[s, x] for s, x in zip(main_seeds, main)],
            "sigma": sigma, "dof": dof, "rho": rho[0], "rho_pairs": rho[1], "paired": pairs is not None}


def decide_candidate(state: CampaignState, cid: str, policy: Policy) -> dict | None:
    """Verdict event data for a candidate's next look, or None when it is not due yet."""
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
    n = _next_look(policy.stats, v, True, 1)
    if n is None or len(values) < n or not _mainline_ready(state, c.track, c.base_commit, policy):
        return None
    used, used_seeds = values[:n], state.commit_seeds(c.track, c.commit)[:n]
    main, main_seeds = state.commit_values(c.track, c.base_commit), state.commit_seeds(c.track, c.base_commit)
    by_seed = state.values_by_seed(c.track, c.base_commit)
    pairs = [by_seed.get(s) for s in used_seeds]
    pairs = None if None in pairs else pairs
    rho = state.within_seed_rho(c.track)
    sigma, dof = state.noise(c.track, exclude=c.commit)
    d = stats.decide(used, main, sigma, dof, policy.stats, pairs=pairs, rho=rho[0])
    return {**base, **_decision_data(d, dof), "look_trials": n,
            "inputs": _inputs(used_seeds, used, main_seeds, main, sigma, dof, rho, pairs)}


def decide_retest(state: CampaignState, cid: str, policy: Policy) -> dict | None:
    """retested event data for the merge of candidate cid (final: promote or revert), or None.
    The merge and the previous mainline ran side by side on the same fresh seeds; a look
    is due when its number of pairs is complete. No one-trial screen: a merge is never
    reverted on one value."""
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
    seeds, mine, theirs = state.retest_pairs(cid)
    n = _next_look(policy.retest_stats, m.retest, False, policy.retest_trials)
    if n is None or len(mine) < n:
        return None
    seeds, mine, theirs = seeds[:n], mine[:n], theirs[:n]
    rho = state.within_seed_rho(m.track)
    sigma, dof = state.noise(m.track, exclude=m.commit)
    d = stats.decide(mine, theirs, sigma, dof, policy.retest_stats, screen=False, first=policy.retest_trials,
                     pairs=theirs, rho=rho[0])
    return {**base, **_decision_data(d, dof), "final": d.verdict != "promising", "look_trials": n,
            "inputs": _inputs(seeds, mine, seeds, theirs, sigma, dof, rho, theirs)}


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
