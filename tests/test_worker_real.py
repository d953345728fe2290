"""Worker with the real research target: prepare.py's data fingerprint, a real tiny-profile
training run of a real train.py commit (its pre-flight inside), and the events it writes to an
embedded (SQLite) journal. One real training trial only: it is the slow part (~20-40 s).
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fast_train import fast
from journal import open_journal
from test_worker import candidate, new_repo
from worker import TrialSpec, Worker, make_full_bundle

REPO_ROOT = Path(__file__).resolve().parent.parent
# The research target's files, copied from this checkout into a fresh repository.
TARGET_FILES = ("prepare.py", "train.py", "evaluate.py", "target.toml", "program.md")
# Seconds of training in the real trial.
REAL_BUDGET = 5
# Validation tokens for the real trial: a tiny eval keeps the test fast.
REAL_EVAL_TOKENS = "8192"


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    files = {name: (REPO_ROOT / name).read_text() for name in TARGET_FILES if (REPO_ROOT / name).exists()}
    files["train.py"] = fast(files["train.py"])     # a cheap step: the path is tested, not learning
    return new_repo(tmp_path_factory.mktemp("research") / "repo", files)


@pytest.fixture(scope="module")
def fingerprint(tiny_data):
    p = subprocess.run([sys.executable, "prepare.py", "--fingerprint"], cwd=REPO_ROOT, capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", **tiny_data.env}, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_real_candidate_trial_lands_in_journal(research, tiny_data, fingerprint, tmp_path):
    path, base = research
    db = tmp_path / "journal.db"
    w = Worker("real-1", tmp_path / "w", journal_url=str(db), campaign="real",
               expected_fingerprint=fingerprint["fingerprint"],
               env={**tiny_data.env, "AUTORESEARCH_EVAL_TOKENS": REAL_EVAL_TOKENS},
               heartbeat_s=0.5, progress_s=0.5)
    try:
        w.load_repo(make_full_bundle(path))
        info = w.info()
        assert info["problem"] is None, info["problem"]
        assert info["data_fingerprint"] == fingerprint["fingerprint"] and info["profile"] == "tiny"
        assert info["track"] == f"{w.hardware_class}/tiny/{fingerprint['time_budget']}s/" \
                                f"{fingerprint['fingerprint'][:12]}"

        train = (path / "train.py").read_text()
        edited, n = re.subn(r"^WARMDOWN_RATIO = [0-9.]+", "WARMDOWN_RATIO = 0.6", train, flags=re.MULTILINE)
        assert n == 1, "train.py has no WARMDOWN_RATIO constant to edit"
        # (a generous start-up allowance: this test is about the path, not the clock; a loaded machine
        # must not make it fail)
        spec = candidate(path, base, {"train.py": edited}, seed=1, time_budget=REAL_BUDGET, smoke=True,
                         candidate_id="cand-1", trial_id="real-trial-1", allowance=900)
        r = w.run_trial(spec)
        assert r.status == "ok", (r.reason, r.log_tail)
        assert math.isfinite(r.val_bpb) and 0 < r.val_bpb < 20
        assert r.metrics["data_fingerprint"] == fingerprint["fingerprint"]
        assert r.metrics["seed"] == 1 and r.metrics["num_steps"] >= 1
        # the pre-flight ran inside the trial (no separate smoke process)
        assert r.timings["preflight"] > 0 and r.timings["smoke"] == 0
        assert r.timings["train"] > 0 and r.timings["evaluate"] > 0
        assert r.metric_source == "evaluator" and r.metrics["eval"]["tokens"] == int(REAL_EVAL_TOKENS)
        assert "val_bpb:" in Path(r.log_path).read_text()
    finally:
        assert w.stop() is True

    with open_journal(str(db), campaign="real") as j:
        events = [ev for _, ev in j.read()]
    types = [ev.type for ev in events]
    assert "worker_heartbeat" in types
    started = types.index("trial_started")
    finished = types.index("trial_finished")
    progress = [ev for ev in events if ev.type == "trial_progress"]
    at = [i for i, t in enumerate(types) if t == "trial_progress"]
    assert progress and started < min(at) and max(at) < finished
    assert progress[0].data["trial_id"] == "real-trial-1" and progress[0].data["step"] >= 0
    assert {"loss", "tok_per_s", "seconds_left", "progress"} <= set(progress[0].data)
    s = events[started].data
    assert (s["trial_id"], s["commit"], s["seed"], s["kind"], s["candidate_id"], s["track"]) == \
        ("real-trial-1", spec.commit, 1, "candidate", "cand-1", w.track(REAL_BUDGET))
    f = events[finished].data
    assert f["status"] == "ok" and f["crash_class"] is None and f["val_bpb"] == r.val_bpb
    assert f["log_path"] == r.log_path and f["metrics"]["num_steps"] == r.metrics["num_steps"]
    assert set(f["timings"]) >= {"git", "validate", "smoke", "train", "journal"}
    assert all(ev.source == "real-1" for ev in events)


def test_real_fingerprint_mismatch_refused(research, tiny_data, fingerprint, tmp_path):
    path, base = research
    db = tmp_path / "journal.db"
    w = Worker("real-2", tmp_path / "w", journal_url=str(db), campaign="real", expected_fingerprint="0" * 64,
               env=tiny_data.env, heartbeat_s=0)
    try:
        w.load_repo(make_full_bundle(path))
        assert w.info()["data_fingerprint"] == fingerprint["fingerprint"]
        r = w.run_trial(TrialSpec("real-fp", base, kind="baseline"))
        assert (r.status, r.crash_class) == ("invalid", "invalid")
        assert fingerprint["fingerprint"][:12] in r.reason and "000000000000" in r.reason
        assert r.timings["smoke"] == 0 and r.timings["train"] == 0
    finally:
        w.stop()
    with open_journal(str(db), campaign="real") as j:
        finished = [ev.data for _, ev in j.read() if ev.type == "trial_finished"]
    assert finished[-1]["status"] == "invalid" and finished[-1]["trial_id"] == "real-fp"


def test_real_missing_cache_says_what_to_run(research, tmp_path):
    path, _ = research
    w = Worker("real-3", tmp_path / "w", campaign="real",
               env={"AUTORESEARCH_CACHE": str(tmp_path / "empty"), "AUTORESEARCH_PROFILE": "tiny"}, heartbeat_s=0)
    try:
        w.load_repo(make_full_bundle(path))
        info = w.info()
        assert info["data_fingerprint"] is None and "prepare.py" in info["problem"]
        r = w.run_trial(TrialSpec("real-nodata", "HEAD", kind="baseline"))
        assert r.status == "invalid" and "prepare.py" in r.reason
    finally:
        w.stop()
