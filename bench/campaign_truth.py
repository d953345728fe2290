"""
Does the real coordinator keep only real wins? Campaigns on a target with known truth.

The target (a git repository made here): train.py has KNOBS constants K000 ... K399, all 0.
Setting K_i to 1 changes the true val_bpb by eff_i * SIGMA, eff_i drawn per campaign from
the issue's mix (55% null 0, 30% harmful +1 sigma, 10% small gain -0.5 sigma, 5% real gain
-2 sigma); effects add up. A trial's value is the truth of its code plus Gaussian noise
(sigma SIGMA) that depends on the code and the seed only: the same code on the same seed
gives the same value (training is deterministic for a seed), different ones are independent.

What runs: the REAL coordinator (coordinator/campaign.py: its loop, scheduler, state,
statistics, git merges, re-tests and promotions) over local Ray, with stand-in worker actors
(worker/actor.py's API) that compute the value instead of training (the real worker runs a
subprocess per trial: a few hundred trials per campaign, many campaigns, would take hours
here). The agent proposes "K_i 0 -> 1" for knobs in a random order, each once.

Side by side, on the same truth tables and the same number of trials (pure simulation):
  greedy   upstream autoresearch: one seed per candidate, keep it if its value is lower than
           the best single value so far (the mainline's first value, then each keep's);
  rigor    rigor.py's rule as the issue states it: 3 seeds, keep when a bootstrap says
           P(candidate mean < mainline mean) >= 0.95, discard after the first seed when it is
           not better than the mainline mean; a keep's 3 values become the mainline's.

Figures (95% intervals: Wilson for proportions pooled over campaigns, normal for means):
  false promotions     null or harmful changes among ALL promotions (keeps)       goal <= 5%
  2-sigma wins kept    promoted / 2-sigma candidates that got a final decision     goal >= 80%
  trials per null      candidate trials per null candidate with a final decision   goal <= 2.0
  improvement / 100    true val_bpb gained per 100 trials, in sigma                goal: above both

Usage: uv run python bench/campaign_truth.py [--campaigns 12] [--trials 250] [--workers 2]
       (about 30-60 s per campaign on a loaded 2-core machine; the other policies are instant)
"""

import argparse
import hashlib
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))   # the stand-in worker (tests/standin_worker.py)

SIGMA = 0.01              # seed-to-seed noise of the target (bpb)
BASE_BPB = 2.0            # true val_bpb of the initial code
KNOBS = 400               # constants the agent can set (more than a campaign can try)
MIX = [(0.55, 0.0), (0.30, 1.0), (0.10, -0.5), (0.05, -2.0)]   # (share, true effect in sigma)
WIN = -2.0                # a "real 2-sigma win"
BOOTSTRAP = 1000          # resamples of rigor.py's bootstrap
RIGOR_P = 0.95            # its keep threshold
RIGOR_SEEDS = 3
Z95 = 1.959964
RAY_INIT_TRIES = 3        # ray.init attempts (its node start-up deadline is a fixed 30 s)
GIT_ENV = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}


# -----------------------------------------------------------------------------
# The target: truth and noise

def draw_effect(rng) -> float:
    """One effect from MIX (in sigma)."""
    r, acc = rng.random(), 0.0
    for share, eff in MIX:
        acc += share
        if r < acc:
            break
    return eff


def draw_effects(rng) -> list:
    return [draw_effect(rng) for _ in range(KNOBS)]


def truth(on: frozenset, effects) -> float:
    return BASE_BPB + SIGMA * sum(effects[i] for i in on)


def noisy(on: frozenset, seed: int, effects, salt: str) -> float:
    """Truth + noise that depends on the code (the set of knobs on) and the seed only."""
    key = f"{salt}:{seed}:{sorted(on)}".encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
    return truth(on, effects) + rng.gauss(0.0, SIGMA)


def knobs_on(train_py: str) -> frozenset:
    from agents.constant_rewriter import constant_values
    return frozenset(int(k[1:]) for k, v in constant_values(train_py).items() if k.startswith("K") and v)


