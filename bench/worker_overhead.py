"""
The worker's own overhead per trial: everything except the training process itself.

Each trial is a fresh candidate commit (a one-line edit of the real train.py) that
arrives as a git bundle with its base commit, as the coordinator sends it. The
worker imports the bundle, validates the commit (changed paths, fixed-file hashes,
compiles train.py), checks it out on its branch, runs it and writes trial_started /
trial_progress / trial_finished to a journal. The "training" process is a stand-in
that prints a few progress lines and the summary at once, so its time is only a
Python start-up; that time (train) and the smoke run's (smoke) are measured and
reported on their own, outside the overhead.

Figures per trial (mean, median, p95 over --trials):
  git        bundle import + commit lookup + checkout on the worker's branch
  validate   changed paths, fixed-file sha256, compile of train.py
  journal    trial_started + trial_finished written (and waited for), progress queued
  overhead   total wall time of run_trial - train - smoke        target < 0.5 s
  smoke      the smoke run (a process of its own: startup + the smoke budget), excluded
  train      the training process (here a stand-in), excluded

Usage: uv run python bench/worker_overhead.py [--trials 30] [--journal PATH_OR_REDIS_URL] [--no-smoke]
"""

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_worker import candidate, new_repo  # noqa: E402  (shared stand-in helpers)
from worker import Worker, make_full_bundle  # noqa: E402

# Target of the overhead per trial (issue).
TARGET_S = 0.5

# The training command's stand-in: fixed file of the benchmark repo; prints what train.py prints.
STUB = '''\
import json, sys
if "--fingerprint" in sys.argv:
    print(json.dumps({"fingerprint": "ab" * 32, "profile": "bench", "time_budget": 60}))
    sys.exit()
for step in range(3):
    print(f"step {step:05d} ({step * 33.3:.1f}%) | loss: {5 - step:.6f} | tok/sec: 1,234 | remaining: {3 - step}s")
print("---\\nval_bpb:          1.234567\\ntraining_seconds: 0.1\\nnum_steps:        3")
'''
TARGET_TOML = '''\
editable = ["train.py"]
fixed = ["prepare.py", "stub.py"]
run = "{python} stub.py --seed {seed} --time-budget {budget}"
fingerprint = "{python} stub.py --fingerprint"
'''


def stats(values):
    # (not the statistics module: bench/statistics.py shadows it when this runs from bench/)
    values = sorted(values)
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return sum(values) / n, median, values[min(n - 1, round(0.95 * (n - 1)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--journal", default=None, help="journal path or redis:// URL (default: a temp SQLite file)")
    ap.add_argument("--no-smoke", action="store_true", help="skip the smoke runs")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {name: (ROOT / name).read_text() for name in ("prepare.py", "train.py", "program.md")
                 if (ROOT / name).exists()}
        files.update({"stub.py": STUB, "target.toml": TARGET_TOML})
        src, base = new_repo(tmp / "src", files)
        journal = args.journal or str(tmp / "journal.db")
        w = Worker("bench", tmp / "worker", journal_url=journal, campaign="bench")
        w.load_repo(make_full_bundle(src))
        assert w.info()["problem"] is None, w.info()["problem"]
        train = files["train.py"]

        rows = []
        for i in range(args.trials + 1):       # trial 0 warms caches; not counted
            spec = candidate(src, base, {"train.py": train + f"\n# candidate {i}\n"}, seed=i,
                             smoke=not args.no_smoke, trial_id=f"bench-{i}")
            r = w.run_trial(spec)
            if r.status != "ok":
                sys.exit(f"trial {i} did not run cleanly: {r.status} {r.reason}\n{r.log_tail}")
            t = r.timings
            if i:
                rows.append({**t, "overhead": t["total"] - t["train"] - t["smoke"]})
        w.stop()

    print(f"worker overhead per trial: {args.trials} trials, {platform.system()} {platform.machine()}, "
          f"{os.cpu_count()} cores, journal {'sqlite (temp file)' if not args.journal else journal.split('@')[-1]}")
    print(f"{'':<10} {'mean':>9} {'median':>9} {'p95':>9}")
    for key in ("git", "validate", "journal", "overhead", "smoke", "train"):
        mean, med, p95 = stats([r[key] for r in rows])
        note = "  (excluded)" if key in ("smoke", "train") else ""
        print(f"{key:<10} {mean * 1000:>7.1f}ms {med * 1000:>7.1f}ms {p95 * 1000:>7.1f}ms{note}")
    mean = stats([r["overhead"] for r in rows])[0]
    verdict = "meets" if mean < TARGET_S else "MISSES"
    print(f"overhead per trial {mean * 1000:.0f} ms: {verdict} the target of < {TARGET_S * 1000:.0f} ms")


if __name__ == "__main__":
    main()
