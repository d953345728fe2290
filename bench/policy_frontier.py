"""
How much true gain per trial can the swarm's kind of rule buy? A sweep of designs, simulated.

bench/campaign_truth.py measures the real coordinator with its defaults, and there greedy
(upstream's loop: one seed a change, keep it if below the best single value so far) gains
more per 100 trials. This asks whether other settings would do better: the campaign loop
simulated on the same known-truth mix, one worker, with core.stats.decide for every look,
over a grid of designs, and greedy on the same draws. A design is what the coordinator's
settings choose:

  screen       one-seed screen of a candidate, in sigma (StatsConfig.screen_sigma)
  futility     a candidate's futility stop at later looks, in sigma
  confidence   the candidate's test (1 - alpha); looks 1, 2, 4 ... up to max_seeds
  retest conf  the merge's re-test (--retest-confidence)
  retest first pairs of the re-test's first look (--retest-trials)
  max_seeds    a candidate's last look
  age every    one more baseline of the mainline per this many candidates judged against it,
               up to 2 x max_seeds values (the coordinator's MAINLINE_AGE_EVERY; 0: never)

The loop follows the coordinator's rules: the initial mainline gets BASELINES trials;
a candidate is judged against its mainline's values, with the noise floor pooled over
every commit of the track; a confirmed one is merged and re-tested against the previous
mainline on fresh seed pairs; a promoted merge's re-test values are the new mainline's
first baselines, topped up to BASELINES; the re-test's futility stop is the coordinator's
(RETEST_FUTILITY_SIGMA). Noise is independent per trial (no within-seed
correlation: pairing gains nothing here, as in campaign_truth's target).

Prints greedy's gain, the default design's row, the best designs by gain per 100 trials
overall and among those that meet the issue's goals (>= 80% of 2-sigma wins promoted,
<= 5% of promotions false). A design aid: figures are simulated, not the coordinator's.

Usage: uv run python bench/policy_frontier.py [--campaigns 60] [--trials 250] [--seed 0]
       (576 designs; about 15 min on one core)
"""

import argparse
import itertools
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign_truth import MIX, WIN, draw_effect  # noqa: E402  (the real-coordinator bench's truth mix)
from coordinator.scheduler import AGED_BASELINES_PER_SEED, MAINLINE_AGE_EVERY, RETEST_FUTILITY_SIGMA  # noqa: E402
from core import stats  # noqa: E402

BASELINES = 5             # the initial mainline's trials (coordinator default baseline_trials)
LOOKS = (1, 2, 4)         # a candidate's looks below max_seeds (StatsConfig default)
GRID = {                  # the designs swept: every combination
    "screen": (0.4, 0.7, 1.0, 1.5),
    "futility": (0.5, 0.75, 1.0),
    "confidence": (0.8, 0.9),
    "retest_conf": (0.8, 0.9),
    "retest_first": (2, 3, 4),
    "max_seeds": (4, 8),
    "age_every": (0, MAINLINE_AGE_EVERY),
}
DEFAULT = {"screen": 0.4, "futility": 0.75, "confidence": 0.9, "retest_conf": 0.9, "retest_first": 4,
           "max_seeds": 8, "age_every": MAINLINE_AGE_EVERY}   # the coordinator's defaults: in GRID
TOP = 5                   # rows printed per ranking
RECHECK = 4               # the picked designs are measured again on this many times the campaigns


def configs(d: dict):
    looks = tuple(n for n in LOOKS if n < d["max_seeds"])
    cand = stats.StatsConfig(confidence=d["confidence"], max_trials=d["max_seeds"], looks=looks,
                             screen_sigma=d["screen"], futility_sigma=d["futility"], prior_sigma=1.0)
    retest = stats.StatsConfig(confidence=d["retest_conf"], max_trials=d["max_seeds"], looks=looks,
                               futility_sigma=RETEST_FUTILITY_SIGMA, prior_sigma=1.0)
    return cand, retest


def campaign(rng, d: dict, trials: int) -> dict:
    """One campaign of the simulated loop; effects in sigma (noise sigma 1)."""
    cand_cfg, retest_cfg = configs(d)
    values = {}                    # commit -> its values (the noise floor pools every commit)
    used, truth, commit = 0, 0.0, 0

    def run(c, t, n):
        nonlocal used
        values.setdefault(c, []).extend(t + rng.gauss(0.0, 1.0) for _ in range(n))
        used += n

    def noise(exclude):
        return stats.noise_floor([v for c, v in values.items() if c != exclude])

    run(commit, truth, BASELINES)
    promoted, wins, null_trials, next_id, judged = [], [], [], 1, 0
    while used < trials:
        if d["age_every"] and judged and judged % d["age_every"] == 0 \
                and len(values[commit]) < AGED_BASELINES_PER_SEED * d["max_seeds"]:
            run(commit, truth, 1)                    # the mainline ages: one more baseline
        eff, cid = draw_effect(rng), next_id
        next_id += 1
        judged += 1
        want, decision = 1, None
        while used + want <= trials:
            run(cid, truth + eff, want)
            decision = stats.decide(values[cid], values[commit], *noise(cid), cand_cfg)
            if decision.verdict != "promising":
                break
            want = decision.more_trials
        else:
            break                  # out of trials mid-candidate: undecided, not counted
        keep = False
        if decision.verdict == "confirmed":
            merge, prev = next_id, -next_id          # the merge; the previous mainline's re-test seeds
            next_id += 1
            want = d["retest_first"]
            while used + 2 * want <= trials:
                run(merge, truth + eff, want)
                run(prev, truth, want)
                r = stats.decide(values[merge], values[prev], *noise(merge), retest_cfg, screen=False,
                                 first=d["retest_first"], pairs=values[prev], rho=0.0)
                if r.verdict != "promising":
                    keep = r.verdict == "confirmed"
                    break
                want = r.more_trials
            else:
                break              # out of trials mid-re-test
            if keep:
                truth, commit, judged = truth + eff, merge, 0
                run(commit, truth, max(0, BASELINES - len(values[commit])))
                promoted.append(eff)
        if eff == WIN:
            wins.append(keep)
        if eff == 0.0:
            null_trials.append(len(values[cid]))
    return {"gain": -truth, "trials": used, "promoted": promoted, "wins": wins, "null_trials": null_trials}


