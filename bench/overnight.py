"""
A compressed night on real training: does the swarm end with a better model?

The research target is this repository's prepare.py and train.py with the `cpu` profile
(prepare.py's PROFILES), trained on a deterministic English-like corpus (tests/datagen.py:
nothing is downloaded), starting from a CPU-sized model (CPU_MODEL below: the model size
is train.py's, the agent's to change). Then:

  1. swarm    the real coordinator (`swarm run` in-process: local Ray, real workers training
              with MLX, the offline agent, the embedded journal) for --trials trials;
  2. greedy   upstream autoresearch's loop on the same trial count: the same offline agent
              proposes, each change is trained once (a fresh seed) on the current best
              train.py and kept if its val_bpb is lower than the best single value so far;
  3. held-out the start, the swarm's final mainline and greedy's final train.py are each
              trained again on --heldout-seeds fresh seeds and scored by evaluate.py on the test
              split (never used by either loop), the same seeds for all three.

Prints each one's improvement over the start on the held-out split: the mean of the
seed-matched differences with its 95% t-interval, in bpb and in units of the held-out
seed noise sigma (pooled over the three). Whatever it shows.

    uv run python bench/overnight.py                       # ~45 min on 2 cores: --trials 16, 60 s budget
    uv run python bench/overnight.py --trials 4 --time-budget 15 --heldout-seeds 5   # a quick look
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

PROFILE = "cpu"
CORPUS_DOCS = 12000           # ~6 MB of text: val and test hold ~600 documents each
TARGET_FILES = ("prepare.py", "train.py", "evaluate.py", "target.toml", "program.md")
# The cpu profile's model: ~80 ms a step, ~700 optimizer steps a minute on an idle 2-core machine
# (bench/efficiency.py --profiles cpu; ~0.5 s a step at a load of 6-9). train.py's defaults are a Mac's:
# ~7 steps a minute here. 512 tokens a step: at 1024 a step cost about twice as much.
CPU_MODEL = {"DEPTH": 2, "HEAD_DIM": 64, "TOTAL_BATCH_SIZE": 2 ** 9, "DEVICE_BATCH_SIZE": 4}
# ... with one OpenBLAS thread: MLX's CPU ops run on one thread and this model's matmuls are small, so a
# second OpenBLAS thread only spins between calls (sys time) and takes the core the rest of the step needs
CPU_ENV = {"OPENBLAS_NUM_THREADS": "1"}
HELDOUT_SEED = 5000           # held-out re-measures use seeds from here (no loop ever ran them)
GREEDY_SEED = 3000            # greedy's trials use seeds from here
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "b@b"}


def t975(dof):
    return T975.get(dof) or T975[max(k for k in T975 if k <= dof)] if dof >= 1 else math.nan


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def trial_env(cache: Path) -> dict:
    from worker.runner import openblas_path
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AUTORESEARCH_CACHE": str(cache),
           "AUTORESEARCH_PROFILE": PROFILE, **CPU_ENV}
    if openblas_path():
        env["LD_PRELOAD"] = openblas_path()
    return env


def train(text: str, seed: int, budget: float, cache: Path, split: str, scratch: Path) -> dict:
    """One run of a train.py text (with this checkout's prepare.py), scored as the worker scores it:
    train.py saves its model, evaluate.py scores it on `split`. Its summary_json, with val_bpb and
    eval_split from the evaluator."""
    scratch.mkdir(parents=True, exist_ok=True)
    for name in ("prepare.py", "evaluate.py"):
        shutil.copy(REPO_ROOT / name, scratch / name)
    (scratch / "train.py").write_text(text)
    ck, record = scratch / "checkpoint", scratch / "record.json"
    shutil.rmtree(ck, ignore_errors=True)
    record.unlink(missing_ok=True)
    env = trial_env(cache)
    p = subprocess.run([sys.executable, "train.py", "--seed", str(seed), "--time-budget", str(budget),
                        "--checkpoint", str(ck)], cwd=scratch, env=env, capture_output=True, text=True,
                       timeout=budget * 4 + 300)
    summary = next((json.loads(line.split(":", 1)[1]) for line in p.stdout.splitlines()
                    if line.startswith("summary_json:")), None)
    if p.returncode != 0 or summary is None:
        return {"val_bpb": None, "error": (p.stdout + p.stderr)[-600:]}
    e = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", str(ck), "--split", split,
                        "--result", str(record)], cwd=scratch, env=env, capture_output=True, text=True, timeout=1200)
    if e.returncode != 0:
        return {"val_bpb": None, "error": (e.stdout + e.stderr)[-600:]}
    summary.update(val_bpb=json.loads(record.read_text())["bpb"], eval_split=split)
    return summary


def prepare_data(tmp: Path) -> Path:
    from datagen import write_corpus
    corpus = write_corpus(tmp / "corpus", n_docs=CORPUS_DOCS, seed=0)
    cache = tmp / "cache"
    env = {k: v for k, v in trial_env(cache).items() if k != "LD_PRELOAD"}
    p = subprocess.run([sys.executable, "prepare.py", "--profile", PROFILE, "--source", str(corpus)],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        raise SystemExit(f"prepare.py failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return cache


def make_repo(tmp: Path) -> Path:
    from agents.constant_rewriter import rewrite_constants
    repo = tmp / "repo"
    repo.mkdir()
    for name in TARGET_FILES:
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, repo / name)
    (repo / "train.py").write_text(rewrite_constants((repo / "train.py").read_text(), CPU_MODEL, "train.py"))
    for cmd in (["init", "-q", "-b", "master"], ["add", "-A"], ["commit", "-qm", "start: the cpu model"]):
        git(repo, *cmd)
    return repo


def run_swarm(repo: Path, cache: Path, trials: int, budget: float, workers: int) -> tuple[str, dict]:
    from coordinator.campaign import Campaign
    from coordinator.config import load_config
    from coordinator.state import CampaignState
    from journal import open_journal

    cfg = load_config({"repo": str(repo), "campaign": "night", "workers": workers, "max_trials": trials,
                       "time_budget": budget, "agent": "offline", "heldout": False,
                       "env": {"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_PROFILE": PROFILE, **CPU_ENV}},
                      environ={})
    t = time.time()
    reason = Campaign(cfg, log=lambda m: print(f"  swarm {m}", flush=True)).run()
    st = CampaignState("night")
    with open_journal(cfg.journal_url, campaign="night") as j:
        for pos, ev in j.read():
            st.apply(ev, pos)
    track = next(iter(st.swarm))
    kinds = {}
    for tr in st.trials.values():
        kinds[tr.kind] = kinds.get(tr.kind, 0) + 1
    info = {"reason": reason, "wall_s": time.time() - t, "trials": kinds, "promotions": len(st.promotions),
            "verdicts": {v: sum(1 for c in st.candidates.values() if (c.verdict or {}).get("verdict") == v)
                         for v in ("confirmed", "discard", "crash", "invalid")},
            "sigma": st.noise(track)[0], "rho": st.within_seed_rho(track)}
    final = subprocess.run(["git", "show", f"{st.swarm[track].trusted}:train.py"], cwd=repo, check=True,
                           capture_output=True, text=True).stdout      # byte for byte: compared with the start
    return final, info


def run_greedy(start: str, cache: Path, trials: int, budget: float, tmp: Path) -> tuple[str, dict]:
    """Upstream's loop: one seed per change, keep it if below the best single value so far."""
    from agents.base import ResearchContext
    from core.keys import hypothesis_key
    from agents.offline import OfflineImplementer, OfflineProposer

    proposer, impl = OfflineProposer(seed=0), OfflineImplementer()
    best_text, seed, history = start, GREEDY_SEED, []
    first = train(start, seed, budget, cache, "val", tmp / "greedy")
    best, used, kept = first.get("val_bpb"), 1, 0
    while used < trials:
        ctx = ResearchContext(track="greedy", mainline_commit=str(kept), files={"train.py": best_text},
                              history=history)
        (h,) = proposer.propose(ctx, 1)
        ws = tmp / "greedy-ws"
        shutil.rmtree(ws, ignore_errors=True)
        ws.mkdir()
        (ws / "train.py").write_text(best_text)
        impl.implement(h, ws)
        text = (ws / "train.py").read_text()
        seed += 1
        v = train(text, seed, budget, cache, "val", tmp / "greedy").get("val_bpb")
        used += 1
        keep = v is not None and best is not None and v < best
        history.append({"title": h.title, "params": h.params, "mainline_commit": str(kept),
                        "verdict": "confirmed" if keep else "discard", "key": hypothesis_key(h)})
        print(f"  greedy {h.title[:50]:<50} val_bpb {v if v is None else f'{v:.4f}'} "
              f"{'KEEP' if keep else 'discard'} (best {best:.4f})", flush=True)
        if keep:
            best_text, best, kept = text, v, kept + 1
    return best_text, {"keeps": kept, "trials": used}


def heldout(texts: dict, seeds: list, budget: float, cache: Path, tmp: Path) -> dict:
    """Each distinct text trained on the same fresh seeds, evaluated on the test split."""
    out, done = {}, {}
    for name, text in texts.items():
        if text in done:
            out[name] = done[text]
            continue
        vals = []
        for s in seeds:
            r = train(text, s, budget, cache, "test", tmp / "heldout")
            if r.get("eval_split") != "test" or r.get("val_bpb") is None:
                raise SystemExit(f"held-out run of {name} seed {s} failed: {r.get('error', r)}")
            vals.append(r["val_bpb"])
            print(f"  held-out {name} seed {s}: test_bpb {vals[-1]:.4f} ({r.get('num_steps')} steps)", flush=True)
        out[name] = done[text] = vals
    return out


def paired(a, b):
    """Mean of b - a over seed-matched pairs and its 95% t-interval."""
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1)) if n > 1 else math.nan
    half = t975(n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half


def within_seed_rho(groups, seeds):
    """Correlation of the seed noise between different codes run on the same seeds (residuals
    from each code's own mean; core.stats, as the coordinator measures it on a track): how much
    a seed-matched (paired) comparison gains."""
    from core.stats import within_seed_correlation
    rho, pairs = within_seed_correlation([(g, seeds) for g in groups], min_pairs=1)
    return (math.nan if rho is None else rho), pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--trials", type=int, default=16, help="trials of the swarm, and of greedy")
    ap.add_argument("--time-budget", type=float, default=60.0, help="seconds of training per trial")
    ap.add_argument("--workers", type=int, default=1, help="swarm workers (each trains on the shared CPU)")
    ap.add_argument("--heldout-seeds", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (repo, journal, logs)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="swarm-overnight-"))
    try:
        cache = prepare_data(tmp)
        repo = make_repo(tmp)
        start = (repo / "train.py").read_text()
        print(f"data and repo ready in {time.time() - t0:.0f}s ({tmp}); profile {PROFILE}, model {CPU_MODEL}",
              flush=True)
        t = time.time()
        swarm_text, sw = run_swarm(repo, cache, args.trials, args.time_budget, args.workers)
        print(f"swarm: {sw} in {time.time() - t:.0f}s", flush=True)
        t = time.time()
        greedy_text, gr = run_greedy(start, cache, args.trials, args.time_budget, tmp)
        print(f"greedy: {gr} in {time.time() - t:.0f}s", flush=True)
        seeds = list(range(HELDOUT_SEED, HELDOUT_SEED + args.heldout_seeds))
        t = time.time()
        hv = heldout({"start": start, "swarm": swarm_text, "greedy": greedy_text}, seeds, args.time_budget,
                     cache, tmp)
        print(f"held-out runs in {time.time() - t:.0f}s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    groups = [v for k, v in hv.items() if k == "start" or hv[k] is not hv["start"]]
    from core.stats import noise_floor
    sigma, dof = noise_floor(groups)
    print(f"\n{args.trials} trials per loop, {args.time_budget:g} s budget, profile {PROFILE}; held-out: "
          f"{args.heldout_seeds} seeds (the same for all), test split; held-out seed noise sigma "
          f"{sigma:.4f} bpb (dof {dof}); total {time.time() - t0:.0f}s")
    if len(groups) >= 2:
        rho, pairs = within_seed_rho(groups, seeds)
        print(f"within-seed correlation of the held-out runs (different code, same seed): rho {rho:+.2f} "
              f"over {pairs} pairs; the swarm's own estimate on its track: {sw['rho']}")
    print("| loop | final differs from start | held-out test_bpb (mean) | improvement over start, bpb [95% CI] | in sigma |")
    print("| --- | --- | --- | --- | --- |")
    s = sum(hv["start"]) / len(hv["start"])
    print(f"| start | - | {s:.4f} | - | - |")
    for name, text in (("swarm", swarm_text), ("greedy", greedy_text)):
        m = sum(hv[name]) / len(hv[name])
        if text == start:
            print(f"| {name} | no | {m:.4f} | 0 (the start itself) | 0 |")
            continue
        d, lo, hi = paired(hv[name], hv["start"])     # start - final: positive = better
        print(f"| {name} | yes | {m:.4f} | {d:+.4f} [{lo:+.4f}, {hi:+.4f}] | {d / sigma:+.2f} "
              f"[{lo / sigma:+.2f}, {hi / sigma:+.2f}] |")


if __name__ == "__main__":
    main()
