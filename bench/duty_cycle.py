"""
Duty cycle of the workers when the model is slow: the fraction of each worker's wall time
spent running trials while every call to the model takes --agent-s seconds.

A real campaign on this machine (local Ray, real worker actors, the embedded journal) on the
synthetic target of tests/synthetic (each trial "trains" --trial-s seconds), with 2 workers,
and the real agent path of a configured model backend: agent = "anthropic", so the campaign
builds the Anthropic proposer and implementer (in an agent actor where the coordinator runs
one) and they call the Messages API through the `anthropic` SDK. The API is a local stand-in
(tests/anthropic_standin.py) answered by a stand-in research model (tests/model_standin.py)
that sleeps --agent-s seconds before every reply, as a model thinking would. It proposes
one-constant changes: every other one with params (a constant-only change the coordinator
may apply without a model call), the others named only in their title, so a model call
implements them. The key is a dummy, set in the environment before the campaign starts Ray,
so every Ray process sees it.

Duty cycle per worker = the time inside its trials (trial_started -> trial_finished, from the
journal) / the whole window, from the campaign's first trial start to campaign_stopped: it
includes the start, when the first proposal and implementations are still on their way, and
the stop (trials aborted at --seconds, the shutdown), so each worker's idle time is printed
split into before its first trial, between trials and after its last. Target: >= 95%.
A worker with nothing to do while the agent works runs another baseline of its mainline
("idle baseline": started when the mainline already had its baseline_trials values); those
count as busy, so the share of each worker's busy time by trial kind (baseline, idle
baseline, candidate, retest, heldout) is printed with it, and the share spent in the smoke
run a candidate's first trial starts with. Also printed: trial lengths (a stalled trial counts as
busy), the time from the first trial to the first candidate trial, the gaps between a
worker's consecutive trials, the model calls the stand-in answered and the agent_usage
records (latency, tokens), and what the campaign did (stop reason, trials, hypotheses,
candidates by implementer, verdicts).

    uv run python bench/duty_cycle.py                       # ~3 minutes
    uv run python bench/duty_cycle.py --agent-s 20 --trial-s 2.5 --seconds 150 --buffer 16
    uv run python bench/duty_cycle.py --seconds 60 --agent-s 5 --log   # quick, with the campaign's log
"""

import argparse
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from anthropic_standin import StandIn  # noqa: E402
from model_standin import ResearchModel  # noqa: E402
from synthetic import make_repo  # noqa: E402

from coordinator.campaign import Campaign  # noqa: E402
from coordinator.config import load_config  # noqa: E402
from journal import open_journal  # noqa: E402

AGENT_S = 20.0      # seconds the stand-in model takes per call
TRIAL_S = 2.5       # seconds a synthetic trial "trains"
SECONDS = 150       # campaign length
BUFFER = 16         # candidates kept ready per track
THREADS = 24        # agent calls in flight at once
WORKERS = 2
TARGET = 0.95       # duty cycle every worker should reach over the whole window
IDLE_GAP_S = 1.0    # a gap between two trials longer than this is waiting, not dispatch overhead
API_KEY = "sk-standin-duty-cycle"   # a dummy: the stand-in accepts any key
KINDS = ("baseline", "idle baseline", "candidate", "retest", "heldout")


def idle_baselines(events) -> set:
    """Trial ids of the baselines a worker ran only because it was waiting for the agent: those
    started when their mainline already had baseline_trials values, done or running."""
    need = next(ev.data["config"]["baseline_trials"] for ev in events if ev.type == "campaign_started")
    started = {ev.data["trial_id"]: ev.data for ev in events if ev.type == "trial_started"}
    have, live, out = Counter(), Counter(), set()
    for ev in events:
        d = ev.data
        if d.get("kind") not in ("baseline", "retest"):
            continue
        key = (d.get("track"), d.get("commit"))
        if ev.type == "trial_started":
            if d["kind"] == "baseline" and have[key] + live[key] >= need:
                out.add(d["trial_id"])
            live[key] += 1
        elif ev.type == "trial_finished" and d["trial_id"] in started:
            live[key] -= 1
            have[key] += d.get("status") == "ok"
    return out


