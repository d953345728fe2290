"""One run of a checked-out commit: training in the sandbox under the worker's clock, then the
fixed evaluator in a sandbox of its own.

The trial's code is untrusted (a language model wrote it and nobody watches it run), so the
worker owns the three things a trial could otherwise fake:
- the clock: the worker times the training process itself and stops it (SIGTERM, then SIGKILL)
  at budget + start-up allowance; a run still going then is invalid (reason: time). What the run
  prints about its own time is kept for display only.
- the metric: training saves its model to a scratch folder and exits; the target's fixed evaluator
  (evaluate.py, hashed like prepare.py) rebuilds it in another process, asks it for logits only and
  computes val_bpb itself. Its record comes back in a folder the training process never had.
  Targets without an evaluator (upstream-shaped forks) keep the metric line of their own output,
  marked `self-reported`.
- the pre-flight: train.py saves its initial model (checkpoint/preflight) before its first step; while
  that step runs, the evaluator scores it on one row. An evaluator that cannot rebuild or run the
  candidate's model stops the trial within seconds instead of after its whole budget; a training
  process that dies before its first step ends it the same way (the worker calls both a pre-flight
  failure: the smoke run that used to be a process of its own).
- the data and the secrets: every process runs in the sandbox (worker/sandbox.py): no network,
  its own PID namespace, the code, venv and data read-only, the val and test shards absent during
  training (and the other split absent during evaluation), an empty HOME, writes to scratch only.
"""

import json
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .classify import Classified, classify, tail
from .runner import Outcome, Process, clean_env
from .sandbox import Policy, python_paths, returncode, wrap
from core.target import Target

# The evaluator's hard timeout: the larger of this and EVAL_TIMEOUT_FACTOR x the training budget.
EVAL_TIMEOUT_MIN = 600.0
EVAL_TIMEOUT_FACTOR = 2.0
# Exit code evaluate.py uses for a model that sees the future (its causality probe failed).
NOT_CAUSAL_EXIT = 4
# Environment every sandboxed process gets: no .pyc writes into the read-only code.
SANDBOX_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
# The split a self-reported target is asked to score on a held-out trial (it certifies it itself).
SELF_REPORTED_SPLIT_ENV = "AUTORESEARCH_EVAL_SPLIT"
# Pre-flight: the folder train.py saves its initial model to (inside --checkpoint), the evaluation
# tokens it is scored on (one row: prepare.py reads max(1, tokens // MAX_SEQ_LEN) rows), how often
# the worker looks for it, and how long its evaluation may take.
PREFLIGHT_DIR = "preflight"
PREFLIGHT_EVAL_TOKENS = "1"
PREFLIGHT_POLL = 0.05
PREFLIGHT_TIMEOUT = 300.0


@dataclass
class Setup:
    """What every process of this worker's trials shares."""
    target: Target
    python: str
    repo: Path                      # the worker's clone (the trial's cwd; read-only inside)
    env: dict                       # the worker's extra AUTORESEARCH_* settings
    sandbox: str                    # a resolved mode: bwrap | sandbox-exec | off
    data_dirs: tuple = ()           # folders trials may read (the prepared data)
    eval_files: dict = field(default_factory=dict)   # split -> files training must never see
    hidden: tuple = ()              # never visible to any trial process (e.g. the journal file)


@dataclass
class Run:
    """How one run went: its classification plus the worker's own measurements."""
    got: Classified
    train_seconds: float = 0.0      # wall time of the training process, measured by the worker
    eval_seconds: float = 0.0       # wall time of the evaluator process
    startup_seconds: float | None = None   # training process start to its first step (None: never reached)
    preflight_seconds: float = 0.0  # wall time of the pre-flight evaluation (it overlaps the first step)
    preflight_failed: bool = False  # the run ended in its pre-flight (evaluation failed, or died before step 0)


