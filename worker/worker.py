"""The worker: one accelerator, one trial at a time, every trial ending in a result.

A trial is one training run of one commit with one seed. The worker trusts
nothing it is given (the commit is validated and smoke-run before it gets the
accelerator for real) and loses nothing it produces (every trial ends in a
TrialResult, a trial_finished event and a log on disk). It works as plain
Python (tests, `swarm trial`) and inside a Ray actor (worker/actor.py).
"""

import json
import math
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from core.target import Target, TargetError, parse_fingerprint, track_name
from journal.events import result_event_id

from . import accounting, hardware, trial
from .classify import Classified, tail
from .clock import StartupClock
from .fork import budget_of
from .journal_writer import JournalWriter
from .repo import BUNDLE_SIGNATURE, CandidateError, WorkerRepo, branch_name
from .runner import clean_env
from .sandbox import SandboxError, resolve_mode
from .validate import validate

# Seconds between worker_heartbeat events (the coordinator's lease is several of these).
HEARTBEAT_S = 10.0
# Seconds between trial_progress events of one trial, at least.
PROGRESS_S = 5.0
# Seconds the fingerprint command may take (it verifies the prepared cache).
FINGERPRINT_TIMEOUT = 600
# Trial kinds (CONTRACTS.md).
KINDS = ("baseline", "candidate", "retest", "heldout")


@dataclass
class TrialSpec:
    trial_id: str
    commit: str
    seed: int = 0
    bundle: bytes | None = None        # git bundle, or `git format-patch --stdout` bytes (needs base_commit)
    base_commit: str | None = None     # the candidate may differ from it only in editable files
    kind: str = "candidate"
    candidate_id: str | None = None
    time_budget: float | None = None   # None: the profile's budget
    smoke: bool = True                 # short smoke run before the real one
    track: str | None = None           # when given, must be this worker's track
    env: dict = field(default_factory=dict)  # AUTORESEARCH_* settings of this trial only
    allowance: float | None = None     # start-up seconds allowed on top of the budget (None: measured)

    @classmethod
    def coerce(cls, spec) -> "TrialSpec":
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, dict):
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in spec.items() if k in known})
        raise TypeError(f"run_trial takes a TrialSpec (or its dict), got {type(spec).__name__}")


@dataclass
class TrialResult:
    trial_id: str
    worker: str
    commit: str
    seed: int
    status: str                        # ok | crash | invalid | aborted
    crash_class: str | None = None     # None | exception | oom | nan | timeout | no_summary | invalid | time
    reason: str = ""
    val_bpb: float | None = None       # the target's metric; None unless status is ok
    metrics: dict = field(default_factory=dict)
    log_tail: str = ""
    log_path: str | None = None
    timings: dict = field(default_factory=dict)   # seconds: git, validate, smoke, train, evaluate, journal, total + the accelerator split (worker/accounting.py)
    sandbox: str | None = None         # how its processes were confined: bwrap | sandbox-exec | off
    metric_source: str | None = None   # evaluator | self-reported (the run's own output)

    def to_dict(self) -> dict:
        return asdict(self)