def greedy(rng, trials: int) -> float:
    truth, used = 0.0, 1
    best = rng.gauss(0.0, 1.0)
    while used < trials:
        eff = draw_effect(rng)
        v = truth + eff + rng.gauss(0.0, 1.0)
        used += 1
        if v < best:
            truth, best = truth + eff, v
    return -truth * 100 / used


def evaluate(d: dict, campaigns: int, trials: int, seed: int) -> dict:
    rng = random.Random(seed)     # the same draws for every design
    runs = [campaign(rng, d, trials) for _ in range(campaigns)]
    prom = [e for r in runs for e in r["promoted"]]
    wins = [w for r in runs for w in r["wins"]]
    nulls = [t for r in runs for t in r["null_trials"]]
    per100 = [100 * r["gain"] / r["trials"] for r in runs]
    m = sum(per100) / len(per100)
    sd = math.sqrt(sum((x - m) ** 2 for x in per100) / (len(per100) - 1))
    return {"gain": m, "gain_se": sd / math.sqrt(len(per100)),
            "wins": sum(wins) / len(wins) if wins else math.nan,
            "false": sum(e >= 0 for e in prom) / len(prom) if prom else math.nan,
            "null_trials": sum(nulls) / len(nulls) if nulls else math.nan}


def row(d: dict, r: dict) -> str:
    design = ", ".join(f"{k} {v:g}" for k, v in d.items())
    return (f"| {design} | {r['gain']:.2f} ± {r['gain_se']:.2f} | {100 * r['wins']:.0f}% | "
            f"{100 * r['false']:.1f}% | {r['null_trials']:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--campaigns", type=int, default=60, help="simulated campaigns per design")
    ap.add_argument("--trials", type=int, default=250, help="trials per campaign")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.campaigns < 2 or args.trials < 10:
        ap.error("--campaigns must be at least 2 (the figures have standard errors) and --trials at least 10")

    rng = random.Random(args.seed)
    g = [greedy(rng, args.trials) for _ in range(20 * args.campaigns)]
    gm = sum(g) / len(g)
    gse = math.sqrt(sum((x - gm) ** 2 for x in g) / (len(g) - 1) / len(g))
    print(f"greedy: {gm:.2f} ± {gse:.2f} sigma true gain per 100 trials ({len(g)} campaigns)", flush=True)
    designs = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    results = []
    for i, d in enumerate(designs):
        results.append((d, evaluate(d, args.campaigns, args.trials, args.seed)))
        if (i + 1) % 48 == 0:
            print(f"  {i + 1}/{len(designs)} designs", flush=True)
    default = next(r for d, r in results if d == DEFAULT)
    header = ("| design | true gain per 100 trials, sigma (± s.e.) | 2σ wins promoted | false promotions | "
              "trials per null |\n| --- | --- | --- | --- | --- |")
    print(f"\n{args.campaigns} simulated campaigns of {args.trials} trials per design; mix "
          f"{', '.join(f'{int(s * 100)}% {e:+g} sigma' for s, e in MIX)}\n")
    print("the coordinator's defaults:\n" + header + "\n" + row(DEFAULT, default))
    # the best of 576 noisy estimates is biased up (the winner's curse of the sweep itself): the
    # designs picked are measured again on fresh draws, RECHECK x the campaigns, and ranked on that
    ranked = sorted(results, key=lambda x: -x[1]["gain"])
    ok = [(d, r) for d, r in ranked if r["wins"] >= 0.8 and r["false"] <= 0.05]
    for title, picked in ((f"the {TOP} designs with the most gain", ranked[:TOP]),
                          (f"the {TOP} with the most gain among the {len(ok)} that meet >= 80% of 2σ wins and "
                           f"<= 5% false promotions", ok[:TOP])):
        again = [(d, evaluate(d, RECHECK * args.campaigns, args.trials, args.seed + 1)) for d, _ in picked]
        print(f"\n{title} (picked on the sweep, measured again on {RECHECK * args.campaigns} fresh campaigns):\n"
              + header)
        for d, r in sorted(again, key=lambda x: -x[1]["gain"]):
            print(row(d, r))


if __name__ == "__main__":
    main()
