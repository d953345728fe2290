"""
How the coordinator scales: decisions with 1,000 simulated workers, and dispatch over Ray.

Part 1 (decisions, no Ray, no training): a campaign state with --workers simulated workers
on --tracks tracks and --history finished trials, then --decisions timed decisions. One
decision is what the coordinator does when a trial finishes: fold its trial_finished event,
make every decision it unlocks (scheduler.next_decision: verdicts, re-test decisions,
merges, promotions; merges and promotions are simulated without git), and schedule the
freed worker (scheduler.schedule + mark_dispatched + its trial_started). Simulated values:
most candidates are null, a few are real wins, noise is Gaussian. Target: < 10 ms per decision.
The history is frozen out of the garbage collector before timing, as the coordinator does after
replaying its journal (otherwise a full GC pass over ~100k events is the slowest "decision").
Also prints the replay speed of the resulting journal (what a resume costs).

Part 2 (Ray): the real coordinator loop (coordinator/campaign.py) with --actors stand-in
worker actors that train nothing (each trial sleeps --trial-s), the embedded journal, and a
proposer with endless hypotheses implemented as real git commits. Prints trials/s and the
dispatch overhead per trial: the mean time a worker waits between reporting a trial and
starting its next one (from journal timestamps), and the coordinator's wall time per trial.

    uv run python bench/scale.py                         # both parts, defaults below
    uv run python bench/scale.py --part decisions --workers 1000 --decisions 5000
    uv run python bench/scale.py --part ray --actors 32 --trials 400
"""

import argparse
import gc
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))   # the stand-in worker (tests/standin_worker.py)

from coordinator.scheduler import Policy, next_decision, schedule, work
from coordinator.state import CampaignState
from core.stats import StatsConfig
from journal import Event

DECISION_TARGET_MS = 10.0
REAL_WIN_RATE = 0.05      # share of simulated candidates with a real effect
REAL_WIN_SIGMA = 3.0      # its size in noise sigmas
CRASH_RATE = 0.03         # share of simulated candidate trials that crash
SIGMA = 0.01


def mean(xs):
    return sum(xs) / len(xs)


# -----------------------------------------------------------------------------
# Part 1: decisions on a simulated state

