"""Worker: target config, hardware, validation, runner, classification, and whole trials of
stand-in commits (small scripts in a temp git repository) -- every failure class, each
followed by a good trial on the same worker.

The real train.py / prepare.py / journal run in tests/test_worker_real.py, Ray in
tests/test_worker_ray.py. Helpers here (standin_repo, commit_files, ...) are shared with them
and with bench/worker_overhead.py.
"""

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from core.target import Target, TargetError
from worker import CandidateError, TrialSpec, Worker, make_bundle, make_full_bundle
from worker.classify import classify, parse_summary
from worker.hardware import detect
from worker.runner import Outcome, Process, clean_env, parse_progress
from core.paths import escapes as path_escapes, symlink_escapes

# The stand-in data fingerprint (what prepare.py --fingerprint prints in a stand-in repo).
STUB_FP = "ab" * 32

STUB_PREPARE = '''\
import json, os, sys
if "--fingerprint" in sys.argv:
    fp = os.environ.get("AUTORESEARCH_STUB_FP", "%s")
    if fp == "missing":
        print("no prepared data at ~/.cache/stub: run `python prepare.py --profile stub` first", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"fingerprint": fp, "profile": "stub", "time_budget": 2}))
''' % STUB_FP

# A well-behaved stand-in train.py: progress lines, the summary block, val_bpb from the seed.
GOOD_TRAIN = '''\
import argparse
p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0)
p.add_argument("--time-budget", type=float, default=2)
a = p.parse_args()
for step in range(3):
    print(f"step {step:05d} ({step * 33.3:.1f}%) | loss: {5 - step:.6f} | tok/sec: 1,234 | remaining: {3 - step}s", flush=True)
print("---")
print(f"val_bpb:          {1.5 + a.seed / 1000:.6f}")
print(f"training_seconds: {a.time_budget:.1f}")
print("num_steps:        3")
'''

# Stand-in candidates for each failure class (the whole train.py).
BAD_TRAIN = {
    "raise": 'import sys\nprint("starting", flush=True)\ndef f():\n    raise ValueError("boom from the candidate")\nf()\n',
    "nan": 'import sys\nprint("step 00001 (1.0%) | loss: nan | remaining: 1s")\n'
           'print("error: divergence: train loss nan at step 1; lower the learning rates")\nsys.exit(3)\n',
    "oom": 'raise MemoryError("Unable to allocate 64.0 GiB for an array")\n',
    "no_summary": 'print("trained, but forgot to report")\n',
    "ignores_budget": 'print("---")\nprint("val_bpb: 1.2")\nprint("training_seconds: 100.0")\n',
    "metric_nan": 'print("---")\nprint("val_bpb: nan")\nprint("training_seconds: 1.0")\n',
}

# Sleeps forever, and leaves a child (its command line tagged) in its process group: both must die
# when the worker's clock runs out.
SLEEPER = '''\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", os.environ["AUTORESEARCH_TAG"]])
print("step 00000 (0.0%) | loss: 9.0 | remaining: 1s", flush=True)
time.sleep(3600)
'''

# Prints its whole environment (to check what a trial can see), then a good summary.
ENV_DUMP = 'import json, os\nprint("ENV " + json.dumps(dict(os.environ)))\n' + GOOD_TRAIN

# The worker's clock = budget + start-up allowance (grace until measured): a short grace so the
# sleeper is stopped within seconds.
STUB_TARGET = "grace = 2\n"


# ---- helpers (also used by test_worker_real / test_worker_ray / bench) ---------------------

def git(repo_dir, *args, input=None) -> str:
    """A git command in a test's repository (the test's own, not the swarm's git layer)."""
    return subprocess.run(["git", *args], cwd=repo_dir, input=input, capture_output=True, check=True,
                          text=not isinstance(input, bytes)).stdout


def commit_files(repo_dir, files: dict, message="change", remove=()) -> str:
    """Write files (None = symlink spec as ('link', target)) and commit; returns the sha."""
    for path, content in files.items():
        full = Path(repo_dir) / path
        full.parent.mkdir(parents=True, exist_ok=True)
        if full.is_symlink() or full.exists():
            full.unlink()
        if isinstance(content, tuple) and content[0] == "link":
            os.symlink(content[1], full)
        else:
            full.write_text(content)
        git(repo_dir, "add", "--", path)
    for path in remove:
        git(repo_dir, "rm", "-q", "--", path)
    git(repo_dir, "commit", "-q", "-m", message)
    return git(repo_dir, "rev-parse", "HEAD").strip()


