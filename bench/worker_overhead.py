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

Then the cost of trusting nothing the trial says (--integrity-trials real trials of the real
train.py on a generated tiny-profile corpus, through the worker with the sandbox on), each measured:
  sandbox start   bubblewrap + a python start vs a plain python start (x2: training, evaluator)
  checkpoint      save_weights in the training process + load in the evaluator (tiny model)
  evaluator       its process start, imports, tokenizer, model rebuild (before any data is scored)
  probe           the causality probe (one forward pass of the probe rows and their changed copies)
  eval tok/s      the evaluator's scoring vs the same model scored in-process by evaluate_bpb
and the fixed costs as a share of a 60 s tiny-profile trial and of a 300 s default-profile trial.

Usage: uv run python bench/worker_overhead.py [--trials 30] [--journal PATH_OR_REDIS_URL] [--no-smoke]
                                              [--integrity-trials 3]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_worker import candidate, new_repo  # noqa: E402  (shared stand-in helpers)
from worker import Worker, make_full_bundle  # noqa: E402

# Target of the overhead per trial (issue).
TARGET_S = 0.5
# Targets of the trust path's fixed costs, as a share of a trial's wall time (issue).
TINY_TRIAL_S, TINY_TARGET = 60.0, 0.03
DEFAULT_TRIAL_S, DEFAULT_TARGET = 300.0, 0.01
# Validation tokens of the integrity trials' evaluation (the tiny profile's EVAL_TOKENS).
INTEGRITY_EVAL_TOKENS = 65536

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
    ap.add_argument("--integrity-trials", type=int, default=3, help="real tiny-profile trials for the trust "
                    "path's costs (0: skip)")
    args = ap.parse_args()
    if args.integrity_trials:
        integrity(args.integrity_trials)

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



def _timed(argv, env, cwd, reps=10) -> float:
    best = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        best.append(time.perf_counter() - t)
    return stats(best)[1]


