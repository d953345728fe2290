"""Campaigns on one machine with local Ray: the synthetic target (known null, real and lucky
effects), `swarm stop` / `swarm status`, a coordinator killed mid-campaign and resumed, a worker
that stops answering (its lease expires)."""

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest
from campaign_events import events_of, of_type, state_of
from standin_worker import standin_class
from synthetic import git, make_repo, truth

from agents.base import Hypothesis, Proposer
from agents.offline import OfflineImplementer, OfflineProposer
from coordinator.campaign import Campaign
from swarm.cli import main as swarm
from swarm.cli import render_status
from coordinator.config import load_config
from coordinator.state import COUNTED
from journal.views import replay

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 300    # generous deadline of every condition waited on (a loaded machine, tests in parallel)


@pytest.fixture(scope="module")
def ray_local():
    import ray
    if ray.is_initialized():          # a session another module left open
        ray.shutdown()
    ray.init(address="local", num_cpus=2, resources={"mlx": 2}, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def config(repo, tag, **flags):
    flags = {"repo": str(repo), "campaign": tag, "poll_s": 0.2, **flags}
    return load_config(flags, environ={})


def check_consistent(repo, tag, events):
    """The journal, its views and git agree; every trial finished once; no merge twice."""
    st = state_of(events, tag)
    view = replay(events)
    finished = Counter(ev.data["trial_id"] for ev in of_type(events, "trial_finished"))
    assert finished and max(finished.values()) == 1
    merged = Counter(ev.data["candidate_id"] for ev in of_type(events, "merged"))
    assert not merged or max(merged.values()) == 1
    for track, ts in st.swarm.items():
        want = st.merges[ts.merge].commit if ts.merge else ts.trusted
        branch = git(repo, "rev-parse", f"swarm/{tag}/{track_slug(track)}/mainline")
        assert branch == want
        assert view.tracks[track].head in (want, None)
    for cid, c in st.candidates.items():
        if c.commit:
            assert git(repo, "rev-parse", f"refs/swarm/{tag}/exp/{cid}") == c.commit
    for ev in of_type(events, "merged"):
        d = ev.data
        assert git(repo, "rev-parse", f"refs/swarm/{tag}/merge/{d['candidate_id']}") == d["commit"]
        parents = git(repo, "rev-list", "--parents", "-n1", d["commit"]).split()[1:]
        assert parents == [d["previous"], st.candidates[d["candidate_id"]].commit]
    return st


def track_slug(track):
    from coordinator.mainline import track_slug as slug
    return slug(track)


def train_py(repo, commit):
    return git(repo, "show", f"{commit}:train.py")


# -----------------------------------------------------------------------------

class LuckyFirst(Proposer):
    """The offline agent, after one hypothesis forced first: a higher SCALAR_LR, which the
    synthetic target makes look better on the candidate's own seeds only (a revert by construction)."""
    name = "offline"

    def __init__(self):
        self.offline = OfflineProposer(seed=0)
        self.forced = [{"SCALAR_LR": 0.7}]

    def propose(self, ctx, n):
        out = [Hypothesis(uuid.uuid4().hex, f"SCALAR_LR 0.5 -> {p['SCALAR_LR']}", "lucky by construction",
                          "-0.04", "low", self.name, params=p) for p in self.forced[:n]]
        self.forced = self.forced[n:]
        return out + self.offline.propose(ctx, n - len(out))


def test_synthetic_campaign_judges_known_effects(ray_local, tmp_path):
    """One worker, the offline agent, a target whose truth is known: baselines first, losers
    discarded, real wins merged, re-tested and promoted (held-out run journaled), a lucky one
    (better only on the candidate's own seeds) merged and then reverted by the fresh-seed re-test."""
    repo = make_repo(tmp_path / "repo")
    logs = []
    agent = (LuckyFirst(), OfflineImplementer())
    # 60 trials: a re-test runs the merge and the previous mainline side by side (8 trials a look)
    reason = Campaign(config(repo, "stat", workers=1, max_trials=60, baseline_trials=5), agent=agent, log=logs.append).run()
    assert reason == "reached --max-trials 60", logs[-5:]
    events = events_of(repo, "stat")
    st = check_consistent(repo, "stat", events)
    initial = st.initial_commit

    # baselines of the initial mainline come first: nothing is judged before its noise is measured
    first = of_type(events, "trial_finished", "verdict")
    assert [ev.data.get("kind") for ev in first[:5]] == ["baseline"] * 5
    assert all(ev.data["commit"] == initial and ev.data["status"] == "ok" for ev in first[:5])

    verdicts = [ev.data for ev in of_type(events, "verdict")]
    for v in verdicts:
        assert v["test"] and v["trials"] >= 1
        if v["verdict"] not in ("crash", "invalid"):
            assert v["p_value"] is not None and v["noise_floor"] > 0 and v["effect_bpb"] is not None
    assert {"discard", "confirmed"} <= {v["verdict"] for v in verdicts}

    # truth: every promotion really improved, every revert was not a real improvement
    promoted = [ev.data for ev in of_type(events, "promoted")]
    reverted = [ev.data for ev in of_type(events, "reverted")]
    assert promoted and reverted
    for p in promoted:
        assert truth(train_py(repo, p["commit"])) < truth(train_py(repo, p["previous"])) - 0.02
    for r in reverted:
        assert truth(train_py(repo, r["commit"])) >= truth(train_py(repo, r["restored"]))
    # the lucky candidate was confirmed on its own seeds, merged, and reverted on fresh ones
    lucky = [cid for cid, c in st.candidates.items() if "SCALAR_LR = 0.7" in train_py(repo, c.commit)]
    assert lucky and st.candidates[lucky[0]].verdict["verdict"] == "confirmed"
    assert st.merges[lucky[0]].outcome == "reverted"
    for p in promoted:
        assert git(repo, "diff", p["previous"], p["commit"], "--", "train.py").count("WARMDOWN_RATIO") >= 1

    # re-tests use fresh seeds; every promotion gets one held-out run
    retests = [ev.data for ev in of_type(events, "trial_finished") if ev.data["kind"] == "retest"]
    assert retests and all(d["seed"] >= 1000 for d in retests)
    held = {ev.data["commit"]: ev.data for ev in of_type(events, "heldout_result")}
    heldout_runs = {d["commit"]: d for d in (ev.data for ev in of_type(events, "trial_finished"))
                    if d["kind"] == "heldout"}
    for p in promoted:
        if p is not promoted[-1] or p["commit"] in held:
            h = held[p["commit"]]
            assert heldout_runs[p["commit"]]["seed"] >= 2000
            # a held-out figure only from a run that evaluated the test split (train.py says which)
            assert (h["test_bpb"] is not None) == (h["eval_split"] == "test")
            assert h["test_bpb"] is not None or isinstance(h["val_bpb"], float)
    # a candidate that runs out of memory never gets a second seed (one the stop at --max-trials
    # caught before its trial ran has no verdict, and no trial)
    for cid, c in st.candidates.items():
        if c.commit and "DEPTH = 6" in train_py(repo, c.commit) and st.candidate_done(cid):
            assert c.verdict["verdict"] in ("crash", "invalid")
            assert st.candidate_done(cid) == 1


def test_stop_status_and_resume_on_redis(ray_local, tmp_path, capsys):
    """On a Redis journal (the cluster setup): `swarm stop` stops a running coordinator cleanly
    (running trials journaled aborted); `swarm status` renders; a resume re-runs what was cut off
    and keeps the journal consistent."""
    from redis_server import RedisServer
    repo = make_repo(tmp_path / "repo")
    with RedisServer(tmp_path / "redis") as srv:
        url = srv.url
        cfg = config(repo, "stop1", workers=2, journal=url, env={"AUTORESEARCH_SYNTH_SLEEP": "1.5"})
        out = {}
        runner = threading.Thread(target=lambda: out.setdefault("reason", Campaign(cfg, log=lambda m: None).run()))
        runner.start()
        deadline = time.time() + WAIT_S
        while time.time() < deadline:
            if len(of_type(events_of(repo, "stop1", url), "trial_progress")) >= 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no trial running")
        where = ["--journal", url, "--campaign", "stop1"]
        assert swarm(["status", *where]) == 0
        assert "campaign stop1: running" in capsys.readouterr().out
        assert swarm(["stop", *where, "--reason", "test"]) == 0
        runner.join(WAIT_S)
        assert not runner.is_alive() and out["reason"] == "stop requested (test)"

        events = events_of(repo, "stop1", url)
        st = check_consistent(repo, "stop1", events)
        assert not st.leases and not st.running()
        cut = [ev.data for ev in of_type(events, "trial_finished") if ev.data["status"] == "aborted"]
        assert cut, "the running trials are journaled as aborted"
        assert swarm(["stop", *where]) == 0
        assert "is not running" in capsys.readouterr().out

        reason = Campaign(config(repo, None, journal=url, workers=2, max_trials=4), resume_only=True,
                          log=lambda m: None).run()
        assert reason == "reached --max-trials 4"
        events = events_of(repo, "stop1", url)
        st = check_consistent(repo, "stop1", events)
        assert of_type(events, "campaign_resumed")
        ok = {(d["commit"], d["kind"], d["seed"]) for d in (ev.data for ev in of_type(events, "trial_finished"))
              if d["status"] == "ok"}
        assert all((d["commit"], d["kind"], d["seed"]) in ok for d in cut if d["kind"] == "baseline")
        buf = io.StringIO()
        from rich.console import Console
        render_status(st, Console(file=buf, width=200))
        assert "stopped" in buf.getvalue() and "noise sigma" in buf.getvalue()


def test_killed_coordinator_resumes_without_losing_or_repeating(ray_local, tmp_path):
    """`swarm run` killed with SIGKILL right after a merge, while its re-test runs; `swarm resume`
    aborts and re-runs the trials in flight, resets nothing it should keep, merges nothing twice."""
    repo = make_repo(tmp_path / "repo")
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "swarm.cli", "run", "--repo", str(repo),
                                 "--campaign", "kill1", "--workers", "2", "--env", "AUTORESEARCH_SYNTH_SLEEP=0.6"],
                                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 2 * WAIT_S
        merged = None
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(repo / ".swarm" / "journal.db"):
                events = events_of(repo, "kill1")
                merged = merged or next((ev for ev in events if ev.type == "merged"), None)
                if merged and any(ev.type == "trial_started" and ev.data["kind"] == "retest"
                                  and ev.time > merged.time for ev in events):
                    break
            time.sleep(0.1)
        else:
            pytest.fail(f"no merge with a running re-test to kill in time:\n{(tmp_path / 'run.log').read_text()[-3000:]}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)     # the coordinator and its local Ray, as a crash would
        proc.wait()

    before = events_of(repo, "kill1")
    st = state_of(before, "kill1")
    in_flight = {tid: (l.commit, l.kind, l.seed) for tid, l in st.leases.items()}
    assert in_flight and not of_type(before, "campaign_stopped")
    # the kill left the branch wherever it was; the resume checks it against the journal
    track = next(iter(st.swarm))
    branch = f"swarm/kill1/{track_slug(track)}/mainline"
    git(repo, "update-ref", f"refs/heads/{branch}", st.initial_commit)

    cid = merged.data["candidate_id"]

    def settled(after):
        """Every trial in flight at the kill finished (ok, or aborted when its lease expired) and the
        merge decided (a re-test seed the decision no longer needs is not run again)."""
        finished = {ev.data["trial_id"] for ev in of_type(after, "trial_finished")}
        return (all(tid in finished for tid in in_flight)
                and any(ev.data["candidate_id"] == cid for ev in of_type(after, "promoted", "reverted")))

    def stop_when_settled():
        # a condition, not a trial count: how many trials fit in the 5 s lease depends on the machine
        deadline = time.time() + 2 * WAIT_S
        while time.time() < deadline and not settled(events_of(repo, "kill1")[len(before):]):
            time.sleep(0.3)
        swarm(["stop", "--repo", str(repo), "--campaign", "kill1", "--reason", "test"])

    logs = []
    watcher = threading.Thread(target=stop_when_settled, daemon=True)
    watcher.start()
    reason = Campaign(config(repo, "kill1", workers=2, max_trials=10_000, lease_s=5.0,
                             env={"AUTORESEARCH_SYNTH_SLEEP": "0.2"}),
                      resume_only=True, log=logs.append).run()
    watcher.join(WAIT_S)
    assert reason == "stop requested (test)", logs[-10:]
    assert any("reset it" in m for m in logs)
    events = events_of(repo, "kill1")
    st = check_consistent(repo, "kill1", events)
    after = events[len(before):]
    assert settled(after)
    finished = {ev.data["trial_id"]: ev.data for ev in of_type(after, "trial_finished")}
    ok = {(d["commit"], d["kind"], d["seed"]) for d in finished.values() if d["status"] == "ok"}
    for tid, key in in_flight.items():
        # finished by the old worker while its lease held (ok, or a candidate's own crash or invalid run:
        # the offline agent's DEPTH 6 runs out of memory), or aborted once (and run again while still needed)
        d = finished[tid]
        assert d["status"] in COUNTED or (d["status"] == "aborted" and "lease expired" in d["reason"]), d
        assert sum(ev.data["trial_id"] == tid for ev in of_type(after, "trial_finished")) == 1
    assert ok      # the resumed campaign trains again
    # the merge that was being re-tested is decided after the restart, once
    outcomes = [ev for ev in of_type(after, "promoted", "reverted") if ev.data["candidate_id"] == cid]
    assert len(outcomes) == 1 and st.merges[cid].outcome == outcomes[0].type
    assert not of_type(after, "merged") or cid not in {ev.data["candidate_id"] for ev in of_type(after, "merged")}


def _actor_pid_running(workdir):
    """pid of the worker actor whose trial process runs in <workdir>/repo (its parent). The full
    path: another campaign on this machine (a bench, a second test session) has a w1 too."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"train.py" in cmd and cwd == str(workdir / "repo"):
            return ppid
    return None


def _w1_training(repo):
    try:
        events = events_of(repo, "lease1")
    except Exception:  # the journal is not there yet
        return False
    started = {ev.data["trial_id"] for ev in events if ev.type == "trial_started" and ev.data.get("worker") == "w1"}
    done = {ev.data["trial_id"] for ev in events if ev.type == "trial_finished"}
    return bool(started - done)


def _lease_expired_and_redone(events) -> bool:
    """w1's trial was journaled aborted on its lease, and the same work finished ok elsewhere."""
    expired = [ev.data for ev in of_type(events, "trial_finished") if "lease expired" in (ev.data["reason"] or "")]
    if not expired:
        return False
    key = (expired[0]["commit"], expired[0]["kind"], expired[0]["seed"])
    return any((ev.data["commit"], ev.data["kind"], ev.data["seed"]) == key and ev.data["status"] == "ok"
               for ev in of_type(events, "trial_finished"))


def test_silent_worker_loses_its_trial_after_the_lease(ray_local, tmp_path):
    """A worker that stops answering (SIGSTOP: a Mac asleep) loses its trial when its lease
    expires; the trial is journaled aborted once, re-run on the other worker, nothing lost."""
    repo = make_repo(tmp_path / "repo")
    # stopped on a condition (the lost trial redone), not after N trials: on a loaded machine w1's
    # actor may start late, and N trials on w2 alone could end the campaign before w1's lease expires
    cfg = config(repo, "lease1", workers=2, lease_s=4.0, max_trials=10_000, baseline_trials=2,
                 env={"AUTORESEARCH_SYNTH_SLEEP": "2.5"})
    logs = []
    out = {}
    runner = threading.Thread(target=lambda: out.setdefault("reason", Campaign(cfg, log=logs.append).run()))
    runner.start()
    stopped = None
    try:
        deadline = time.time() + WAIT_S
        while time.time() < deadline and stopped is None:
            # only once the journal shows w1 training (before that a train.py in w1's folder may
            # belong to a process that is not yet the joined worker actor)
            pid = _actor_pid_running(cfg.workdir_path / "w1") if _w1_training(repo) else None
            if pid:
                os.kill(pid, signal.SIGSTOP)
                stopped = pid
            time.sleep(0.1)
        assert stopped, "w1 never ran a trial"
        deadline = time.time() + WAIT_S
        while time.time() < deadline and runner.is_alive() and not _lease_expired_and_redone(events_of(repo, "lease1")):
            time.sleep(0.3)
        swarm(["stop", "--repo", str(repo), "--campaign", "lease1", "--reason", "test"])
        runner.join(WAIT_S)
    finally:
        if stopped:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert not runner.is_alive() and out["reason"] == "stop requested (test)", logs[-10:]
    events = events_of(repo, "lease1")
    check_consistent(repo, "lease1", events)
    expired = [ev.data for ev in of_type(events, "trial_finished") if "lease expired" in (ev.data["reason"] or "")]
    assert len(expired) == 1 and expired[0]["worker"] == "w1"
    lost = [ev.data for ev in of_type(events, "worker_lost")]
    assert lost and lost[0]["worker"] == "w1" and "lease expired" in lost[0]["reason"]
    key = (expired[0]["commit"], expired[0]["kind"], expired[0]["seed"])
    redone = [ev.data for ev in of_type(events, "trial_finished")
              if (ev.data["commit"], ev.data["kind"], ev.data["seed"]) == key and ev.data["status"] == "ok"]
    assert len(redone) == 1 and redone[0]["trial_id"] != expired[0]["trial_id"]


def test_a_trial_longer_than_the_lease_that_finished_keeps_its_worker(ray_local, tmp_path):
    """A trial kept alive by its progress events, longer than the lease, journals its result before
    Ray hands it over: the worker is not retired as silent (it was not), and the result counts."""
    repo = make_repo(tmp_path / "repo")
    lease_s = 2.0
    cfg = config(repo, "longlease", workers=1, lease_s=lease_s, max_trials=2, baseline_trials=2, poll_s=0.05,
                 smoke=False, heldout=False, until=f"{WAIT_S}s")    # a retired worker is never replaced here
    logs = []
    # the trial lasts 3 leases, kept alive by its progress events alone (a ping is never answered),
    # and Ray's reply comes a second after trial_finished is journaled: what a loaded machine does
    slow = standin_class(lambda spec: 2.0 + spec["seed"] * 0.001, trial_s=3 * lease_s, progress_s=lease_s / 4,
                         reply_lag_s=1.0, answer_pings=False, track="standin/lease/1s/000000000000")
    reason = Campaign(cfg, worker_class=slow, log=logs.append).run()
    assert reason == "reached --max-trials 2", logs[-10:]
    events = events_of(repo, "longlease")
    assert not of_type(events, "worker_lost"), [ev.data for ev in of_type(events, "worker_lost")]
    done = of_type(events, "trial_finished")
    assert len(done) == 2 and all(ev.data["status"] == "ok" for ev in done)