def new_repo(path, files: dict) -> tuple[Path, str]:
    path = Path(path)
    path.mkdir(parents=True)
    git(path, "init", "-q")
    git(path, "config", "user.name", "test")
    git(path, "config", "user.email", "test@example.com")
    return path, commit_files(path, files, "base")


def standin_repo(path, train=GOOD_TRAIN, target=STUB_TARGET) -> tuple[Path, str]:
    """A research repo of stand-ins: prepare.py (fingerprint only), train.py, target.toml."""
    return new_repo(path, {"prepare.py": STUB_PREPARE, "train.py": train, "target.toml": target})


def candidate(repo_dir, base, files, **spec) -> TrialSpec:
    """Commit `files` on `base` (on a side branch) and return a TrialSpec carrying its bundle."""
    git(repo_dir, "checkout", "-q", "--detach", base)
    sha = commit_files(repo_dir, files, spec.pop("message", "candidate"))
    git(repo_dir, "checkout", "-q", "-")
    spec.setdefault("trial_id", f"t-{sha[:8]}-{time.monotonic_ns()}")
    return TrialSpec(commit=sha, bundle=make_bundle(repo_dir, sha, base), base_commit=base, **spec)


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def src(tmp_path_factory):
    path, base = standin_repo(tmp_path_factory.mktemp("standin") / "src")
    return path, base


@pytest.fixture(scope="module")
def worker(src, tmp_path_factory):
    path, _ = src
    w = Worker("w1", tmp_path_factory.mktemp("w1"), campaign="test", heartbeat_s=0)
    w.load_repo(make_full_bundle(path))
    yield w
    w.stop()


def good_trial(w, src, seed=7):
    """A good trial on the same worker: proves the worker is still usable after a failure."""
    path, base = src
    r = w.run_trial(candidate(path, base, {"train.py": GOOD_TRAIN + "# ok\n"}, seed=seed, smoke=False))
    assert r.status == "ok", (r.reason, r.log_tail)
    assert r.val_bpb == pytest.approx(1.5 + seed / 1000)
    return r


# ---- target config -------------------------------------------------------------------------

def test_target_defaults_match_repo_target_toml():
    root = Path(__file__).resolve().parent.parent
    assert Target.load(root) == Target()                       # target.toml = the defaults
    assert Target.load(root / "tests") == Target()             # no target.toml = the defaults
    t = Target()
    assert t.run_command(3, 60.0, "py", "ck") == ["py", "train.py", "--seed", "3", "--time-budget", "60",
                                                  "--checkpoint", "ck"]
    assert t.evaluate_command("ck", "test", "r.json", "py") == ["py", "evaluate.py", "--checkpoint", "ck",
                                                                "--split", "test", "--result", "r.json"]
    assert not t.self_reported and t.fixed == ("prepare.py", "evaluate.py")
    assert t.run_command(0, 2.5, "/a b/py")[0] == "/a b/py"   # a path with a space stays one word
    assert t.fingerprint_command("py") == ["py", "prepare.py", "--fingerprint"]
    assert t.metric_value("val_bpb:   1.25\nval_bpb: 0.99\n") == 0.99
    assert t.metric_value("no metric here") is None
    assert t.is_editable("train.py") and not t.is_editable("prepare.py")


def test_target_foreign_and_errors():
    t = Target.from_toml('editable = ["src/*.py"]\nfixed = ["data.py"]\nrun = "{python} src/main.py {seed}"\n'
                         'metric = "^score=(\\\\S+)"\ndirection = "maximize"\ntime_budget = 30\n')
    assert t.is_editable("src/model.py") and not t.is_editable("data.py")
    assert t.self_reported          # a target.toml that names no evaluator reports its own metric
    assert Target.from_toml('evaluate = ""\n').self_reported
    with pytest.raises(TargetError, match="checkpoint"):
        Target.from_toml('run = "{python} train.py"\nevaluate = "{python} evaluate.py --checkpoint {checkpoint}"\n')
    assert t.metric_value("score=0.75\n") == 0.75 and t.direction == "maximize"
    bad = {
        'editable = "train.py"': "editable",
        'direction = "down"': "direction",
        'metric = "^val_bpb: .*"': "group",
        'metric = "("': "regular expression",
        'run = "{python} train.py {gpu}"': "placeholder",
        'typo_key = 1': "unknown key",
        'editable = ["train.py"]\nfixed = ["train.py"]': "both fixed and editable",
        'fixed = ["../prepare.py"]': "relative",
        'smoke_budget = 0': "smoke_budget",
        'name = ': "not valid TOML",
    }
    for text, words in bad.items():
        with pytest.raises(TargetError, match=words):
            Target.from_toml(text)