def make_repo(path: Path):
    path.mkdir(parents=True)
    lines = ['"""Known-truth target of bench/campaign_truth.py: the stand-in workers read the K constants."""', ""]
    lines += [f"K{i:03d} = 0  # knob {i}" for i in range(KNOBS)]
    (path / "train.py").write_text("\n".join(lines) + "\n")
    (path / "prepare.py").write_text("# fixed file of the bench target\n")
    (path / "target.toml").write_text('name = "truth"\neditable = ["train.py"]\nfixed = ["prepare.py"]\n'
                                      'direction = "minimize"\n')
    env = {**os.environ, **GIT_ENV}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "start"]):
        subprocess.run(["git", *cmd], cwd=path, check=True, env=env)


# -----------------------------------------------------------------------------
# The real coordinator with stand-in workers

def standin_class(repo: Path, effects, salt: str):
    """Stand-in workers whose trial value is computed from the commit's train.py (the truth)."""
    from standin_worker import standin_class as make

    def value(spec):
        text = subprocess.run(["git", "show", f"{spec['commit']}:train.py"], cwd=repo, check=True,
                              capture_output=True, text=True).stdout
        return noisy(knobs_on(text), int(spec["seed"]), effects, salt)

    return make(value, track="truth/bench/1s/000000000000")


def knob_agent(order):
    """Proposes K_i 0 -> 1 for the knobs in `order`, each once (never the same knob twice)."""
    from agents.base import Hypothesis, Proposer
    from agents.offline import OfflineImplementer

    class KnobAgent(Proposer):
        name = "offline"     # answers in microseconds: runs in the coordinator's loop, like the offline agent

        def __init__(self):
            self.next = 0

        def propose(self, ctx, n):
            on = knobs_on(ctx.files["train.py"])
            out = []
            while len(out) < n and self.next < len(order):
                i = order[self.next]
                self.next += 1
                if i not in on:
                    out.append(Hypothesis(uuid.uuid4().hex, f"K{i:03d} 0 -> 1", "bench", "?", "low", self.name,
                                          params={f"K{i:03d}": 1}))
            return out

    class Impl(OfflineImplementer):
        name = "offline"

    return KnobAgent(), Impl()


def run_swarm(tmp: Path, k: int, effects, order, trials: int, workers: int) -> dict:
    from coordinator.campaign import Campaign
    from coordinator.config import load_config
    from coordinator.state import CampaignState
    from journal import open_journal

    repo = tmp / f"c{k}"
    make_repo(repo)
    cfg = load_config({"repo": str(repo), "campaign": f"truth{k}", "workers": workers, "max_trials": trials,
                       "poll_s": 0.02, "smoke": False, "heldout": False,
                       "time_budget": 1}, environ={})
    t = time.perf_counter()
    reason = Campaign(cfg, agent=knob_agent(order), worker_class=standin_class(repo, effects, f"s{k}"),
                      log=lambda m: None).run()
    wall = time.perf_counter() - t
    st = CampaignState(f"truth{k}")
    with open_journal(cfg.journal_url, campaign=f"truth{k}") as j:
        for pos, ev in j.read():
            st.apply(ev, pos)
    track = next(iter(st.swarm))
    eff_of = {}
    for cid, c in st.candidates.items():
        h = st.hyp.get(c.hypothesis_id, {})
        (name,) = (h.get("params") or {"?": 0}).keys()
        eff_of[cid] = effects[int(name[1:])] if name.startswith("K") else None
    promoted = [cid for _, cid, _, _ in st.promotions]
    final = {}
    for cid, c in st.candidates.items():
        v = (c.verdict or {}).get("verdict")
        m = st.merges.get(cid)
        if m is not None and m.outcome is not None:
            final[cid] = m.outcome == "promoted"
        elif v in ("discard", "crash", "invalid"):
            final[cid] = False
    cand_trials = {cid: st.candidate_done(cid) for cid in st.candidates}
    on = knobs_on(subprocess.run(["git", "show", f"{st.swarm[track].trusted}:train.py"], cwd=repo, check=True,
                                 capture_output=True, text=True).stdout)
    return {"policy": "swarm", "reason": reason, "wall_s": wall, "trials": st.finished_count,
            "purposes": trial_purposes(st, cfg.baseline_trials),
            "promoted_eff": [eff_of[c] for c in promoted],
            "wins": [final[c] for c in final if eff_of[c] == WIN],
            "null_trials": [cand_trials[c] for c in final if eff_of[c] == 0.0],
            "gain_sigma": (BASE_BPB - truth(on, effects)) / SIGMA}


PURPOSES = ("initial baselines", "new-mainline baselines", "standing-mainline baselines", "candidate screens",
            "candidate confirm looks", "re-test: merge", "re-test: previous mainline", "other")


