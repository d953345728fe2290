"""
The dashboard on a 100k-event journal: start-up replay, first paint, event-to-screen latency,
server memory. The page is loaded by Debian's chromium (headless, tests/chromium.py).

  replay at start     `swarm dashboard` started -> its snapshot says the replay is done
  snapshot            building /api/state once replayed (JSON size, gzip as served)
  first paint         navigation start -> the page drew campaign, chart, workers, tables
                      (body[data-rendered], performance.now() in the page)
  event -> screen     an event appended to the journal by this process -> on screen in the open
                      page (a MutationObserver stamps the moment): a trial_finished (a new point
                      in the chart) and a lab_note
  memory              the server's resident memory after replay and after the page loaded

Two journals of 100k events, one SQLite file each (a campaign of 8 workers on 2 tracks):
  realistic   each trial journals progress every 5 s of a 300 s budget (~60 events a trial): ~1.5k trials
  dense       4 progress events a trial: ~12k trials, the chart's worst case for 100k events

Targets (issue 12): first paint <= 2 s, a new event on screen <= 1 s.

Usage: uv run python bench/dashboard.py [--events 100000] [--repeats 10]   (~2-4 min on 2 cores)
"""

import argparse
import gzip
import os
import random
import re
import subprocess
import sys
import tempfile
import time

# This file is named dashboard.py: keep its folder off sys.path so `import dashboard` finds the package.
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import requests  # noqa: E402
from chromium import Chromium  # noqa: E402

from journal import Event, open_journal  # noqa: E402

TARGET_FIRST_PAINT_S = 2.0
TARGET_EVENT_S = 1.0
WORKERS, TRACKS = 8, ("apple-m3-max/default/300s/ab12cd34ef56", "apple-m2/laptop/300s/ab12cd34ef56")
TRIAL_S = 300.0
DIFF = "".join(f"-X_{i} = 0.{i}\n+X_{i} = 0.{i + 1}\n" for i in range(8))
NOTE = "Schedule changes kept winning; depth did not. Next: warmdown x batch size. " * 6


def make_journal(path, n_events, progress_per_trial, seed=0):
    """A campaign of n_events in the shapes the coordinator and workers write."""
    rng = random.Random(seed)
    t = 1_767_772_800.0
    events = [Event(type="campaign_started", time=t, source="coordinator",
                    data={"config": {"journal": "redis://:s3cret-pw@10.0.0.2:6380/0", "time_budget": TRIAL_S},
                          "target": {"name": "autoresearch-mlx", "direction": "minimize"}})]
    workers = [(f"mac-{i}", TRACKS[i % 2]) for i in range(WORKERS)]
    for w, tr in workers:
        events.append(Event(type="worker_joined", time=t, source=w,
                            data={"worker": w, "track": tr, "hardware_class": tr.split("/")[0], "profile": "default"}))
    level = {tr: 1.0 for tr in TRACKS}
    heads = {tr: f"{i}" * 40 for i, tr in enumerate(TRACKS)}
    trial = cand = 0
    while len(events) < n_events:
        t += TRIAL_S / WORKERS
        w, tr = workers[trial % WORKERS]
        trial += 1
        tid = f"t{trial}"
        if trial % 4 == 0:      # one trial in four a fresh candidate, with its hypothesis
            cand += 1
            hid, cid, commit = f"h{cand}", f"c{cand}", f"{cand:040x}"
            events.append(Event(type="hypothesis_proposed", time=t, source="agent",
                                data={"hypothesis_id": hid, "title": f"idea {cand}: X_{cand % 8} up", "track": tr,
                                      "agent": "offline", "rationale": NOTE[:200], "mainline_commit": heads[tr]}))
            events.append(Event(type="candidate_created", time=t, source="coordinator",
                                data={"candidate_id": cid, "hypothesis_id": hid, "track": tr, "commit": commit,
                                      "base_commit": heads[tr], "diff": DIFF, "implementer": "constants"}))
            events.append(Event(type="agent_usage", time=t, source="agent",
                                data={"agent": "claude", "model": "sonnet", "input_tokens": 9000,
                                      "output_tokens": 700, "cost_usd": 0.04, "latency_s": 9.0}))
            kind, cid_of, commit_of = "candidate", cid, commit
        else:
            kind, cid_of, commit_of = "baseline", None, heads[tr]
        data = {"trial_id": tid, "worker": w, "track": tr, "commit": commit_of, "seed": trial, "kind": kind,
                "candidate_id": cid_of}
        events.append(Event(type="trial_started", time=t, source=w, data=dict(data)))
        for k in range(progress_per_trial):
            p = (k + 1) / (progress_per_trial + 1)
            events.append(Event(type="trial_progress", time=t + p * TRIAL_S, source=w,
                                data={"trial_id": tid, "worker": w, "step": int(p * 900), "progress": p,
                                      "loss": 4.0 - 2 * p, "tok_per_s": 12000.0, "seconds_left": (1 - p) * TRIAL_S}))
        value = level[tr] + rng.gauss(0, 0.003) - (0.01 if kind == "candidate" and cand % 7 == 0 else 0)
        events.append(Event(type="trial_finished", time=t + TRIAL_S, source=w,
                            data={**data, "status": "ok", "val_bpb": value, "metrics": {"peak_vram_mb": 9000.0}}))
        if kind == "candidate":
            better = cand % 7 == 0
            events.append(Event(type="verdict", time=t + TRIAL_S, source="coordinator",
                                data={"candidate_id": cid, "hypothesis_id": hid, "track": tr,
                                      "verdict": "confirmed" if better else "discard", "test": "welch-t",
                                      "p_value": 0.01 if better else 0.6, "effect_bpb": -0.01 if better else 0.001,
                                      "effect_sigma": -3.3 if better else 0.3, "noise_floor": 0.003, "trials": 1,
                                      "candidate_mean": value, "mainline_mean": level[tr]}))
            if better:
                merged = f"{cand:039x}m"
                for typ, d in (("merged", {"candidate_id": cid, "commit": merged, "previous": heads[tr]}),
                               ("promoted", {"commit": merged, "previous": heads[tr], "val_bpb": level[tr] - 0.01}),
                               ("heldout_result", {"commit": merged, "test_bpb": level[tr] + 0.005})):
                    events.append(Event(type=typ, time=t + TRIAL_S, source="coordinator", data={"track": tr, **d}))
                heads[tr], level[tr] = merged, level[tr] - 0.01
        if trial % 400 == 0:
            events.append(Event(type="lab_note", time=t, source="analyst",
                                data={"author": "analyst", "title": f"note {trial}", "text": NOTE}))
    with open_journal(path, campaign="bench") as j:
        for ev in events[:n_events]:
            j.append(ev)
    return trial