class Worker:
    """See CONTRACTS.md. Extra keyword arguments: target (a Target instead of the repo's
    target.toml), python (the trial's interpreter), heartbeat_s, progress_s, sandbox (auto | bwrap |
    sandbox-exec | off; off is for debugging only and is journaled on every trial)."""

    def __init__(self, name, workdir, journal_url=None, campaign="default", expected_fingerprint=None,
                 fixed_hashes=None, env=None, *, target: Target | None = None, python: str | None = None,
                 heartbeat_s: float = HEARTBEAT_S, progress_s: float = PROGRESS_S, sandbox: str = "auto"):
        self.name = name
        self.campaign = campaign
        self.workdir = Path(workdir).expanduser().resolve()
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.expected_fingerprint = expected_fingerprint
        self.campaign_hashes = dict(fixed_hashes) if fixed_hashes else None
        self.env_extra = dict(env or {})
        self.python = python or sys.executable
        self.progress_s = progress_s
        self._given_target = target
        self.repo = WorkerRepo(self.workdir / "repo", branch_name(campaign, name))
        self.scratch = self.workdir / "scratch"
        try:
            self.sandbox, self.sandbox_problem = resolve_mode(sandbox), None
        except SandboxError as e:
            self.sandbox, self.sandbox_problem = sandbox, str(e)
        # the journal file of an embedded journal (and SQLite's companions) is never visible to a trial
        db = Path(journal_url).expanduser().resolve() if journal_url and "://" not in journal_url else None
        self.hidden = (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if db else ()
        self.clock = StartupClock(self.workdir / "clock.json")

        self.hardware_class, self.hardware = hardware.detect(self.python, clean_env(self.env_extra))

        self._trial_lock = threading.Lock()     # one trial (or load_repo) at a time
        self._state_lock = threading.Lock()
        self._state = {"trial_id": None, "phase": "idle"}
        self._abort = threading.Event()
        self._process = None
        self._stopping = False
        self._closed = threading.Event()

        self.journal = JournalWriter(journal_url, campaign, name, self.workdir / "unsent-events.jsonl") \
            if journal_url else None
        self._heartbeat_thread = None
        if self.journal is not None and heartbeat_s:
            self._heartbeat_thread = threading.Thread(target=self._beat, args=(heartbeat_s,),
                                                      name=f"heartbeat-{name}", daemon=True)
            self._heartbeat_thread.start()

        self.target = target or Target()
        self.fixed_hashes = self.campaign_hashes or {}
        self.fingerprint = {}
        self.problem = "no research repository yet: call load_repo(bundle)"
        if self.repo.loaded:    # a restarted worker finds its clone
            self._after_load()

    # ---- knowing itself --------------------------------------------------------------------

    def load_repo(self, bundle_bytes: bytes) -> str:
        """Clone (or update) the research repository from a bundle; read its target and the data
        fingerprint. Returns the commit checked out (the bundle's HEAD)."""
        with self._trial_lock:
            head = self.repo.load(bundle_bytes)
            self._after_load()
            return head

    def _after_load(self):
        try:
            self.target = self._given_target or Target.load(self.repo.path)
        except TargetError as e:
            self.problem = str(e)
            return
        head = self.repo.head()
        # without campaign hashes, the fixed files as loaded are the reference
        self.fixed_hashes = self.campaign_hashes or {
            p: h for p, h in self.repo.file_hashes(head, self.target.fixed).items() if h}
        self.fingerprint, self.problem = self._read_fingerprint()

    def _read_fingerprint(self) -> tuple[dict, str | None]:
        cmd = self.target.fingerprint_command(self.python)
        try:
            p = subprocess.run(cmd, cwd=self.repo.path, env=clean_env(self.env_extra),
                               capture_output=True, text=True, timeout=FINGERPRINT_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as e:
            return {}, f"could not run the fingerprint command {' '.join(cmd)}: {e}"
        if p.returncode != 0:
            said = tail((p.stderr or "") + (p.stdout or ""), 6).strip()
            return {}, f"no prepared data (fingerprint command exited {p.returncode}): {said}"
        fp = parse_fingerprint(p.stdout)
        if not fp:
            return {}, f"the fingerprint command {' '.join(cmd)} printed no fingerprint: {p.stdout.strip()[-200:]}"
        fp.setdefault("profile", None)
        if not fp.get("time_budget"):   # else target.toml's, else the fork's prepare.py constant
            fp["time_budget"] = self.target.time_budget or budget_of(self.repo.path)
        if self.expected_fingerprint and fp["fingerprint"] != self.expected_fingerprint:
            return fp, (f"data fingerprint mismatch: this worker's prepared data is {fp['fingerprint'][:12]}, "
                        f"the campaign's is {self.expected_fingerprint[:12]}; prepare the same data "
                        f"(same profile, same source) on this machine or join another campaign")
        return fp, None

    def track(self, budget=None) -> str | None:
        fp = self.fingerprint.get("fingerprint")
        budget = budget or self.fingerprint.get("time_budget")
        if not fp or not budget:
            return None
        return track_name(self.hardware_class, self.fingerprint.get("profile") or self.target.name, budget, fp)

    def info(self) -> dict:
        return {"name": self.name, "hardware_class": self.hardware_class, "hardware": self.hardware,
                "mlx_backend": self.hardware.get("mlx_backend"),
                "mlx_version": self.hardware.get("mlx_version"),
                "data_fingerprint": self.fingerprint.get("fingerprint"),
                "profile": self.fingerprint.get("profile"),
                "time_budget": self.fingerprint.get("time_budget"),
                "track": self.track(), "problem": self.sandbox_problem or self.problem, "target": self.target.name,
                "sandbox": self.sandbox, "metric_source": "self-reported" if self.target.self_reported else "evaluator",
                "branch": self.repo.branch, "busy": self._trial_lock.locked()}

    def heartbeat(self) -> dict:
        """What the worker is doing now: trial_id, phase, last progress (for direct polling)."""
        with self._state_lock:
            return {"worker": self.name, "time": time.time(), **self._state}

    # ---- running trials --------------------------------------------------------------------

    def run_trial(self, spec) -> TrialResult:
        """Run one trial. Never raises for a bad candidate: every path returns a TrialResult
        (and, with a journal, writes trial_started and trial_finished)."""
        spec = TrialSpec.coerce(spec)
        if self._stopping or not self._trial_lock.acquire(blocking=False):
            why = "worker is stopping" if self._stopping else \
                f"worker is busy with trial {self._state.get('trial_id')}"
            return TrialResult(spec.trial_id, self.name, spec.commit, spec.seed, "aborted", reason=why)
        try:
            return self._run_trial(spec)
        finally:
            with self._state_lock:
                self._state = {"trial_id": None, "phase": "idle"}
            self._process = None
            self._trial_lock.release()

    def _run_trial(self, spec: TrialSpec) -> TrialResult:
        t0 = time.monotonic()
        self._abort.clear()
        timings = accounting.start()
        self._set_state(trial_id=spec.trial_id, phase="starting", step=None, progress=None,
                        loss=None, tok_per_s=None, seconds_left=None)
        budget = spec.time_budget or self.fingerprint.get("time_budget")
        track = spec.track or self.track(budget)
        log_path = self.logs / f"{_safe(spec.trial_id)}.log"
        # the log starts with what the worker knows and ends with its verdict, whatever ran between
        _write_log(log_path, f"# trial {spec.trial_id} worker {self.name} commit {spec.commit} "
                             f"seed {spec.seed} kind {spec.kind} budget {budget}\n", mode="w")
        log_path.with_name(log_path.stem + ".smoke.log").unlink(missing_ok=True)
        log_path.with_name(log_path.stem + ".preflight.log").unlink(missing_ok=True)
        common = {"trial_id": spec.trial_id, "worker": self.name, "track": track, "commit": spec.commit,
                  "seed": spec.seed, "kind": spec.kind, "candidate_id": spec.candidate_id}
        timings["journal"] += self._emit("trial_started", common, wait=True)
        try:
            result = self._execute(spec, budget, log_path, timings)
        except CandidateError as e:
            result = self._result(spec, "invalid", "invalid", str(e), log_path)
        except Exception as e:  # a worker bug or a broken machine: not the candidate's fault
            result = self._result(spec, "aborted", None, f"worker error: {type(e).__name__}: {e}",
                                  log_path, log_tail=tail(traceback.format_exc()))
        _write_log(log_path, f"# result: {result.status}"
                             f"{' (' + result.crash_class + ')' if result.crash_class else ''}"
                             f"{': ' + result.reason if result.reason else ''}\n")
        result.timings = timings
        result.sandbox = self.sandbox
        result.metric_source = "self-reported" if self.target.self_reported else "evaluator"
        accounting.close(timings, time.monotonic() - t0)
        finished = {**common, **{k: v for k, v in result.to_dict().items() if k not in common},
                    "timings": dict(timings)}
        timings["journal"] += self._emit("trial_finished", finished, wait=True,
                                         event_id=result_event_id(spec.trial_id))
        self._keep_result(finished)
        accounting.close(timings, time.monotonic() - t0)     # the returned copy counts that last write too
        return result

    def _execute(self, spec: TrialSpec, budget, log_path: Path, timings: dict) -> TrialResult:
        def invalid(reason, **kw):
            return self._result(spec, "invalid", "invalid", reason, log_path, **kw)

        # -- who we are: refuse before touching anything when the data is not the campaign's
        if self.sandbox_problem or self.problem:
            return invalid(self.sandbox_problem or self.problem)
        if spec.kind not in KINDS:
            return invalid(f"unknown trial kind {spec.kind!r} (one of {', '.join(KINDS)})")
        if not budget or not (isinstance(budget, int | float) and budget > 0 and math.isfinite(budget)):
            return invalid(f"no usable time budget ({budget!r}): give time_budget in the TrialSpec or "
                           "time_budget in target.toml")
        foreign = sorted(k for k in (spec.env or {}) if not str(k).startswith("AUTORESEARCH_"))
        if foreign:
            return invalid(f"TrialSpec.env may only set AUTORESEARCH_* variables, got {', '.join(foreign)}")
        mine = self.track(budget)
        if spec.track and spec.track != mine:
            return invalid(f"track mismatch: the trial is for {spec.track}, this worker is {mine}")

        # -- git: bring the commit in (bundle or patch), find base and commit
        t = time.monotonic()
        self._set_state(phase="git")
        commit = spec.commit
        if spec.bundle:
            if BUNDLE_SIGNATURE.match(bytes(spec.bundle[:20])):
                self.repo.import_bundle(bytes(spec.bundle))
            else:
                commit = self.repo.apply_patch(bytes(spec.bundle), self.repo.resolve(spec.base_commit))
        sha = self.repo.resolve(commit)
        base = self.repo.resolve(spec.base_commit) if spec.base_commit else None
        timings["git"] += time.monotonic() - t
        if sha is None:
            return invalid(f"commit {spec.commit} is not in this worker's clone: send it as a bundle "
                           "(TrialSpec.bundle, e.g. worker.repo.make_bundle(repo, commit, base))")
        if spec.base_commit and base is None:
            return invalid(f"base commit {spec.base_commit} is not in this worker's clone")

        # -- validation, from git objects, before anything is checked out
        t = time.monotonic()
        self._set_state(phase="validate")
        problems = validate(self.repo, self.target, sha, base, self.fixed_hashes)
        timings["validate"] += time.monotonic() - t
        if problems:
            return invalid("; ".join(problems))

        t = time.monotonic()
        self.repo.checkout(sha)
        timings["git"] += time.monotonic() - t
        header = f"# checked out {sha} on {self.repo.branch}\n"
        if commit != spec.commit:
            header += f"# applied as a patch: {spec.commit} is {sha} here\n"

        # -- smoke run: a few steps, tiny eval; a failure makes the candidate invalid
        allowance, allowance_from = self.clock.allowance(mine, self.target.grace, spec.allowance)
        timings["allowance"] = allowance
        # a target with the fixed evaluator gets the pre-flight inside its own trial instead (worker/trial.py)
        preflight = spec.smoke and not self.target.self_reported
        if spec.smoke and self.target.self_reported and not self.target.smoke:
            _write_log(log_path, "# smoke run skipped: target.toml says smoke = false (the target cannot shorten "
                                 "its evaluation, so a smoke run would be a full one)\n")
        elif spec.smoke and self.target.self_reported:
            t = time.monotonic()
            self._set_state(phase="smoke")
            smoke_log = log_path.with_name(log_path.stem + ".smoke.log")
            _write_log(log_path, f"# smoke run: {smoke_log}\n")
            _write_log(smoke_log, header, mode="w")
            got = self._run(spec, self.target.smoke_budget, allowance, smoke_log,
                            extra_env=self.target.smoke_env).got
            timings["smoke"] += time.monotonic() - t
            if got.status == "aborted":
                return self._from(spec, got, smoke_log)
            if got.status != "ok":
                return invalid(f"smoke run failed ({got.crash_class}): {got.reason}",
                               log_tail=got.log_tail, path=smoke_log)

        # -- the trial itself: training under the worker's clock, then the fixed evaluator
        self._set_state(phase="train")
        _write_log(log_path, header + f"# start-up allowance: {allowance:.0f}s ({allowance_from})\n")
        ran = self._run(spec, budget, allowance, log_path, extra_env=spec.env,
                        split="test" if spec.kind == "heldout" else "val",
                        on_progress=self._progress_reporter(spec), preflight=preflight)
        accounting.add_run(timings, ran)
        got = ran.got
        if ran.preflight_failed:
            preflight_log = log_path.with_name(log_path.stem + ".preflight.log")
            return invalid(f"pre-flight failed ({got.crash_class}): {got.reason}", log_tail=got.log_tail,
                           path=preflight_log if preflight_log.exists() and got.reason.startswith(
                               ("evaluation", "not causal")) else log_path)
        if got.status == "ok" and spec.kind == "baseline":
            self.clock.measured(mine, ran.train_seconds - budget)
        data_fp = got.metrics.get("data_fingerprint") if got.metrics else None
        if got.status == "ok" and data_fp and data_fp != self.fingerprint.get("fingerprint"):
            got = Classified("invalid", "invalid", f"the run used data {str(data_fp)[:12]}, not this worker's "
                             f"{self.fingerprint['fingerprint'][:12]} (did the cache change?)",
                             got.value, got.metrics, got.log_tail)
        return self._from(spec, got, log_path)

    def _run(self, spec, budget, allowance, log_path, split="val", extra_env=None, on_progress=None,
             preflight=False) -> trial.Run:
        """Training and evaluation of the checked-out commit (worker/trial.py). Honors abort() at any moment."""
        if self._abort.is_set():
            return trial.Run(Classified("aborted", None, "aborted by request"))
        setup = trial.Setup(self.target, self.python, self.repo.path, self.env_extra, self.sandbox,
                            data_dirs=tuple(self.fingerprint.get("data_dirs") or ()),
                            eval_files=dict(self.fingerprint.get("eval_files") or {}), hidden=self.hidden)
        scratch = self.scratch / _safe(spec.trial_id)

        def started(proc):
            self._process = proc
            if self._abort.is_set():      # abort() came between the check above and start()
                proc.kill("aborted")
        try:
            return trial.run(setup, spec.seed, budget, allowance, scratch, log_path, "", split=split,
                             extra_env=extra_env, on_progress=on_progress, on_process=started,
                             preflight=preflight)
        finally:
            self._process = None
            shutil.rmtree(scratch, ignore_errors=True)

    # ---- progress and results ----------------------------------------------------------------

    def _progress_reporter(self, spec: TrialSpec):
        last = [0.0]

        def report(p: dict):
            self._set_state(**p)
            now = time.monotonic()
            if self.journal is not None and now - last[0] >= self.progress_s:
                last[0] = now
                self._emit("trial_progress", {"trial_id": spec.trial_id, "worker": self.name, **p})
        return report

    def _result(self, spec, status, crash_class, reason, log_path, log_tail="", path=None) -> TrialResult:
        return TrialResult(spec.trial_id, self.name, spec.commit, spec.seed, status, crash_class, reason,
                           None, {}, log_tail or reason, str(path or log_path))

    def _from(self, spec, got: Classified, log_path) -> TrialResult:
        return TrialResult(spec.trial_id, self.name, spec.commit, spec.seed, got.status, got.crash_class,
                           got.reason, got.value if got.status == "ok" else None, got.metrics,
                           got.log_tail, str(log_path))

    def _set_state(self, **kw):
        with self._state_lock:
            self._state.update(kw)

    # ---- abort and stop --------------------------------------------------------------------

    def abort(self, trial_id: str | None = None) -> bool:
        """Abort the running trial (only if it is `trial_id`, when given). True if one was running."""
        with self._state_lock:
            current = self._state.get("trial_id")
        if current is None or (trial_id is not None and trial_id != current):
            return False
        self._abort.set()
        proc = self._process
        if proc is not None:
            proc.kill("aborted")
        return True

    def stop(self, graceful: bool = True, timeout: float | None = None) -> bool:
        """Take no new trials; finish the current one (graceful; after `timeout` seconds it is aborted)
        or abort it now; then flush the journal and stop the heartbeat. True when nothing was cut off."""
        self._stopping = True
        clean = True
        if not graceful:
            clean = not self.abort()
        if not self._trial_lock.acquire(timeout=-1 if timeout is None else timeout):
            clean = not self.abort()
            self._trial_lock.acquire()
        try:
            self._closed.set()
            if self._heartbeat_thread is not None:
                self._heartbeat_thread.join(5)
            if self.journal is not None:
                self.journal.close()
        finally:
            self._trial_lock.release()
        return clean

    # ---- journal ---------------------------------------------------------------------------

    def _emit(self, type, data, wait=False, event_id=None) -> float:
        if self.journal is None:
            return 0.0
        t = time.monotonic()
        self.journal.emit(type, data, wait, event_id)
        return time.monotonic() - t

    def _beat(self, interval):
        while True:
            with self._state_lock:
                trial_id = self._state.get("trial_id")
            self.journal.emit("worker_heartbeat", {"worker": self.name, "trial_id": trial_id})
            if self._closed.wait(interval):
                return

    def _keep_result(self, finished: dict):
        # a local copy of every result: survives a journal that was down and a lost Ray reply
        with open(self.workdir / "results.jsonl", "a") as f:
            f.write(json.dumps(finished, default=str) + "\n")


def _safe(trial_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(trial_id))[:120] or "trial"


def _write_log(path, text: str, mode: str = "a"):
    with open(path, mode) as f:
        f.write(text)