def trial_purposes(st, baseline_trials: int) -> dict:
    """Finished trials by what they were for. Baselines of a commit up to baseline_trials (its
    values of any kind counted first, re-tests included) are the ones its first decision needs;
    more are a standing mainline's (one per MAINLINE_AGE_EVERY candidates judged against it) or an
    idle worker's; the initial commit's are the campaign's start."""
    out = dict.fromkeys(PURPOSES, 0)
    merged = {m.commit for m in st.merges.values()}
    firsts = set()
    for t in st.trials.values():
        if t.status == "running":
            continue
        if t.kind == "candidate":
            first = t.candidate_id not in firsts
            firsts.add(t.candidate_id)
            out["candidate screens" if first else "candidate confirm looks"] += 1
        elif t.kind == "retest":
            m = st.merges.get(t.candidate_id)
            out["re-test: merge" if m is not None and t.commit == m.commit else "re-test: previous mainline"] += 1
        elif t.kind == "baseline":
            kinds = st.groups[(t.track, t.commit)].kinds if (t.track, t.commit) in st.groups else []
            before = kinds[:baseline_trials]
            need = baseline_trials - sum(k != "baseline" for k in before)
            n = out.setdefault(("seen", t.commit), 0) + 1
            out[("seen", t.commit)] = n
            if n > need:
                out["standing-mainline baselines"] += 1
            else:
                out["new-mainline baselines" if t.commit in merged else "initial baselines"] += 1
        else:
            out["other"] += 1
    return {k: v for k, v in out.items() if isinstance(k, str)}


# -----------------------------------------------------------------------------
# The other two policies, simulated on the same target

def run_greedy(effects, order, trials: int, salt: str) -> dict:
    on, used, seed = frozenset(), 1, 0
    best = noisy(on, seed, effects, salt)
    promoted, wins, null_trials = [], [], []
    for i in order:
        if used >= trials:
            break
        cand = on | {i}
        seed += 1
        v = noisy(cand, seed, effects, salt)
        used += 1
        keep = v < best
        if keep:
            on, best = cand, v
            promoted.append(effects[i])
        if effects[i] == WIN:
            wins.append(keep)
        if effects[i] == 0.0:
            null_trials.append(1)
    return {"policy": "greedy", "trials": used, "promoted_eff": promoted, "wins": wins,
            "null_trials": null_trials, "gain_sigma": (BASE_BPB - truth(on, effects)) / SIGMA}


def bootstrap_p(cand, main, rng) -> float:
    """P(mean of a resampled candidate < mean of a resampled mainline)."""
    hits = 0
    for _ in range(BOOTSTRAP):
        c = sum(rng.choice(cand) for _ in cand) / len(cand)
        m = sum(rng.choice(main) for _ in main) / len(main)
        hits += c < m
    return hits / BOOTSTRAP


def run_rigor(effects, order, trials: int, salt: str) -> dict:
    rng = random.Random(salt)
    on, seed = frozenset(), 0
    main = [noisy(on, s, effects, salt) for s in range(RIGOR_SEEDS)]
    used, seed = RIGOR_SEEDS, RIGOR_SEEDS
    promoted, wins, null_trials = [], [], []
    for i in order:
        if used + 1 > trials:
            break
        cand = on | {i}
        vals = [noisy(cand, seed, effects, salt)]
        seed += 1
        used += 1
        keep = False
        if vals[0] < sum(main) / len(main) and used + RIGOR_SEEDS - 1 <= trials:
            vals += [noisy(cand, seed + j, effects, salt) for j in range(RIGOR_SEEDS - 1)]
            seed += RIGOR_SEEDS - 1
            used += RIGOR_SEEDS - 1
            keep = bootstrap_p(vals, main, rng) >= RIGOR_P
        if keep:
            on, main = cand, vals
            promoted.append(effects[i])
        if effects[i] == WIN:
            wins.append(keep)
        if effects[i] == 0.0:
            null_trials.append(len(vals))
    return {"policy": "rigor", "trials": used, "promoted_eff": promoted, "wins": wins,
            "null_trials": null_trials, "gain_sigma": (BASE_BPB - truth(on, effects)) / SIGMA}


# -----------------------------------------------------------------------------
# Figures

