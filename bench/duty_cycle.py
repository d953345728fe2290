"""
Duty cycle of the workers when the agent is slow: the fraction of each worker's wall time
spent running trials while a stand-in model takes --agent-s seconds per call.

A real campaign on this machine (local Ray, real worker actors, the embedded journal) on the
synthetic target of tests/synthetic (each trial "trains" --trial-s seconds), with 2 workers.
The agent is the offline agent behind a stand-in model: every propose call and every
implement call first sleeps --agent-s seconds, as a language model answering slowly would.
It keeps up because the coordinator runs the agent ahead of the workers: one call proposes a
batch of hypotheses and they are implemented concurrently (agent_threads), keeping --buffer
candidates ready per track.

Duty cycle per worker = the time inside its trials (trial_started -> trial_finished, from the
journal) / the window from the campaign's first trial start to its end. Printed twice: over
the whole window (it includes the start, when nothing is proposed yet: one proposal and one
implementation, 2 x --agent-s, while only the baselines can run) and from the first
candidate trial on (steady state). Target: >= 95% steady state.

    uv run python bench/duty_cycle.py                       # ~2.5 minutes
    uv run python bench/duty_cycle.py --agent-s 20 --trial-s 2.5 --seconds 150 --buffer 16
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from synthetic import make_repo  # noqa: E402

from agents.offline import OfflineImplementer, OfflineProposer  # noqa: E402
from coordinator.campaign import Campaign  # noqa: E402
from coordinator.config import load_config  # noqa: E402
from journal import open_journal  # noqa: E402

AGENT_S = 20.0      # seconds the stand-in model takes per call
TRIAL_S = 2.5       # seconds a synthetic trial "trains"
SECONDS = 150       # campaign length
BUFFER = 16         # candidates kept ready per track
THREADS = 24        # agent calls in flight at once
WORKERS = 2


class SlowProposer(OfflineProposer):
    """The offline agent's hypotheses, after a model's think time."""
    name = "slow-model"

    def __init__(self, delay: float, **kw):
        super().__init__(**kw)
        self.delay, self.calls = delay, 0

    def propose(self, ctx, n):
        self.calls += 1
        time.sleep(self.delay)
        return super().propose(ctx, n)


class SlowImplementer(OfflineImplementer):
    name = "slow-model"

    def __init__(self, delay: float):
        super().__init__()
        self.delay, self.calls = delay, 0

    def implement(self, h, workspace):
        self.calls += 1
        time.sleep(self.delay)
        return super().implement(h, workspace)


def duty_cycles(events, start_at=None):
    """{worker: fraction of [start, end] inside trials}, start: first trial start (or start_at)."""
    started = {ev.data["trial_id"]: ev for ev in events if ev.type == "trial_started"}
    finished = {ev.data["trial_id"]: ev for ev in events if ev.type == "trial_finished"}
    start = start_at or min(ev.time for ev in started.values())
    end = max([ev.time for ev in events if ev.type == "campaign_stopped"] or [ev.time for ev in events])
    busy = {}
    for tid, s in started.items():
        f = finished.get(tid)
        a, b = max(s.time, start), min(f.time if f else end, end)
        busy[s.data["worker"]] = busy.get(s.data["worker"], 0.0) + max(0.0, b - a)
    return {w: t / (end - start) for w, t in sorted(busy.items())}, end - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agent-s", type=float, default=AGENT_S)
    ap.add_argument("--trial-s", type=float, default=TRIAL_S)
    ap.add_argument("--seconds", type=float, default=SECONDS)
    ap.add_argument("--buffer", type=int, default=BUFFER)
    ap.add_argument("--threads", type=int, default=THREADS)
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

    tmp = Path(tempfile.mkdtemp(prefix="duty-cycle-"))
    repo = make_repo(tmp / "repo")
    cfg = load_config({"repo": str(repo), "campaign": "duty", "workers": WORKERS, "poll_s": 0.2,
                       "buffer": args.buffer, "agent_threads": args.threads, "until": f"{args.seconds:g}s",
                       "env": {"AUTORESEARCH_SYNTH_SLEEP": str(args.trial_s)}}, environ={})
    proposer, implementer = SlowProposer(args.agent_s, seed=0), SlowImplementer(args.agent_s)
    t0 = time.time()
    reason = Campaign(cfg, agent=(proposer, implementer), log=lambda m: None).run()
    wall = time.time() - t0
    with open_journal(str(repo / ".swarm" / "journal.db"), campaign="duty") as j:
        events = [ev for _, ev in j.read()]

    trials = [ev for ev in events if ev.type == "trial_finished"]
    print(f"campaign: {reason}; {wall:.0f}s wall, {len(trials)} trials, {proposer.calls} propose calls, "
          f"{implementer.calls} implement calls, agent {args.agent_s:g}s per call, trial {args.trial_s:g}s, "
          f"buffer {args.buffer}, {args.threads} agent threads, {WORKERS} workers")
    whole, span = duty_cycles(events)
    print(f"duty cycle, first trial start -> end ({span:.0f}s): "
          + ", ".join(f"{w} {100 * f:.1f}%" for w, f in whole.items()))
    cand = [ev.time for ev in events if ev.type == "trial_started" and ev.data.get("kind") == "candidate"]
    if cand:
        steady, span = duty_cycles(events, start_at=min(cand))
        print(f"duty cycle, first candidate trial -> end ({span:.0f}s): "
              + ", ".join(f"{w} {100 * f:.1f}%" for w, f in steady.items())
              + f"   (target >= 95%: {'met' if min(steady.values()) >= 0.95 else 'NOT met'})")
    else:
        print("no candidate trial ran: the agent never delivered within the campaign")
    # the gaps between a worker's trials: dispatch overhead (short) vs waiting for candidates (long)
    gaps, last = [], {}
    for ev in events:
        w = ev.data.get("worker")
        if ev.type == "trial_finished":
            last[w] = ev.time
        elif ev.type == "trial_started" and w in last and (not cand or ev.time >= min(cand)):
            gaps.append(ev.time - last.pop(w))
    if gaps:
        gaps.sort()
        print(f"gaps between a worker's trials after the first candidate trial: {len(gaps)}, median "
              f"{gaps[len(gaps) // 2]:.2f}s, max {gaps[-1]:.2f}s, {sum(g > 1.0 for g in gaps)} over 1s "
              f"(idle waiting for the agent); short gaps are the per-trial dispatch overhead")


if __name__ == "__main__":
    main()