def run(setup: Setup, seed: int, budget: float, allowance: float, scratch: Path, log_path: Path, header: str,
        *, split: str = "val", extra_env: dict | None = None, on_progress=None, on_process=None,
        preflight: bool = False) -> Run:
    """Train `seed` for `budget` seconds, then score the saved model on `split`. `on_process(proc)` is
    called with each process as it starts (so the worker can abort it). `preflight`: score the
    initial model on one row while the first step runs (targets with an evaluator only)."""
    target = setup.target
    shutil.rmtree(scratch, ignore_errors=True)
    checkpoint = scratch / "checkpoint"
    checkpoint.mkdir(parents=True)
    extra = dict(extra_env or {})
    if target.self_reported and split != "val":
        extra[SELF_REPORTED_SPLIT_ENV] = split
    env = clean_env({**setup.env, **extra, **SANDBOX_ENV})

    # -- training, under the worker's clock
    deadline = budget + allowance
    cmd = target.run_command(seed, budget, setup.python, checkpoint=str(checkpoint))
    policy = _policy(setup, hidden=_all_files(setup.eval_files), writable=(scratch,))
    t_start, first_step = time.monotonic(), []

    def progress(p):
        if not first_step:   # start-up: to the start of the first step (its line comes when it ends)
            first_step.append(max(0.0, time.monotonic() - t_start - (p.get("dt_s") or 0.0)))
        if on_progress is not None:
            on_progress(p)

    pre = _Preflight(setup, checkpoint / PREFLIGHT_DIR, scratch / "preflight-result", env,
                     log_path.with_name(log_path.stem + ".preflight.log")) if preflight and not target.self_reported \
        else None

    def started(proc):
        if pre is not None:
            pre.watch(proc)
        if on_process is not None:
            on_process(proc)

    outcome = _process(setup, cmd, env, policy, log_path, header + f"# clock: {budget:g}s budget + {allowance:.0f}s "
                       f"start-up allowance = stopped at {deadline:.0f}s\n", deadline, progress, started)
    over_time = (f"time: still running {deadline:.0f}s after it started ({budget:g}s budget + {allowance:.0f}s start-up "
                 f"allowance measured on the mainline); the worker stopped it")
    got = classify(outcome, target, budget, needs_metric=target.self_reported, over_time=over_time)
    got = _named_hidden_reads(got, outcome.text, setup.eval_files)
    result = Run(got, train_seconds=outcome.seconds, startup_seconds=first_step[0] if first_step else None)
    if pre is not None:
        pre.join()
        result.preflight_seconds = pre.seconds
        if pre.failed is not None:
            result.got, result.preflight_failed = pre.failed, True
            return result
        result.preflight_failed = preflight and got.status == "crash" and not first_step
    if got.status != "ok":
        return result
    if target.self_reported:
        got.metrics.setdefault("eval_split", split)
        return result
    if not (checkpoint / "model.json").exists():
        result.got = Classified("crash", "no_summary", f"exited 0 but saved no model to the checkpoint folder "
                                f"({checkpoint.name}/model.json missing)", None, got.metrics, got.log_tail)
        return result

    # -- the fixed evaluator, in a sandbox of its own; its record comes back in a folder training never had
    results = scratch / "result"
    results.mkdir()
    record_path = results / "record.json"
    cmd = target.evaluate_command(str(checkpoint), split, str(record_path), setup.python)
    others = {s: files for s, files in setup.eval_files.items() if s != split}
    policy = _policy(setup, hidden=_all_files(others), writable=(results,), read_only=(checkpoint,))
    timeout = max(EVAL_TIMEOUT_MIN, EVAL_TIMEOUT_FACTOR * budget)
    outcome = _process(setup, cmd, env, policy, log_path, f"# evaluator ({split} split)\n", timeout,
                       None, on_process)
    result.eval_seconds = outcome.seconds
    record = _read_record(record_path)
    metrics = {**got.metrics, "eval_split": split}
    log_tail = tail(outcome.text)
    if outcome.returncode == NOT_CAUSAL_EXIT and record and record.get("error"):
        result.got = Classified("invalid", "invalid", record["error"], None, metrics, log_tail)
    elif outcome.returncode != 0 or outcome.timed_out or outcome.aborted:
        bad = classify(outcome, target, budget, needs_metric=False)
        result.got = Classified(bad.status, bad.crash_class, f"evaluation: {bad.reason}" if bad.reason else "",
                                None, metrics, bad.log_tail)
    elif not record or not isinstance(record.get("bpb"), int | float):
        result.got = Classified("crash", "no_summary", "the evaluator exited 0 but wrote no result record",
                                None, metrics, log_tail)
    elif not math.isfinite(record["bpb"]):
        result.got = Classified("crash", "nan", f"the metric is {record['bpb']}", record["bpb"], metrics, log_tail)
    else:
        metrics.update(val_bpb=record["bpb"], eval=record)
        result.got = Classified("ok", None, "", record["bpb"], metrics, got.log_tail)
    return result