def wilson(k, n, z=Z95):
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mean_ci(xs):
    if not xs:
        return math.nan, math.nan, math.nan
    m = math.fsum(xs) / len(xs)
    sd = math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
    half = Z95 * sd / math.sqrt(len(xs))
    return m, m - half, m + half


def summarize(runs: list) -> dict:
    prom = [e for r in runs for e in r["promoted_eff"]]
    false = sum(e >= 0 for e in prom)
    wins = [w for r in runs for w in r["wins"]]
    nulls = [t for r in runs for t in r["null_trials"]]
    per100 = [100 * r["gain_sigma"] / r["trials"] for r in runs if r["trials"]]
    lo, hi = wilson(false, len(prom))
    wlo, whi = wilson(sum(wins), len(wins))
    return {"campaigns": len(runs), "promotions": len(prom), "false": false,
            "false_pct": (100 * false / len(prom) if prom else math.nan, 100 * lo, 100 * hi),
            "wins": (sum(wins), len(wins)), "wins_pct": (100 * sum(wins) / len(wins) if wins else math.nan,
                                                          100 * wlo, 100 * whi),
            "trials_null": mean_ci(nulls), "per100": mean_ci(per100)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--campaigns", type=int, default=12, help="campaigns of the real coordinator")
    ap.add_argument("--trials", type=int, default=250, help="trials per campaign (every policy)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sim-reps", type=int, default=50, help="noise draws of greedy / rigor per truth table")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import ray
    for attempt in range(RAY_INIT_TRIES):   # a loaded machine can miss Ray's fixed 30 s start-up deadline
        try:
            ray.init(address="local", num_cpus=2, resources={"mlx": args.workers}, include_dashboard=False,
                     log_to_driver=False)
            break
        except Exception as e:
            ray.shutdown()
            if attempt == RAY_INIT_TRIES - 1:
                raise
            print(f"ray.init failed ({e}); trying again", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="swarm-truth-"))
    runs = {"swarm": [], "greedy": [], "rigor": []}
    try:
        for k in range(args.campaigns):
            rng = random.Random(f"{args.seed}:{k}")
            effects = draw_effects(rng)
            order = list(range(KNOBS))
            rng.shuffle(order)
            r = run_swarm(tmp, k, effects, order, args.trials, args.workers)
            runs["swarm"].append(r)
            for rep in range(args.sim_reps):
                runs["greedy"].append(run_greedy(effects, order, args.trials, f"g{k}:{rep}"))
                runs["rigor"].append(run_rigor(effects, order, args.trials, f"r{k}:{rep}"))
            print(f"campaign {k + 1}/{args.campaigns}: {r['trials']} trials in {r['wall_s']:.0f}s ({r['reason']}), "
                  f"{len(r['promoted_eff'])} promotions (true effects {r['promoted_eff']}), "
                  f"gain {r['gain_sigma']:.1f} sigma; trials {r['purposes']}", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    swarm_runs = runs["swarm"]
    total = sum(r["trials"] for r in swarm_runs) or 1
    print("\nswarm trials by purpose (all campaigns): " + ", ".join(
        f"{k} {sum(r['purposes'][k] for r in swarm_runs)} ({100 * sum(r['purposes'][k] for r in swarm_runs) / total:.0f}%)"
        for k in PURPOSES))
    print(f"\n{args.trials} trials per campaign, {args.workers} workers, noise sigma {SIGMA}, mix "
          f"{', '.join(f'{int(s * 100)}% {e:+g} sigma' for s, e in MIX)}; swarm: {args.campaigns} campaigns of the "
          f"real coordinator; greedy and rigor: {args.sim_reps} noise draws on each campaign's truth table")
    print("| policy | promotions | false promotions (<= 5%) | 2-sigma wins promoted (>= 80%) | "
          "trials per null (<= 2.0) | true gain per 100 trials (sigma) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rs in runs.items():
        s = summarize(rs)
        f, w, t, g = s["false_pct"], s["wins_pct"], s["trials_null"], s["per100"]
        print(f"| {name} | {s['promotions']} in {s['campaigns']} campaigns | {f[0]:.1f}% [{f[1]:.1f}, {f[2]:.1f}] "
              f"| {w[0]:.0f}% [{w[1]:.0f}, {w[2]:.0f}] ({s['wins'][0]}/{s['wins'][1]}) "
              f"| {t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}] | {g[0]:.2f} [{g[1]:.2f}, {g[2]:.2f}] |")


if __name__ == "__main__":
    main()
