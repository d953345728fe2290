"""End to end with real training: the real train.py on the tiny profile (tests' generated data),
one local worker, the offline agent, three 4-second trials: baselines, a verdict, and a journal
whose views agree with git. One such run: it is the slowest coordinator test (smoke runs are
covered by the synthetic campaigns; here they would double a candidate's cost)."""

import math
import shutil
from collections import Counter
from pathlib import Path

from fast_train import fast
from synthetic import git, make_repo

from coordinator.campaign import Campaign
from coordinator.config import load_config
from coordinator.mainline import track_slug
from coordinator.state import CampaignState
from journal import open_journal
from journal.views import replay

REPO_ROOT = Path(__file__).resolve().parent.parent

TARGET_FILES = ("train.py", "prepare.py", "evaluate.py", "target.toml", "program.md")
# Start-up seconds a trial may take on top of its budget until the worker has measured one (the
# target's `grace`): generous, as this test is about the path, not the clock, and on a loaded
# machine a 4 s trial has taken over 120 s to start.
GRACE_S = 900
# A worker silent this long loses its trial. Generous: this test is not about leases, and a trial
# that outlasts the lease is retired when it ends (the coordinator reads the worker's trial_finished
# before the Ray result, and then counts the silence from the dispatch: coordinator/campaign.py
# _check_leases); at load 30 one trial here took 279 s.
LEASE_S = 900


def test_real_training_campaign(tiny_data, tmp_path):
    import ray
    if ray.is_initialized():          # another module's session: the campaign starts its own local Ray
        ray.shutdown()
    repo = make_repo(tmp_path / "repo", files=TARGET_FILES, source=REPO_ROOT)
    (repo / "target.toml").write_text((REPO_ROOT / "target.toml").read_text() + f"grace = {GRACE_S}\n")
    (repo / "train.py").write_text(fast((repo / "train.py").read_text()))
    git(repo, "commit", "-qam", "a generous start-up grace; a cheap step (the path is tested, not learning)")
    env = {k: v for k, v in tiny_data.env.items() if k != "LD_PRELOAD"}   # the worker preloads OpenBLAS
    env["AUTORESEARCH_EVAL_TOKENS"] = "4096"                                # a short eval keeps CI fast
    cfg = load_config({"repo": str(repo), "campaign": "e2e", "workers": 1, "time_budget": 4, "smoke": False,
                       "baseline_trials": 2, "max_trials": 3, "poll_s": 0.2, "lease_s": LEASE_S, "env": env},
                      environ={})
    logs = []
    try:
        reason = Campaign(cfg, log=logs.append).run()
    finally:
        shutil.rmtree(repo / ".swarm" / "workers", ignore_errors=True)
    assert reason == "reached --max-trials 3", "\n".join(logs[-20:])

    with open_journal(str(repo / ".swarm" / "journal.db"), campaign="e2e") as j:
        events = [ev for _, ev in j.read()]
    st = CampaignState("e2e")
    for i, ev in enumerate(events):
        st.apply(ev, str(i))
    finished = [ev.data for ev in events if ev.type == "trial_finished"]
    assert max(Counter(d["trial_id"] for d in finished).values()) == 1

    # two baselines of the initial commit: real val_bpb on the tiny profile's track
    base = [d for d in finished if d["kind"] == "baseline"]
    assert len(base) == 2 and all(d["status"] == "ok" and math.isfinite(d["val_bpb"]) for d in base)
    assert all(d["commit"] == st.initial_commit and d["metrics"]["profile"] == "tiny" for d in base)
    track = base[0]["track"]
    assert track.split("/")[1:3] == ["tiny", "4s"] and base[0]["metrics"]["time_budget"] == 4

    # candidates from the offline agent, judged against the measured noise
    verdicts = [ev.data for ev in events if ev.type == "verdict"]
    assert verdicts and all(v["track"] == track for v in verdicts)
    for v in verdicts:
        if v["verdict"] in ("discard", "promising", "confirmed"):
            assert v["p_value"] is not None and v["noise_floor"] > 0 and v["base_commit"] == st.initial_commit
    judged = [d for d in finished if d["kind"] == "candidate"]
    assert judged and all(d["commit"] == st.candidates[d["candidate_id"]].commit for d in judged)

    # journal views agree with git
    view = replay(events)
    ts = st.swarm[track]
    branch = git(repo, "rev-parse", f"swarm/e2e/{track_slug(track)}/mainline")
    assert branch == (st.merges[ts.merge].commit if ts.merge else ts.trusted)
    assert view.tracks[track].head in (branch, None)
    for cid, c in st.candidates.items():
        assert git(repo, "rev-parse", f"refs/swarm/e2e/exp/{cid}") == c.commit
        assert git(repo, "diff", "--name-only", c.base_commit, c.commit) == "train.py"
    assert {r["commit"] for r in view.leaderboard(track)} >= {st.initial_commit}