def trials_by_worker(events):
    """{worker: [(start, end, kind, smoke seconds)]} sorted by start; a trial never finished ends
    at the window's end."""
    end = window(events)[1]
    finished = {ev.data["trial_id"]: ev for ev in events if ev.type == "trial_finished"}
    idle = idle_baselines(events)
    out = defaultdict(list)
    for ev in events:
        if ev.type == "trial_started":
            f = finished.get(ev.data["trial_id"])
            smoke = ((f.data.get("timings") or {}).get("smoke") or 0.0) if f else 0.0
            kind = "idle baseline" if ev.data["trial_id"] in idle else ev.data.get("kind")
            out[ev.data["worker"]].append((ev.time, f.time if f else end, kind, smoke))
    return {w: sorted(ts) for w, ts in sorted(out.items())}


def window(events):
    """(first trial start, campaign_stopped) times."""
    start = min(ev.time for ev in events if ev.type == "trial_started")
    end = max([ev.time for ev in events if ev.type == "campaign_stopped"] or [ev.time for ev in events])
    return start, end


def report(events, model, reason, wall, args):
    start, end = window(events)
    span = end - start
    per_worker = trials_by_worker(events)
    finished = [ev for ev in events if ev.type == "trial_finished"]
    status = Counter(ev.data.get("status") for ev in finished)
    print(f"campaign: stopped ({reason}) after {wall:.0f}s wall; {len(finished)} trials "
          f"({', '.join(f'{n} {s}' for s, n in status.most_common())}); model {args.agent_s:g}s "
          f"per call, trial {args.trial_s:g}s, buffer {args.buffer}, {args.threads} agent threads, {WORKERS} workers")

    print(f"\nduty cycle, first trial start -> campaign_stopped ({span:.0f}s), target >= {100 * TARGET:.0f}%:")
    worst = 1.0
    for w, trials in per_worker.items():
        busy = Counter()
        for a, b, kind, _ in trials:
            busy[kind] += max(0.0, min(b, end) - max(a, start))
        total = sum(busy.values())
        worst = min(worst, total / span)
        shares = ", ".join(f"{k} {100 * busy[k] / total:.0f}%" for k in KINDS if busy[k]) if total else "-"
        smoke = sum(t[3] for t in trials)
        between = sum(max(0.0, b[0] - a[1]) for a, b in zip(trials, trials[1:]))
        print(f"  {w}: {100 * total / span:.1f}%  ({len(trials)} trials; busy time by kind: {shares}; "
              f"smoke runs {100 * smoke / max(total, 1e-9):.0f}% of it; idle {trials[0][0] - start:.1f}s before "
              f"its first trial, {between:.1f}s between trials, {max(0.0, end - trials[-1][1]):.1f}s after its last)")
    print(f"  target {'met' if worst >= TARGET else 'NOT met'} (lowest {100 * worst:.1f}%)")
    lengths = sorted((b - a, w, kind) for w, ts in per_worker.items() for a, b, kind, _ in ts)
    print(f"trial length: median {lengths[len(lengths) // 2][0]:.1f}s, longest {lengths[-1][0]:.1f}s "
          f"({lengths[-1][2]} on {lengths[-1][1]}; a stalled trial counts as busy)")

    cand = [ev.time for ev in events if ev.type == "trial_started" and ev.data.get("kind") == "candidate"]
    print(f"first candidate trial: {min(cand) - start:.1f}s after the first trial start" if cand
          else "first candidate trial: none ran (the agent never delivered within the campaign)")

    gaps = sorted(b[0] - a[1] for ts in per_worker.values() for a, b in zip(ts, ts[1:]))
    if gaps:
        print(f"gaps between a worker's consecutive trials: {len(gaps)}, median {gaps[len(gaps) // 2]:.2f}s, "
              f"max {gaps[-1]:.2f}s, {sum(g > IDLE_GAP_S for g in gaps)} over {IDLE_GAP_S:g}s "
              f"(waiting for work; short gaps are the per-trial dispatch overhead)")

    print("\nmodel calls the stand-in answered: "
          + (", ".join(f"{k} {n}" for k, n in sorted(model.calls.items())) or "none")
          + " (a call cut off by the stop has no agent_usage record)")
    usage = defaultdict(list)
    for ev in events:
        if ev.type == "agent_usage":
            usage[ev.data.get("purpose")].append(ev.data)
    if not usage:
        print("agent_usage: no records in the journal")
    for purpose, recs in sorted(usage.items(), key=lambda kv: str(kv[0])):
        lat = [r["latency_s"] for r in recs]
        print(f"agent_usage {purpose}: {len(recs)} calls, latency mean {sum(lat) / len(lat):.1f}s "
              f"max {max(lat):.1f}s, tokens in {sum(r['input_tokens'] for r in recs)} "
              f"(+{sum(r['cache_read_tokens'] for r in recs)} cache read, "
              f"+{sum(r['cache_write_tokens'] for r in recs)} cache write), "
              f"out {sum(r['output_tokens'] for r in recs)}")

    proposed = [ev for ev in events if ev.type == "hypothesis_proposed"]
    created = Counter(ev.data.get("implementer") for ev in events if ev.type == "candidate_created")
    invalid = sum(ev.type == "candidate_invalid" for ev in events)
    latest = {ev.data.get("candidate_id"): ev.data.get("verdict") for ev in events if ev.type == "verdict"}
    print(f"\nhypotheses proposed: {len(proposed)} ({sum(bool(ev.data.get('params')) for ev in proposed)} with params)")
    print("candidates created: " + (", ".join(f"{n} by {impl}" for impl, n in created.most_common()) or "none")
          + f"; {invalid} invalid")
    print("verdicts (latest per candidate): "
          + (", ".join(f"{v} {n}" for v, n in Counter(latest.values()).most_common()) or "none")
          + f"; {sum(ev.type == 'merged' for ev in events)} merged")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agent-s", type=float, default=AGENT_S, help="seconds the model takes per call")
    ap.add_argument("--trial-s", type=float, default=TRIAL_S, help="seconds a trial trains")
    ap.add_argument("--seconds", type=float, default=SECONDS, help="campaign length")
    ap.add_argument("--buffer", type=int, default=BUFFER, help="candidates kept ready per track")
    ap.add_argument("--threads", type=int, default=THREADS, help="agent calls in flight at once")
    ap.add_argument("--log", action="store_true", help="print the campaign's log lines")
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ["ANTHROPIC_API_KEY"] = API_KEY   # before the campaign starts Ray: its processes inherit it

    repo = make_repo(Path(tempfile.mkdtemp(prefix="duty-cycle-")) / "repo")
    model = ResearchModel()
    t0 = time.time()
    log = (lambda m: print(f"{time.time() - t0:7.1f}s {m}", flush=True)) if args.log else (lambda m: None)
    with StandIn(responder=model, delay_s=args.agent_s) as api:
        cfg = load_config({"repo": str(repo), "campaign": "duty", "workers": WORKERS, "poll_s": 0.2,
                           "buffer": args.buffer, "agent_threads": args.threads, "agent": "anthropic",
                           "agents": {"anthropic": {"base_url": api.url, "model": "claude-standin"}},
                           "until": f"{args.seconds:g}s", "env": {"AUTORESEARCH_SYNTH_SLEEP": str(args.trial_s)}},
                          environ={})
        reason = Campaign(cfg, log=log).run()
    wall = time.time() - t0
    with open_journal(str(repo / ".swarm" / "journal.db"), campaign="duty") as j:
        events = [ev for _, ev in j.read()]
    if not any(ev.type == "trial_started" for ev in events):
        sys.exit(f"campaign: stopped ({reason}) after {wall:.0f}s without running a trial")
    report(events, model, reason, wall, args)


if __name__ == "__main__":
    main()