class Sim:
    """A campaign folded from simulated events: workers, an endless agent, trials with known truth."""

    def __init__(self, n_workers, n_tracks, policy, seed=0):
        self.rng = random.Random(seed)
        self.policy = policy
        self.state = CampaignState("bench")
        self.events = []
        self.tracks = [f"sim-{i}/bench/300s/{i:012d}" for i in range(n_tracks)]
        self.initial = "0" * 40
        self.effect = {}              # commit -> true effect on val_bpb
        self.level = {}               # commit -> true mean val_bpb
        self.emit("campaign_started", config={"heldout": True}, target={}, initial_commit=self.initial,
                  fixed_hashes={})
        self.workers = {}
        for i in range(n_workers):
            track = self.tracks[i % n_tracks]
            name = f"w{i}"
            self.workers[name] = track
            self.emit("worker_joined", worker=name, track=track, data_fingerprint="f" * 64)
        for t in self.tracks:
            self.level[(t, self.initial)] = 2.0
        self.idle = list(self.workers.items())
        self.running = []             # trial ids in dispatch order (they finish first in, first out)
        self.n = 0

    def emit(self, type_, **data):
        ev = Event(campaign="bench", source="bench", type=type_, data=data, time=time.time())
        self.events.append(ev)
        self.state.apply(ev, str(len(self.events)))

    def top_up(self):
        """The agent keeps one fresh candidate per worker of each track (untimed: it is the agent)."""
        for track in self.tracks:
            ts = self.state.swarm[track]
            fresh = sum(1 for c in ts.open if self.state.candidates[c].verdict is None)
            want = sum(1 for t in self.workers.values() if t == track) - fresh
            for _ in range(max(0, want)):
                cid = uuid.uuid4().hex[:12]
                commit = uuid.uuid4().hex + "00000000"
                real = self.rng.random() < REAL_WIN_RATE
                self.level[(track, commit)] = self.level[(track, ts.trusted)] - (REAL_WIN_SIGMA * SIGMA if real else 0)
                self.emit("hypothesis_proposed", hypothesis_id="h" + cid, title=f"change {cid}", rationale="",
                          agent="bench", track=track, mainline_commit=ts.trusted, params={"X": cid})
                self.emit("candidate_created", candidate_id=cid, hypothesis_id="h" + cid, track=track,
                          commit=commit, base_commit=ts.trusted, diff="")

    def dispatch(self, idle):
        for a in schedule(self.state, idle, self.policy):
            self.n += 1
            tid = f"t{self.n}"
            self.state.mark_dispatched(tid, a.worker, a.track, a.commit, a.seed, a.kind, a.candidate_id, time.time())
            self.emit("trial_started", trial_id=tid, worker=a.worker, track=a.track, commit=a.commit, seed=a.seed,
                      kind=a.kind, candidate_id=a.candidate_id)
            self.running.append(tid)
            idle = [(w, t) for w, t in idle if w != a.worker]
        return idle

    def decide_all(self):
        """The coordinator's decisions, merges and promotions simulated without git."""
        st = self.state
        while (step := next_decision(st, self.policy)) is not None:
            kind = step[0]
            if kind in ("verdict", "retested"):
                self.emit(kind, **step[1])
            elif kind == "merge":
                track, cid = step[1], step[2]
                c, ts = st.candidates[cid], st.swarm[track]
                merged = uuid.uuid4().hex + "11111111"
                gain = self.level[(track, c.base_commit)] - self.level[(track, c.commit)]
                self.level[(track, merged)] = self.level[(track, ts.trusted)] - gain
                self.emit("merged", track=track, candidate_id=cid, commit=merged, previous=ts.trusted)
            elif kind == "promote":
                m = step[1]
                self.emit("promoted", track=m.track, commit=m.commit, previous=m.previous, candidate_id=m.candidate_id)
            elif kind == "revert":
                m = step[1]
                self.emit("reverted", track=m.track, commit=m.commit, restored=m.previous, candidate_id=m.candidate_id,
                          reason="bench")
            elif kind == "heldout_result":
                self.emit("heldout_result", **step[1])

    def finish_one(self):
        """One decision: the oldest running trial finishes; returns its worker's idle entry."""
        tid = self.running.pop(0)
        lease = self.state.leases[tid]
        crash = lease.kind == "candidate" and self.rng.random() < CRASH_RATE
        value = None if crash else self.level[(lease.track, lease.commit)] + self.rng.gauss(0, SIGMA)
        self.emit("trial_finished", trial_id=tid, worker=lease.worker, track=lease.track, commit=lease.commit,
                  seed=lease.seed, kind=lease.kind, candidate_id=lease.candidate_id,
                  status="crash" if crash else "ok", crash_class="exception" if crash else None,
                  reason="simulated crash" if crash else "", val_bpb=value)
        self.decide_all()
        return self.dispatch([(lease.worker, lease.track)])


def bench_decisions(args):
    policy = Policy(baseline_trials=3, retest_trials=4, smoke=True, stats=StatsConfig(max_trials=8))
    sim = Sim(args.workers, args.tracks, policy, seed=args.seed)
    t = time.perf_counter()
    sim.top_up()
    idle = sim.dispatch(sim.idle)
    n = 0
    while n < args.history:
        idle += sim.finish_one()
        n += 1
        if n % 200 == 0:
            sim.top_up()
            idle = sim.dispatch(idle)
    setup_s = time.perf_counter() - t
    gc.freeze()         # as the coordinator does after replaying its journal on start
    times = []
    starved = 0
    for i in range(args.decisions):
        if i % 20 == 0:
            sim.top_up()
            idle = sim.dispatch(idle)
        t0 = time.perf_counter()
        idle += sim.finish_one()
        times.append((time.perf_counter() - t0) * 1000)
        # a worker left idle while its track has work would be a scheduling bug
        starved += sum(1 for _, t in idle if next(work(sim.state, t, policy), None) is not None)
    st = sim.state
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    print(f"decisions: {args.workers} simulated workers on {args.tracks} tracks; state: {len(st.trials)} trials, "
          f"{len(st.candidates)} candidates, {len(st.merges)} merges "
          f"({sum(m.outcome == 'promoted' for m in st.merges.values())} promoted), {len(sim.events)} events "
          f"(history built in {setup_s:.1f}s)")
    print(f"decisions: {len(times)} timed: mean {mean(times):.3f} ms, p50 {p(0.5):.3f} ms, "
          f"p99 {p(0.99):.3f} ms, max {times[-1]:.3f} ms per decision (target < {DECISION_TARGET_MS:g} ms: "
          f"{'ok' if p(0.99) < DECISION_TARGET_MS else 'MISSED'})")
    print(f"decisions: workers busy at the end {len(st.leases)}/{args.workers}; idle while their track had "
          f"work: {starved} times (the agent is topped up every 20 decisions)")
    t = time.perf_counter()
    again = CampaignState("bench")
    for i, ev in enumerate(sim.events):
        again.apply(ev, str(i))
    dt = time.perf_counter() - t
    print(f"replay: {len(sim.events)} events in {dt:.2f}s ({len(sim.events) / dt:,.0f} events/s): the cost of a resume")