class _Preflight:
    """Scores the model train.py saved before its first step (one row, the fixed evaluator, its own
    sandbox) while that step runs; a failure stops the training process at once."""

    def __init__(self, setup: Setup, folder: Path, results: Path, env: dict, log_path: Path):
        self.setup, self.folder, self.results, self.log_path = setup, folder, results, log_path
        self.env = {**env, "AUTORESEARCH_EVAL_TOKENS": PREFLIGHT_EVAL_TOKENS}
        self.failed: Classified | None = None
        self.seconds = 0.0
        self._thread = None

    def watch(self, training):
        self._thread = threading.Thread(target=self._run, args=(training,), name="preflight", daemon=True)
        self._thread.start()

    def join(self):
        if self._thread is not None:
            self._thread.join()

    def _run(self, training):
        while not (self.folder / "model.json").exists():       # train.py writes model.json last
            if training.proc.poll() is not None:
                return                                          # ended (or never saved one): nothing to score
            time.sleep(PREFLIGHT_POLL)
        self.results.mkdir(parents=True, exist_ok=True)
        record_path = self.results / "record.json"
        cmd = self.setup.target.evaluate_command(str(self.folder), "val", str(record_path), self.setup.python)
        others = {s: files for s, files in self.setup.eval_files.items() if s != "val"}
        policy = _policy(self.setup, hidden=_all_files(others), writable=(self.results,), read_only=(self.folder,))
        outcome = _process(self.setup, cmd, self.env, policy, self.log_path,
                           "# pre-flight: the initial model, one row of the val split\n", PREFLIGHT_TIMEOUT, None, None)
        self.seconds = outcome.seconds
        record = _read_record(record_path)
        if outcome.returncode == NOT_CAUSAL_EXIT and record and record.get("error"):
            self.failed = Classified("invalid", "invalid", record["error"], None, {}, tail(outcome.text))
        elif outcome.returncode != 0 or outcome.timed_out:
            bad = classify(outcome, self.setup.target, PREFLIGHT_TIMEOUT, needs_metric=False)
            self.failed = Classified(bad.status, bad.crash_class, f"evaluation: {bad.reason}", None, {}, bad.log_tail)
        if self.failed is not None:
            training.kill("preflight")


def _policy(setup: Setup, hidden, writable, read_only=()) -> Policy:
    reads = [*python_paths(setup.python), *setup.data_dirs, *read_only]
    reads += [Path(os.path.expanduser(p)) for p in setup.target.data]
    return Policy(cwd=setup.repo, read_only=tuple(Path(p) for p in reads),
                  hidden=tuple(Path(p) for p in (*hidden, *setup.hidden)), writable=tuple(writable))


def _process(setup, cmd, env, policy, log_path, header, timeout, on_progress, on_process):
    argv, env = wrap(cmd, policy, setup.sandbox, env)
    with open(log_path, "a") as f:
        f.write(header + f"# sandbox: {setup.sandbox}\n# env: {' '.join(sorted(env))}\n")
    proc = Process(argv, setup.repo, env, log_path, timeout, on_progress, append=True)
    try:
        proc.start()
    except OSError as e:
        return Outcome(returncode=127, timed_out=False, aborted=False, seconds=0.0, log_path=str(log_path),
                       text=f"could not start {' '.join(argv)}: {e}")
    if on_process is not None:
        on_process(proc)
    outcome = proc.wait()
    outcome.returncode = returncode(outcome.returncode, setup.sandbox)    # bwrap: 128 + N for signal N
    return outcome


def _all_files(eval_files: dict) -> list:
    return [f for files in eval_files.values() for f in files]


def _named_hidden_reads(got: Classified, text: str, eval_files: dict) -> Classified:
    """A run that crashed on a file it may not see tried to read the evaluation data: invalid, named."""
    if got.status != "crash":
        return got
    for split, files in eval_files.items():
        for f in files:
            if str(f) in text or Path(f).name in text:
                return Classified("invalid", "invalid", f"read the {split} split during training ({f}): training "
                                  f"never sees the evaluation data", None, got.metrics, got.log_tail)
    return got


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