def integrity(n_trials: int):
    """The trust path's fixed costs, measured on real tiny-profile trials (see the module doc)."""
    from datagen import write_corpus
    from worker.runner import clean_env
    from worker.sandbox import Policy, python_paths, resolve_mode, wrap

    mode = resolve_mode("auto")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        env = {"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_PROFILE": "tiny"}
        write_corpus(tmp / "corpus", n_docs=12000, seed=0)
        subprocess.run([sys.executable, "prepare.py", "--profile", "tiny", "--source", str(tmp / "corpus")],
                       cwd=ROOT, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
        files = {name: (ROOT / name).read_text() for name in ("prepare.py", "train.py", "evaluate.py",
                                                               "target.toml", "program.md")}
        src, base = new_repo(tmp / "src", files)

        # sandbox start: a python start inside the sandbox vs outside
        scratch = tmp / "scratch"
        scratch.mkdir()
        policy = Policy(cwd=src, read_only=tuple(python_paths(sys.executable)), hidden=(), writable=(scratch,))
        plain = clean_env(env)
        boxed, boxed_env = wrap([sys.executable, "-c", "pass"], policy, mode, plain)
        t_plain = _timed([sys.executable, "-c", "pass"], plain, src)
        t_boxed = _timed(boxed, boxed_env, src)
        sandbox_start = max(0.0, t_boxed - t_plain)

        # real trials: training saves, the evaluator scores (the worker's timings and the evaluator's record)
        w = Worker("bench-integrity", tmp / "worker", campaign="bench", heartbeat_s=0, env=env)
        w.load_repo(make_full_bundle(src))
        assert w.info()["problem"] is None, w.info()["problem"]
        # the same computation in-process (the old path), run right after each trial so both see the same
        # load: checkpoint save + load, and the scoring's speed
        probe_env = {**os.environ, **clean_env(env), "PYTHONPATH": str(src)}     # OpenBLAS preloaded, as trials
        code = ("import time, json, os, tempfile, mlx.core as mx, prepare, train\n"
                "cfg = train.build_model_config(train.DEPTH, prepare.VOCAB_SIZE)\n"
                "m = train.GPT(cfg); m.init_weights(); mx.eval(m.parameters())\n"
                "d = tempfile.mkdtemp(); t = time.perf_counter(); train.save_checkpoint(m, cfg, d)\n"
                "save = time.perf_counter() - t; t = time.perf_counter()\n"
                "m2 = train.GPT(cfg); m2.load_weights(os.path.join(d, 'model.safetensors')); mx.eval(m2.parameters())\n"
                "load = time.perf_counter() - t; tok = prepare.Tokenizer.from_directory()\n"
                "rows = prepare.eval_rows(tok); t = time.perf_counter()\n"
                "prepare.bpb_of_rows(m, rows, prepare.get_token_bytes(), min(train.DEVICE_BATCH_SIZE, prepare.EVAL_BATCH_SIZE))\n"
                "print(json.dumps({'save': save, 'load': load, 'eval': time.perf_counter() - t}))\n")
        records, evals, inprocs = [], [], []
        for i in range(n_trials):
            spec = candidate(src, base, {"train.py": files["train.py"] + f"\n# trial {i}\n"}, seed=i,
                             smoke=False, time_budget=5, allowance=900, trial_id=f"integrity-{i}")
            r = w.run_trial(spec)
            if r.status != "ok":
                sys.exit(f"integrity trial {i}: {r.status} {r.reason}\n{r.log_tail}")
            records.append(r.metrics["eval"])
            evals.append(r.timings["evaluate"])
            p = subprocess.run([sys.executable, "-c", code], cwd=src, env=probe_env, capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"in-process measurement failed:\n{p.stderr[-2000:]}")
            inprocs.append(json.loads(p.stdout.strip().splitlines()[-1]))
        w.stop()

    med = lambda xs: stats(xs)[1]   # noqa: E731
    tokens = records[0]["tokens"]
    ev_wall = med(evals)
    ev_data, ev_model = med([r["seconds"]["data"] for r in records]), med([r["seconds"]["model"] for r in records])
    ev_probe, ev_eval = med([r["seconds"]["probe"] for r in records]), med([r["seconds"]["eval"] for r in records])
    ev_start = ev_wall - ev_data - ev_model - ev_probe - ev_eval     # interpreter, imports, sandbox
    inproc = {k: med([x[k] for x in inprocs]) for k in ("save", "load", "eval")}
    fixed = 2 * sandbox_start + inproc["save"] + ev_start + ev_model + ev_probe
    print(f"\ntrust path, {n_trials} real tiny-profile trials ({tokens:,} eval tokens), sandbox {mode}; medians:")
    print(f"  sandbox start        {sandbox_start * 1000:7.0f} ms per process (python -c pass: "
          f"{t_plain * 1000:.0f} ms plain, {t_boxed * 1000:.0f} ms sandboxed), 2 per trial")
    print(f"  checkpoint save      {inproc['save'] * 1000:7.0f} ms   (load {inproc['load'] * 1000:.0f} ms, "
          f"inside the evaluator's model rebuild)")
    print(f"  evaluator start-up   {ev_start * 1000:7.0f} ms   (interpreter, imports, sandbox)")
    print(f"  evaluator data       {ev_data * 1000:7.0f} ms   (tokenizer, token bytes, eval rows: the old path "
          f"paid this inside train.py too)")
    print(f"  model rebuild + load {ev_model * 1000:7.0f} ms")
    print(f"  causality probe      {ev_probe * 1000:7.0f} ms   (one forward pass; the model's first, so it "
          f"includes the warm-up the evaluation would otherwise pay)")
    print(f"  eval                 {ev_eval:7.2f} s    = {tokens / ev_eval:,.0f} tok/s in the evaluator vs "
          f"{tokens / inproc['eval']:,.0f} tok/s in-process ({inproc['eval'] / ev_eval:.2f}x)")
    for label, trial_s, target in (("60 s tiny-profile trial", TINY_TRIAL_S, TINY_TARGET),
                                   ("300 s default trial", DEFAULT_TRIAL_S, DEFAULT_TARGET)):
        share = fixed / trial_s
        print(f"  added fixed cost {fixed:.2f} s = {100 * share:.2f}% of a {label}: "
              f"{'meets' if share <= target else 'MISSES'} the target of <= {100 * target:g}%")


if __name__ == "__main__":
    main()