# ---- hardware ------------------------------------------------------------------------------

def test_hardware_class_describes_this_machine():
    cls, hw = detect()
    assert hw["mlx_backend"] in ("cpu", "metal", "cuda") and hw["mlx_version"]
    assert hw["cores"] >= 1 and hw["memory_gb"] >= 1
    assert cls == cls.lower() and " " not in cls
    if hw["mlx_backend"] == "cpu":
        assert cls.startswith("cpu-") and f"-{hw['cores']}c-{hw['memory_gb']}gb" in cls
    assert detect(python="/nonexistent/python")[1]["mlx_backend"] == "none"


# ---- runner: environment, progress, timeout --------------------------------------------------

def test_clean_env_drops_secrets():
    base = {"PATH": "/bin", "HOME": "/h", "ANTHROPIC_API_KEY": "sk-1", "GITHUB_TOKEN": "t",
            "MY_SECRET_THING": "s", "SWARM_JOURNAL": "redis://:pw@h:1/0", "REDIS_PASSWORD": "pw",
            "AWS_ACCESS_KEY": "k", "AUTORESEARCH_PROFILE": "tiny", "AUTORESEARCH_API_KEY": "x",
            "RAY_ADDRESS": "a", "UNRELATED": "u"}
    env = clean_env({"EXTRA": "1", "OTHER_TOKEN": "t", "JOURNAL_URL": "redis://:hunter2@h/0"}, base=base)
    assert env["PATH"] == "/bin" and env["HOME"] == "/h" and env["AUTORESEARCH_PROFILE"] == "tiny"
    assert env["EXTRA"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    for gone in ("ANTHROPIC_API_KEY", "GITHUB_TOKEN", "MY_SECRET_THING", "SWARM_JOURNAL", "REDIS_PASSWORD",
                 "AWS_ACCESS_KEY", "AUTORESEARCH_API_KEY", "RAY_ADDRESS", "UNRELATED", "OTHER_TOKEN",
                 "JOURNAL_URL"):
        assert gone not in env


def test_parse_progress():
    p = parse_progress("step 00012 (4.3%) | loss: 5.123456 | lrm: 1.00 | dt: 123ms | tok/sec: 12,345 | "
                       "mfu: 1.2% | epoch: 1 | remaining: 123s")
    assert p == {"step": 12, "progress": pytest.approx(0.043), "loss": 5.123456, "tok_per_s": 12345.0,
                 "seconds_left": 123.0, "dt_s": pytest.approx(0.123)}
    assert parse_progress("step 3 | loss: nan")["loss"] != parse_progress("step 3 | loss: nan")["loss"]
    assert parse_progress("val_bpb: 1.0") is None


def test_runner_streams_carriage_return_progress_and_logs_everything(tmp_path):
    script = ('import sys\nfor i in range(3):\n    sys.stdout.write(f"step {i:05d} ({i*10}.0%) | loss: 1.5 | '
              'remaining: {9-i}s\\r"); sys.stdout.flush()\nprint()\nprint("done")\n')
    seen = []
    out = Process([os.sys.executable, "-c", script], tmp_path, clean_env(), tmp_path / "log.txt", 30, seen.append).start().wait()
    assert out.returncode == 0 and not out.timed_out
    assert [p["step"] for p in seen] == [0, 1, 2] and seen[-1]["seconds_left"] == 7
    assert "done" in out.text and "done" in (tmp_path / "log.txt").read_text()


def test_runner_caps_the_log_but_keeps_its_end(tmp_path, monkeypatch):
    import worker.runner as runner
    monkeypatch.setattr(runner, "LOG_MAX", 2000)
    monkeypatch.setattr(runner, "KEEP_TAIL", 500)
    script = "for i in range(2000): print(f'line {i:05d}')\nprint('---')\nprint('val_bpb: 1.25')\n"
    out = Process([os.sys.executable, "-c", script], tmp_path, clean_env(), tmp_path / "log.txt", 30).start().wait()
    log = (tmp_path / "log.txt").read_text()
    assert len(log) < 4000 and "line 00000" in log and "bytes of output skipped" in log
    assert "val_bpb: 1.25" in log.splitlines()[-4:]
    assert Target().metric_value(out.text) == 1.25 and len(out.text) <= 500


# ---- classification ------------------------------------------------------------------------

def _outcome(text, rc=0, timed_out=False, aborted=False):
    return Outcome(rc, timed_out, aborted, 1.0, "log", text)


def test_classify_each_class():
    t = Target()
    cases = [
        (_outcome("---\nval_bpb: 1.1\ntraining_seconds: 2.0\n"), ("ok", None)),
        (_outcome("step 1\n", rc=-15, timed_out=True), ("crash", "timeout")),   # a hung evaluator
        (_outcome("error: divergence: loss inf at step 4\n", rc=3), ("crash", "nan")),
        (_outcome("Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n"
                  "MemoryError\n", rc=1), ("crash", "oom")),
        (_outcome("libc++abi: terminating due to uncaught exception of type std::bad_alloc\n", rc=-6),
         ("crash", "oom")),
        (_outcome("", rc=-9), ("crash", "oom")),
        (_outcome("Traceback (most recent call last):\n  File \"train.py\", line 9, in f\n    x = 1/0\n"
                  "ZeroDivisionError: division by zero\nmore output\n", rc=1), ("crash", "exception")),
        (_outcome("segfault\n", rc=-11), ("crash", "exception")),
        (_outcome("all fine\n"), ("crash", "no_summary")),
        (_outcome("val_bpb: nan\n"), ("crash", "nan")),
        # what a run says about its own time is for display: the worker's clock decides
        (_outcome("---\nval_bpb: 1.0\ntraining_seconds: 30.0\n"), ("ok", None)),
        (_outcome("", rc=-15, aborted=True), ("aborted", None)),
    ]
    for outcome, want in cases:
        got = classify(outcome, t, budget=2)
        assert (got.status, got.crash_class) == want, (outcome.text, got)
    clock = classify(_outcome("step 1\n", rc=-15, timed_out=True), t, 2, over_time="time: stopped")
    assert (clock.status, clock.crash_class, clock.reason) == ("invalid", "time", "time: stopped")
    assert classify(_outcome("---\ntraining_seconds: 2.0\n"), t, 2, needs_metric=False).status == "ok"
    exc = classify(cases[6][0], t, 2)
    assert exc.reason.startswith("ZeroDivisionError: division by zero") and "line 9" in exc.reason
    assert "x = 1/0" in exc.log_tail
    assert "SIGSEGV" in classify(cases[7][0], t, 2).reason


def test_parse_summary_json_line_wins_over_block():
    text = "---\nval_bpb: 1.5\nnum_steps: 10\nprofile: tiny\n"
    assert parse_summary(text) == {"val_bpb": 1.5, "num_steps": 10, "profile": "tiny"}
    text += 'summary_json: {"val_bpb": 1.5, "num_steps": 10, "seed": 3}\n'
    assert parse_summary(text)["seed"] == 3


# ---- validation ----------------------------------------------------------------------------

def test_path_checks():
    for bad in ("../x.py", "/etc/passwd", "a/../../b", ".git/hooks/pre-commit", "a//b"):
        assert path_escapes(bad), bad
    assert not path_escapes("train.py") and not path_escapes("src/model.py")
    assert symlink_escapes("train.py", b"/etc/passwd")
    assert symlink_escapes("a/train.py", b"../../outside.py")
    assert not symlink_escapes("a/train.py", b"../prepare.py")


# ---- whole trials of stand-in commits --------------------------------------------------------

def test_good_trial_reports_summary_and_timings(worker, src):
    path, base = src
    assert worker.info()["track"] == f"{worker.hardware_class}/stub/2s/{STUB_FP[:12]}"
    spec = candidate(path, base, {"train.py": GOOD_TRAIN + "# v2\n"}, seed=3)
    r = worker.run_trial(spec)
    assert (r.status, r.crash_class, r.val_bpb) == ("ok", None, pytest.approx(1.503))
    assert r.metrics == {"val_bpb": pytest.approx(1.503), "training_seconds": 2.0, "num_steps": 3,
                         "eval_split": "val"}
    assert set(r.timings) == {"git", "validate", "smoke", "train", "evaluate", "allowance", "journal", "total",
                              "startup", "training", "preflight", "idle", "training_share"}
    # the stand-in prints its steps at once: all of its process is start-up or training, nothing is lost
    assert r.timings["startup"] + r.timings["training"] == pytest.approx(r.timings["train"])
    assert r.timings["preflight"] == 0 and 0 <= r.timings["training_share"] < 1
    assert r.sandbox == worker.sandbox and r.metric_source == "self-reported"
    assert r.timings["smoke"] > 0 and r.timings["train"] > 0
    log = Path(r.log_path).read_text()
    assert spec.commit in log and "val_bpb" in log and "# exit: 0" in log
    assert log.rstrip().splitlines()[-1] == "# result: ok"
    assert Path(r.log_path).with_name(Path(r.log_path).stem + ".smoke.log").exists()
    # the trial ran on the worker's own branch, at the candidate
    assert worker.repo.current_branch() == "swarm/test/w1"
    assert worker.repo.head() == spec.commit
    assert json.loads((worker.workdir / "results.jsonl").read_text().splitlines()[-1])["status"] == "ok"


@pytest.mark.parametrize("kind,crash_class,words", [
    ("raise", "exception", "ValueError: boom from the candidate"),
    ("nan", "nan", "error: divergence"),
    ("oom", "oom", "Unable to allocate"),
    ("no_summary", "no_summary", "no metric line"),
    ("metric_nan", "nan", "nan"),
])
def test_crash_classes_then_still_usable(worker, src, kind, crash_class, words):
    path, base = src
    r = worker.run_trial(candidate(path, base, {"train.py": BAD_TRAIN[kind]}, smoke=False))
    assert (r.status, r.crash_class) == ("crash", crash_class), (r.reason, r.log_tail)
    assert words in r.reason and r.val_bpb is None
    assert r.log_tail and Path(r.log_path).exists()
    if kind == "raise":
        assert 'line 4, in f' in r.reason and "Traceback" in r.log_tail
    good_trial(worker, src)


def test_the_start_up_allowance_is_measured_on_mainline_runs(src, tmp_path):
    path, base = src
    w = Worker("clock", tmp_path / "w", campaign="test", heartbeat_s=0)
    try:
        w.load_repo(make_full_bundle(path))
        track = w.track()
        first = w.run_trial(TrialSpec(trial_id="c-1", commit=base, kind="baseline", smoke=False))
        assert first.status == "ok" and first.timings["allowance"] == 2     # nothing measured: grace
        measured = json.loads((w.workdir / "clock.json").read_text())[track]
        assert len(measured) == 1 and 0 <= measured[0] < first.timings["train"]
        second = w.run_trial(candidate(path, base, {"train.py": GOOD_TRAIN + "# c\n"}, smoke=False))
        assert second.timings["allowance"] == pytest.approx(1.5 * measured[0] + 15, abs=0.01)
        assert "mainline start-ups" in Path(second.log_path).read_text()
        assert json.loads((w.workdir / "clock.json").read_text())[track] == measured   # candidates don't count
        w2 = Worker("clock", tmp_path / "w", campaign="test", heartbeat_s=0)     # a restarted worker keeps it
        assert w2.clock.startups == {track: measured}
        w2.stop()
    finally:
        w.stop()


def test_sandbox_off_is_journaled_and_shown_in_every_view(src, tmp_path):
    from rich.console import Console

    from swarm.cli import render_status
    from coordinator.state import CampaignState
    from journal import open_journal
    from journal.export import table_text
    from journal.labjournal import markdown

    path, base = src
    db = tmp_path / "journal.db"
    w = Worker("debug", tmp_path / "w", journal_url=str(db), campaign="dbg", heartbeat_s=0, sandbox="off")
    try:
        w.load_repo(make_full_bundle(path))
        assert w.info()["sandbox"] == "off"
        r = w.run_trial(TrialSpec(trial_id="dbg-1", commit=base, kind="baseline", smoke=False))
        assert r.status == "ok" and r.sandbox == "off" and "# sandbox: off" in Path(r.log_path).read_text()
    finally:
        w.stop()
    with open_journal(str(db), campaign="dbg") as j:
        events = [ev for _, ev in j.read()]
        finished = [ev for ev in events if ev.type == "trial_finished"]
        assert finished[0].data["sandbox"] == "off" and finished[0].data["metric_source"] == "self-reported"
        st = CampaignState("dbg")
        for ev in events:
            st.apply(ev)
    words = "1 of 1 trials ran without the sandbox"
    assert words in markdown(st) and "1 of 1 values are self-reported" in markdown(st)
    assert words in table_text(st).replace("\n", " ")
    console = Console(width=200, record=True)
    render_status(st, console)
    assert words in console.export_text()


def test_self_reported_training_time_decides_nothing(worker, src):
    path, base = src
    r = worker.run_trial(candidate(path, base, {"train.py": BAD_TRAIN["ignores_budget"]}, smoke=False))
    assert r.status == "ok" and r.metrics["training_seconds"] == 100.0     # shown, not believed


def test_the_worker_clock_stops_the_whole_group(worker, src):
    path, base = src
    tag = f"SLEEPER-CHILD-{uuid.uuid4().hex}"
    worker.env_extra["AUTORESEARCH_TAG"] = tag
    try:
        r = worker.run_trial(candidate(path, base, {"train.py": SLEEPER}, smoke=False, time_budget=1))
    finally:
        del worker.env_extra["AUTORESEARCH_TAG"]
    assert (r.status, r.crash_class) == ("invalid", "time"), (r.reason, r.log_tail)
    assert "1s budget + 2s start-up allowance" in r.reason and r.timings["train"] < 600   # stopped, not its hour
    assert _tagged_processes(tag) == []      # the sleeper's child went with it
    good_trial(worker, src)


def test_smoke_failure_is_invalid(worker, src):
    path, base = src
    r = worker.run_trial(candidate(path, base, {"train.py": BAD_TRAIN["raise"]}, smoke=True))
    assert (r.status, r.crash_class) == ("invalid", "invalid")
    assert r.reason.startswith("smoke run failed (exception): ValueError: boom")
    assert r.log_path.endswith(".smoke.log") and r.timings["train"] == 0
    good_trial(worker, src)


def _tagged_processes(tag: str, wait: float = 120.0) -> list:
    """Processes of this machine whose command line holds `tag`, once none is left or after `wait` s
    (a killed process may take a moment to go)."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if tag.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _crafted_escape(repo_dir, base) -> str:
    """A commit whose tree holds '../evil.py' (git cannot make one; plumbing can)."""
    blob = git(repo_dir, "hash-object", "-w", "--stdin", input="print(1)\n").strip()
    sub = git(repo_dir, "mktree", input=f"100644 blob {blob}\tevil.py\n").strip()
    entries = git(repo_dir, "ls-tree", base) + f"040000 tree {sub}\t..\n"
    tree = git(repo_dir, "mktree", input=entries).strip()
    return git(repo_dir, "commit-tree", tree, "-p", base, "-m", "escape").strip()


def test_invalid_candidates_then_still_usable(worker, src):
    path, base = src
    cases = {
        "fixed file": ({"prepare.py": "print('changed')\n"}, "changes the fixed file prepare.py"),
        "outside editable": ({"notes.txt": "hi\n"}, "outside the editable set"),
        "symlink out": ({"train.py": ("link", "../../../etc/passwd")}, "symlink pointing outside"),
        "syntax": ({"train.py": "def broken(:\n    pass\n"}, "train.py does not compile: line 1: "),
    }
    for name, (files, words) in cases.items():
        r = worker.run_trial(candidate(path, base, files))
        assert (r.status, r.crash_class) == ("invalid", "invalid"), (name, r.reason)
        assert words in r.reason, (name, r.reason)
        assert r.timings["smoke"] == 0 and r.timings["train"] == 0     # no accelerator time spent
        assert words in Path(r.log_path).read_text()

    evil = _crafted_escape(path, base)
    r = worker.run_trial(TrialSpec("t-escape", evil, bundle=make_bundle(path, evil, base), base_commit=base))
    assert r.status == "invalid" and "'../evil.py' escapes the repository" in r.reason
    assert not (worker.workdir / "evil.py").exists()
    good_trial(worker, src)


def test_fixed_file_differs_from_campaign_hash(src, tmp_path):
    path, base = src
    w = Worker("w2", tmp_path / "w2", campaign="test", fixed_hashes={"prepare.py": "0" * 64}, heartbeat_s=0)
    try:
        w.load_repo(make_full_bundle(path))
        r = w.run_trial(TrialSpec("t-hash", base, kind="baseline"))
        assert r.status == "invalid" and "prepare.py differs from the campaign's" in r.reason
    finally:
        w.stop()


def test_commits_that_cannot_arrive(worker, src, tmp_path):
    path, base = src
    r = worker.run_trial(TrialSpec("t-missing", "f" * 40))
    assert r.status == "invalid" and "not in this worker's clone" in r.reason
    r = worker.run_trial(TrialSpec("t-garbage", "f" * 40, bundle=b"# v2 git bundle\ngarbage", base_commit=base))
    assert r.status == "invalid" and "bundle" in r.reason
    # a thin bundle based on a commit the worker never saw
    other, other_base = standin_repo(tmp_path / "other", train=GOOD_TRAIN + "# other\n")
    sha = commit_files(other, {"train.py": GOOD_TRAIN + "# other 2\n"})
    r = worker.run_trial(TrialSpec("t-thin", sha, bundle=make_bundle(other, sha, other_base),
                                   base_commit=other_base))
    assert r.status == "invalid" and "does not have" in r.reason
    good_trial(worker, src)


def test_patch_transport_keeps_commit_id(worker, src):
    path, base = src
    spec = candidate(path, base, {"train.py": GOOD_TRAIN + "# via patch\n"}, seed=5, smoke=False)
    patch = subprocess.run(["git", "format-patch", "--stdout", "--binary", f"{base}..{spec.commit}"], cwd=path,
                           capture_output=True, check=True).stdout
    spec.bundle = patch
    r = worker.run_trial(spec)
    assert r.status == "ok" and r.val_bpb == pytest.approx(1.505)
    assert worker.repo.head() == spec.commit   # same author/committer: same id


def test_secrets_absent_from_trial_env(worker, src, monkeypatch):
    path, base = src
    secrets = {"ANTHROPIC_API_KEY": "sk-ant-xyz", "GITHUB_TOKEN": "ghp_x1", "SWARM_JOURNAL": "redis://:pw9@h:1/0",
               "REDIS_PASSWORD": "hunter2", "DB_SECRET": "s3cr3t", "MY_URL": "redis://:hunter3@h:1/0"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AUTORESEARCH_VISIBLE", "yes")
    r = worker.run_trial(candidate(path, base, {"train.py": ENV_DUMP}, smoke=False))
    assert r.status == "ok", r.reason
    line = next(l for l in Path(r.log_path).read_text().splitlines() if l.startswith("ENV "))
    env = json.loads(line[4:])
    assert not set(secrets) & set(env)
    assert not any(v in json.dumps(env) for v in secrets.values())
    assert env["AUTORESEARCH_VISIBLE"] == "yes" and env["PYTHONUNBUFFERED"] == "1"
    if os.path.exists("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"):
        assert "openblas" in env["LD_PRELOAD"]


def test_trial_env_reaches_the_run_and_only_autoresearch_keys(worker, src):
    path, base = src
    spec = candidate(path, base, {"train.py": ENV_DUMP}, smoke=False)
    spec.env = {"AUTORESEARCH_EVAL_TOKENS": "4096"}
    r = worker.run_trial(spec)
    assert r.status == "ok", r.reason
    line = next(l for l in Path(r.log_path).read_text().splitlines() if l.startswith("ENV "))
    assert json.loads(line[4:])["AUTORESEARCH_EVAL_TOKENS"] == "4096"
    bad = candidate(path, base, {"train.py": ENV_DUMP + "# 2\n"}, smoke=False)
    bad.env = {"LD_PRELOAD": "/tmp/evil.so"}
    r = worker.run_trial(bad)
    assert r.status == "invalid" and "only set AUTORESEARCH_*" in r.reason and "LD_PRELOAD" in r.reason


def test_abort_and_busy(worker, src):
    path, base = src
    spec = candidate(path, base, {"train.py": 'import time\nprint("step 00000 (0.0%) | loss: 3.0", flush=True)\n'
                                             'time.sleep(3600)\n'}, smoke=False, time_budget=600)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", worker.run_trial(spec)))
    t.start()
    deadline = time.monotonic() + 120
    while worker.heartbeat().get("step") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    hb = worker.heartbeat()
    assert hb["trial_id"] == spec.trial_id and hb["phase"] == "train" and hb["loss"] == 3.0
    busy = worker.run_trial(TrialSpec("t-other", base))
    assert busy.status == "aborted" and "busy" in busy.reason
    assert worker.abort("some-other-trial") is False
    assert worker.abort(spec.trial_id) is True
    t.join(120)
    assert box["r"].status == "aborted" and box["r"].timings["train"] < 600   # stopped, not its hour
    assert worker.heartbeat()["trial_id"] is None
    good_trial(worker, src)


def test_fingerprint_mismatch_and_missing_data(src, tmp_path):
    path, base = src
    w = Worker("w3", tmp_path / "w3", campaign="test", expected_fingerprint="cd" * 32, heartbeat_s=0)
    try:
        w.load_repo(make_full_bundle(path))
        info = w.info()
        assert info["data_fingerprint"] == STUB_FP
        assert "mismatch" in info["problem"] and STUB_FP[:12] in info["problem"] and "cdcdcdcdcdcd" in info["problem"]
        r = w.run_trial(TrialSpec("t-fp", base, kind="baseline"))
        assert r.status == "invalid" and STUB_FP[:12] in r.reason and "cdcdcdcdcdcd" in r.reason
        assert r.timings["train"] == 0
    finally:
        w.stop()
    w = Worker("w4", tmp_path / "w4", campaign="test", env={"AUTORESEARCH_STUB_FP": "missing"}, heartbeat_s=0)
    try:
        w.load_repo(make_full_bundle(path))
        assert w.info()["data_fingerprint"] is None and "python prepare.py --profile stub" in w.info()["problem"]
        r = w.run_trial(TrialSpec("t-nodata", base, kind="baseline"))
        assert r.status == "invalid" and "python prepare.py --profile stub" in r.reason
    finally:
        w.stop()


def test_restarted_worker_finds_its_clone_and_stop_refuses_new_trials(src, tmp_path):
    path, base = src
    w = Worker("w5", tmp_path / "w5", campaign="test", heartbeat_s=0)
    w.load_repo(make_full_bundle(path))
    w.stop()
    w = Worker("w5", tmp_path / "w5", campaign="test", heartbeat_s=0)
    assert w.info()["problem"] is None and w.info()["data_fingerprint"] == STUB_FP
    r = w.run_trial(TrialSpec("t-again", base, kind="baseline", smoke=False))
    assert r.status == "ok"
    assert w.stop() is True
    r = w.run_trial(TrialSpec("t-after-stop", base, kind="baseline"))
    assert r.status == "aborted" and "stopping" in r.reason


def test_bad_names_and_bundles_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="branch name"):
        Worker("bad name", tmp_path / "w", campaign="test")
    w = Worker("w6", tmp_path / "w6", campaign="test", heartbeat_s=0)
    with pytest.raises(CandidateError, match="git bundle"):
        w.load_repo(b"not a bundle")
    assert "load_repo" in w.info()["problem"]
    r = w.run_trial(TrialSpec("t-no-repo", "HEAD"))
    assert r.status == "invalid" and "load_repo" in r.reason
    w.stop()


def test_cli_runs_one_commit(tmp_path, capsys):
    from worker.cli import main
    path, base = standin_repo(tmp_path / "clisrc")
    sha = commit_files(path, {"train.py": GOOD_TRAIN + "# cli\n"}, "cli candidate")
    code = main(["--repo", str(path), "--commit", sha, "--base", base, "--seed", "2",
                 "--workdir", str(tmp_path / "cli"), "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["status"] == "ok" and out["val_bpb"] == pytest.approx(1.502)
    bad = commit_files(path, {"prepare.py": "# edited\n"}, "edits prepare")
    code = main(["--repo", str(path), "--commit", bad, "--base", sha, "--workdir", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert code == 1 and "status:   invalid" in out and "prepare.py" in out