def rss_mb(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(path):
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "swarm.cli", "dashboard", "--journal", path, "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    base = re.search(r"http://\S+?:\d+", proc.stdout.readline()).group(0)
    while True:
        s = requests.get(base + "/api/state", timeout=60).json()
        if s.get("ready") and not s.get("empty"):
            return proc, base, time.monotonic() - t0
        time.sleep(0.05)


OBSERVE = """window.__seen = {}; new MutationObserver(() => {
  const n = +document.getElementById('chart').dataset.points;
  if (!(n in window.__seen)) window.__seen[n] = Date.now();
  const notes = document.getElementById('notes').textContent;
  for (const m of notes.matchAll(/bench-note-(\\d+)/g)) if (!(m[0] in window.__seen)) window.__seen[m[0]] = Date.now();
}).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true}); true"""


def event_latencies(browser, page, path, repeats):
    """Seconds from append to on screen: a trial_finished (a new point) and a lab_note, alternately."""
    browser.eval(page, OBSERVE)
    out = {"trial point": [], "lab note": []}
    track = sorted(TRACKS)[0]       # the page's first tab
    with open_journal(path, campaign="bench") as j:
        for i in range(repeats):
            tid = f"bench-{i}"
            j.emit("trial_started", source="mac-0", trial_id=tid, worker="mac-0", track=track, commit="0" * 40,
                   seed=10_000 + i, kind="baseline")
            time.sleep(0.3)
            before = browser.eval(page, "+document.getElementById('chart').dataset.points")
            t0 = time.time()
            j.emit("trial_finished", source="mac-0", trial_id=tid, worker="mac-0", track=track, commit="0" * 40,
                   seed=10_000 + i, kind="baseline", status="ok", val_bpb=1.0)
            seen = browser.wait(page, f"window.__seen[{before + 1}]", timeout=60)
            out["trial point"].append(seen / 1000 - t0)
            t0 = time.time()
            j.emit("lab_note", source="bench", author="bench", title=f"bench-note-{i}", text="latency probe")
            seen = browser.wait(page, f"window.__seen['bench-note-{i}']", timeout=60)
            out["lab note"].append(seen / 1000 - t0)
            time.sleep(0.3)
    return out


def bench(name, path, n_events, progress_per_trial, repeats):
    t = time.monotonic()
    trials = make_journal(path, n_events, progress_per_trial)
    print(f"\n{name}: {n_events:,} events, {trials:,} trials (journal written in {time.monotonic() - t:.1f} s)")
    proc, base, replay_s = start_server(path)
    try:
        mem_replayed = rss_mb(proc.pid)
        t = time.monotonic()
        raw = requests.get(base + "/api/state", timeout=60, headers={"Accept-Encoding": "identity"}).content
        print(f"  replay at start      {replay_s:.2f} s (process start -> snapshot ready)")
        print(f"  snapshot             {len(raw) / 1e6:.2f} MB JSON, {len(gzip.compress(raw)) / 1e6:.2f} MB gzipped, "
              f"served in {time.monotonic() - t:.2f} s")
        paints = []
        with Chromium() as browser:
            for _ in range(3):      # the first load also fetches plotly.min.js (cached afterwards)
                page = browser.open(base + "/")
                browser.wait(page, "document.body.dataset.rendered === 'campaign'", timeout=120)
                paints.append([x / 1000 for x in browser.eval(
                    page, "[window.__scripts, window.__fetched, window.__firstPaint]")])
            lat = event_latencies(browser, page, path, repeats)
        mem_loaded = rss_mb(proc.pid)
        for i, (scripts, fetched, painted) in enumerate(paints):
            print(f"  first paint          {painted:.2f} s {'cold' if i == 0 else 'warm'} (scripts parsed at "
                  f"{scripts:.2f} s, snapshot fetched at {fetched:.2f} s; target <= {TARGET_FIRST_PAINT_S:.0f} s)")
        for what, xs in lat.items():
            xs = sorted(xs)
            print(f"  event -> screen      {what}: median {xs[len(xs) // 2]:.2f} s, max {xs[-1]:.2f} s "
                  f"over {len(xs)} (target <= {TARGET_EVENT_S:.0f} s)")
        print(f"  server memory        {mem_replayed:.0f} MB RSS replayed, {mem_loaded:.0f} MB after the page "
              f"loaded and {2 * repeats} more events")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    print(f"dashboard bench: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
          "(figures scale with it: a busy machine is slower)")
    with tempfile.TemporaryDirectory() as tmp:
        bench("realistic", os.path.join(tmp, "realistic.db"), args.events, 60, args.repeats)
        bench("dense", os.path.join(tmp, "dense.db"), args.events, 4, args.repeats)


if __name__ == "__main__":
    main()