# -----------------------------------------------------------------------------
# Part 2: the real coordinator loop over Ray with stand-in workers

def standin_class(trial_s: float):
    """Stand-in workers whose trials report 2.0 plus noise (drawn from the trial's id)."""
    from standin_worker import standin_class as make
    return make(lambda spec: 2.0 + random.Random(spec["trial_id"]).gauss(0, SIGMA), trial_s)


def endless_agent():
    """A proposer that never runs out (distinct MATRIX_LR values), implemented as real commits."""
    from agents.base import Hypothesis, Proposer
    from agents.offline import OfflineImplementer

    class Endless(Proposer):
        name = "bench"

        def __init__(self):
            self.k = 0

        def propose(self, ctx, n):
            out = []
            for _ in range(n):
                self.k += 1
                value = round(0.04 * (1 + self.k / 1000), 7)
                out.append(Hypothesis(uuid.uuid4().hex, f"MATRIX_LR -> {value}", "bench", "0", "low", self.name,
                                      params={"MATRIX_LR": value}))
            return out

    return Endless(), OfflineImplementer()


def bench_ray(args):
    import ray

    from coordinator.campaign import Campaign
    from coordinator.config import load_config

    actors = args.actors or default_actors()
    tmp = Path(tempfile.mkdtemp(prefix="swarm-scale-"))
    try:
        repo = tmp / "repo"
        repo.mkdir()
        for name in ("train.py", "prepare.py", "target.toml"):
            shutil.copy(REPO_ROOT / name, repo / name)
        env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
               "GIT_COMMITTER_EMAIL": "b@b"}
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "start"]):
            subprocess.run(["git", *cmd], cwd=repo, check=True, env=env)
        t = time.perf_counter()
        ray.init(address="local", num_cpus=2, resources={"mlx": actors}, include_dashboard=False,
                 log_to_driver=False)
        init_s = time.perf_counter() - t
        cfg = load_config({"repo": str(repo), "campaign": "scale", "workers": actors,
                           "poll_s": 0.05, "smoke": False, "heldout": False, "buffer": 2}, environ={})
        class Timed(Campaign):
            """The real loop, with the time of its two costly steps added up: building a
            candidate (commit + checks) and dispatching trials."""
            spent = {"implement": 0.0, "dispatch": 0.0, "candidates": 0, "dispatched": 0}

            def _open(self):
                super()._open()
                commit, dispatch = self.candidates.commit, self.pool.dispatch

                def timed_commit(*a, **kw):
                    t0 = time.perf_counter()
                    commit(*a, **kw)
                    self.spent["implement"] += time.perf_counter() - t0
                    self.spent["candidates"] += 1

                def timed_dispatch(*a, **kw):
                    t0 = time.perf_counter()
                    n = dispatch(*a, **kw)
                    self.spent["dispatch"] += time.perf_counter() - t0
                    self.spent["dispatched"] += n
                    return n

                self.candidates.commit, self.pool.dispatch = timed_commit, timed_dispatch

        import threading
        done = threading.Event()
        watcher = threading.Thread(target=stop_after_steady, args=(cfg.journal_url, actors, args.trials, done))
        watcher.start()
        t = time.perf_counter()
        try:
            Timed(cfg, agent=endless_agent(), worker_class=standin_class(args.trial_s), log=lambda m: None).run()
        finally:
            done.set()
            watcher.join()
        run_s = time.perf_counter() - t
        ray.shutdown()
        report_ray(repo, actors, args, init_s, run_s, Timed.spent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stop_after_steady(journal_url, actors, trials, done):
    """Once every worker joined, let `trials` more trials finish, then ask the campaign to stop
    (a stop_requested event, what `swarm stop` writes)."""
    from journal import open_journal
    while not done.is_set() and not os.path.exists(journal_url):
        time.sleep(0.2)
    with open_journal(journal_url, campaign="scale") as j:
        last, joined, steady_finished = None, 0, 0
        while not done.wait(0.2):
            for pos, ev in j.read(after=last):
                last = pos
                if ev.type == "worker_joined":
                    joined += 1
                elif ev.type == "trial_finished" and joined >= actors:
                    steady_finished += 1
            if steady_finished >= trials:
                j.emit("stop_requested", source="bench", reason=f"{trials} steady-state trials")
                return


def default_actors() -> int:
    """As many stand-in actors as memory allows (~150 MB each), capped at 64 on this machine's cores."""
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        avail = 8 * 2**30
    return max(2, min(64, int(avail * 0.5 / (150 * 2**20))))


def report_ray(repo, actors, args, init_s, run_s, spent):
    from journal import open_journal
    with open_journal(str(repo / ".swarm" / "journal.db"), campaign="scale") as j:
        events = [ev for _, ev in j.read()]
    joined = [ev.time for ev in events if ev.type == "worker_joined"]
    steady = max(joined)          # figures below: only trials started once every worker had joined
    started = {ev.data["trial_id"]: ev for ev in events if ev.type == "trial_started" and ev.time >= steady}
    finished = [ev for ev in events if ev.type == "trial_finished" and ev.data["status"] == "ok"
                and ev.data["trial_id"] in started]
    # per worker: time from reporting a trial to starting its next one
    by_worker = {}
    for ev in sorted(list(started.values()) + finished, key=lambda e: e.time):
        by_worker.setdefault(ev.data["worker"], []).append(ev)
    gaps = []
    for evs in by_worker.values():
        for a, b in zip(evs, evs[1:]):
            if a.type == "trial_finished" and b.type == "trial_started":
                gaps.append(b.time - a.time)
    first = min(ev.time for ev in started.values())
    last = max(ev.time for ev in finished)
    busy = len(finished) * args.trial_s
    n = len(finished)
    gaps.sort()
    print(f"ray: {actors} stand-in worker actors (a trial sleeps {args.trial_s:g}s), embedded journal, candidates "
          f"as real git commits; ray.init {init_s:.1f}s, workers joined within {max(joined) - min(joined):.1f}s")
    util = f"; worker utilisation {busy / (actors * (last - first)) * 100:.0f}%" if args.trial_s else ""
    print(f"ray: steady state (all workers joined): {n} trials in {last - first:.1f}s: "
          f"{n / (last - first):.1f} trials/s{util}")
    print(f"ray: dispatch overhead per trial (a worker reported -> its next trial started): mean "
          f"{mean(gaps) * 1000:.0f} ms, p50 {gaps[len(gaps) // 2] * 1000:.0f} ms, "
          f"p90 {gaps[int(len(gaps) * 0.9)] * 1000:.0f} ms")
    print(f"ray: coordinator time per trial {(last - first) / n * 1000:.1f} ms in steady state; whole run "
          f"averages: building a candidate (agent + git commit) {spent['implement'] / max(1, spent['candidates']) * 1000:.0f} ms, "
          f"dispatching a trial (schedule + bundle + run_trial.remote) "
          f"{spent['dispatch'] / max(1, spent['dispatched']) * 1000:.0f} ms; whole run {run_s:.1f}s incl. start and stop")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("decisions", "ray", "both"), default="both")
    p.add_argument("--workers", type=int, default=1000, help="simulated workers (part 1, default 1000)")
    p.add_argument("--tracks", type=int, default=4, help="tracks they are spread over (default 4)")
    p.add_argument("--history", type=int, default=20000, help="finished trials before timing (default 20000)")
    p.add_argument("--decisions", type=int, default=5000, help="timed decisions (default 5000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--actors", type=int, default=None, help="stand-in worker actors (part 2; default: as many "
                   "as memory allows, at most 64)")
    p.add_argument("--trials", type=int, default=500, help="trials in the Ray run (default 500)")
    p.add_argument("--trial-s", type=float, default=0.0, help="seconds a stand-in trial sleeps (default 0)")
    args = p.parse_args()
    if args.part in ("decisions", "both"):
        bench_decisions(args)
    if args.part in ("ray", "both"):
        bench_ray(args)


if __name__ == "__main__":
    main()
