"""
Statistics for the swarm: is a candidate really better than the mainline, or noise?

A trial is one training run of one commit with one seed. Two trials of the same
commit differ by ~0.03 bpb on MLX (different seeds, different data order), which
is larger than most real improvements. So nothing is kept on one lucky seed:
every keep is a one-sided test against the measured noise of its own track.

Noise floor. sigma = the pooled standard deviation of repeated trials of the
same commit, over every commit of the track that has >= 2 trials:
    sigma^2 = sum over commits of sum (x - commit mean)^2 / sum over commits (n - 1)
with dof = sum (n - 1). Pooling lets the noise be measured once per track and
reused by every candidate; the coordinator re-measures it as the mainline moves
(it chooses which commits' trials go in).

The test. gain = mainline_mean - candidate_mean (minimize; the mirror image
when maximizing). Both means are uncertain, so its standard error is
    se = s * sqrt(1/n_candidate + 1/n_mainline)
where s pools the noise floor with the candidate's own spread (a candidate
that makes training erratic cannot hide behind a quiet mainline). Then
t = gain / se follows Student's t with dof + n_candidate - 1 degrees of
freedom under "no improvement" (Gaussian seed noise), and p = P(T >= t).
When there is no repeated trial at all yet (a single mainline trial, a single
candidate trial) sigma is unknown: we fall back to cfg.prior_sigma and a
z-test, and the test string says so (PRIOR).

Sequential design ("screen, then confirm"). Most hypotheses do nothing, so the
seeds spent on them are the real cost. The test looks at fixed trial counts
(defaults 1, 2, 4, 8 = max_trials) and asks for all the seeds of the next look
at once, so several workers can run them in parallel:
  look 1, one trial: screen. Discard unless the candidate beats the mainline
      mean by screen_sigma (0.4) * s: a null passes ~1 time in 3, a true
      2-sigma win ~9 times in 10. The screen never confirms.
  later looks: confirm when p <= alpha_k and gain >= min_effect. Otherwise
      discard at max_trials, or earlier when gain < futility_sigma (0.75) * s
      (a lucky first seed that fades), or else ask for more seeds.
Looking several times inflates false positives (testing at 5% at every look
merges ~7% of nulls), so the overall alpha = 1 - confidence is spent across
the confirming looks, alpha_k proportional to the trials look k adds (1/7,
2/7, 4/7 of alpha): by Bonferroni P(false merge) <= sum alpha_k = alpha
whatever the correlation between looks. Discards never create false merges,
so the screen and the futility stop cost no alpha; they only trade trials
against power. A look uses exactly its planned number of trials (the first
n_k values), so a verdict does not depend on when decide() was called:
replaying the journal gives the same verdicts, and extra calls cannot sneak in
extra looks.

min_effect (bpb) is a practical threshold on top of significance: the test
is against "no improvement", and a significant gain smaller than min_effect
is not confirmed. The same decide() (screen=False, with the re-test's own
alpha and futility stop: the coordinator's Policy.retest_stats) re-tests a
merged mainline against the previous one: confirmed -> promote, discard ->
revert, promising -> more seeds.

Measured error rates of the defaults: bench/statistics.py, docs/statistics.md.
Pure functions, no I/O; the Student-t CDF is implemented here (no scipy).
"""

import functools
import math
from dataclasses import dataclass

MAX_CF_ITERATIONS = 10_000  # continued fraction of the incomplete beta: ~sqrt(dof) needed
LARGE_DOF = 1e7             # beyond this the t distribution is the normal one to ~1e-8


@dataclass(frozen=True)
class StatsConfig:
    confidence: float = 0.9      # one-sided; overall false-merge rate of null candidates <= 1 - confidence
    min_effect: float = 0.0      # smallest improvement worth a merge, in metric units (bpb), >= 0
    max_trials: int = 8          # the final look: not confirmed by then -> discard
    direction: str = "minimize"  # "minimize" (val_bpb) or "maximize" (foreign targets)
    looks: tuple = (1, 2, 4)     # trial counts where the test looks; max_trials is always the last one
    screen_sigma: float = 0.4    # look 1: discard unless better by this many sigma (trials/null vs power)
    futility_sigma: float = 0.75 # later looks: discard unless better by this many sigma
    prior_sigma: float = 0.03    # noise floor when no commit has 2 trials yet (~MLX seed noise, bpb)


@dataclass(frozen=True)
class Decision:
    verdict: str          # "discard" | "promising" | "confirmed"
    test: str             # what was tested, in words (look, test, dof, alpha, why)
    p_value: float        # one-sided: P(a gain this large | no real improvement)
    confidence: float     # 1 - p_value
    effect_bpb: float     # candidate_mean - mainline_mean (negative = better when minimizing)
    effect_sigma: float   # effect_bpb / noise_floor
    noise_floor: float    # sigma used by the test
    trials: int           # candidate trials run so far (len(candidate_values))
    candidate_mean: float
    mainline_mean: float
    more_trials: int      # seeds wanted now to reach the next look (0 unless promising)


# -----------------------------------------------------------------------------
# Distributions (no scipy): normal via erfc, Student t via the incomplete beta.

def normal_sf(z):
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _betacf(a, b, x):
    # Continued fraction of the incomplete beta (modified Lentz), as in Numerical Recipes.
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, MAX_CF_ITERATIONS + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a, b, x):
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    # the fraction converges fast only on its own side of the mean a/(a+b); use symmetry on the other
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t, dof):
    """P(T >= t) for Student's t with dof degrees of freedom (dof = inf: normal)."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    if dof > LARGE_DOF:
        return normal_sf(t)
    tail = 0.5 * betainc(dof / 2.0, 0.5, dof / (dof + t * t))  # P(T >= |t|)
    return tail if t > 0 else 1.0 - tail


# -----------------------------------------------------------------------------
# Noise floor

def _check_values(values, what):
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} contains a non-finite metric ({values}); crashed or diverged "
                         "trials must be left out (the coordinator records them as crashes)")
    return values


def noise_floor(groups):
    """Pooled within-commit standard deviation of repeated trials, and its degrees of freedom.

    groups: one list of metric values per commit (same track). Commits with fewer
    than 2 trials carry no information on the spread and are skipped. Returns
    (sigma, dof); (None, 0) when no commit has 2 trials yet.
    """
    ss, dof = 0.0, 0
    for i, g in enumerate(groups):
        g = _check_values(g, f"noise_floor group {i}")
        if len(g) < 2:
            continue
        m = math.fsum(g) / len(g)
        ss += math.fsum((x - m) ** 2 for x in g)
        dof += len(g) - 1
    return pooled_sigma(ss, dof)


def pooled_sigma(ss, dof):
    """(sigma, dof) from a pooled within-commit sum of squares and its degrees of freedom
    (sum of n - 1): noise_floor's last step, also for the coordinator's running sums."""
    if dof <= 0:
        return None, 0
    return math.sqrt(max(ss, 0.0) / dof), dof



def within_seed_correlation(groups, min_pairs):
    """Correlation of trial noise between commits run on the same seed (the same data order
    and initialization). groups: (values, seeds) per commit of one track; each value's
    residual from its own commit's mean is correlated with the residuals of the other
    commits' values on its seed (an intraclass correlation over all such pairs). Commits
    with fewer than 2 values, and values without a seed, carry nothing. Returns (rho,
    pairs); rho None below min_pairs pairs."""
    by_seed: dict = {}
    for values, seeds in groups:
        if len(values) < 2:
            continue
        m = math.fsum(values) / len(values)
        for x, seed in zip(values, seeds):
            if seed is not None:
                r = by_seed.setdefault(seed, [0.0, 0.0, 0])
                r[0] += x - m
                r[1] += (x - m) ** 2
                r[2] += 1
    sxy = sxx = 0.0
    pairs = 0
    for tot, sq, k in by_seed.values():
        if k >= 2:
            sxy += (tot * tot - sq) / 2.0        # sum over pairs i < j of r_i r_j
            sxx += (k - 1) * sq / 2.0            # sum over pairs of (r_i^2 + r_j^2) / 2
            pairs += k * (k - 1) // 2
    return (sxy / sxx if pairs >= min_pairs and sxx > 0 else None), pairs


# -----------------------------------------------------------------------------
# The sequential decision

def _check_config(cfg):
    if cfg.direction not in ("minimize", "maximize"):
        raise ValueError(f"StatsConfig.direction must be 'minimize' or 'maximize', got {cfg.direction!r}")
    if not 0.5 < cfg.confidence < 1.0:
        raise ValueError(f"StatsConfig.confidence must be in (0.5, 1), got {cfg.confidence}")
    if cfg.max_trials < 1 or cfg.min_effect < 0 or cfg.prior_sigma <= 0:
        raise ValueError(f"StatsConfig needs max_trials >= 1, min_effect >= 0, prior_sigma > 0: {cfg}")


def look_schedule(cfg, screen: bool = True, first: int = 1):
    """Trial counts at which decide() looks, and the alpha each look may spend.

    screen=True (a candidate): looks 1 (the screen), cfg.looks below max_trials,
    max_trials; the overall alpha is spent on the looks after the screen in proportion
    to the trials each adds (a single look, max_trials == 1, gets all of it).
    screen=False (a re-test): the first look is at `first` trials and may confirm; the
    alpha is spent on every look in proportion to the trials it adds.
    Returns [(n_k, alpha_k), ...].
    """
    _check_config(cfg)
    alpha = 1.0 - cfg.confidence
    if not screen:
        first = max(1, min(int(first), cfg.max_trials))
        ns = sorted({first, cfg.max_trials} | {int(n) for n in cfg.looks if first <= n < cfg.max_trials})
        return [(n, alpha * (n - prev) / ns[-1]) for prev, n in zip([0] + ns, ns)]
    ns = sorted({1, cfg.max_trials} | {int(n) for n in cfg.looks if 1 <= n < cfg.max_trials})
    if len(ns) == 1:
        return [(1, alpha)]
    span = ns[-1] - ns[0]
    return [(ns[0], 0.0)] + [(n, alpha * (n - prev) / span) for prev, n in zip(ns, ns[1:])]


@functools.lru_cache(maxsize=4096)
def t_isf(p, dof):
    """The t with P(T >= t) = p (0 < p < 1), by bisection on t_sf (to ~1e-7; cached: a look's
    alpha and dof repeat)."""
    lo, hi = -1e3, 1e3
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, dof) > p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def paired_is_stronger(rho, n, n_main, dof_unpaired, alpha):
    """Does a paired t-test on n seed-matched differences beat the unpaired test against
    n_main mainline values, given the track's within-seed correlation rho? Compares the
    smallest detectable gain of each (critical t x standard error, in units of sigma):
    pairing shrinks the variance of a difference by (1 - rho) but leaves n - 1 dof."""
    if rho is None or n < 3 or not 0 < alpha < 1:
        return False
    paired = t_isf(alpha, n - 1) * math.sqrt(max(0.0, 2.0 * (1.0 - rho)) / n)
    unpaired = t_isf(alpha, dof_unpaired if dof_unpaired > 0 else math.inf) * math.sqrt(1.0 / n + 1.0 / n_main)
    return paired < unpaired


def _in_sigma(effect, s):
    if s > 0:
        return effect / s
    return 0.0 if effect == 0 else math.copysign(math.inf, effect)  # zero noise: any difference is huge


def decide(candidate_values, mainline_values, sigma, dof, cfg=StatsConfig(), *, screen=True, first=1,
           pairs=None, rho=None):
    """Verdict on a candidate from its trials and the mainline's (same track).

    candidate_values: its finished trials in journal order (crashes left out).
    mainline_values: the trials of the mainline commit it is compared with.
    sigma, dof: the track's noise floor from noise_floor() over mainline commits; leave
    this candidate's trials out of it (decide() pools them in itself). None / 0: unknown.
    screen=False, first=n: a re-test (look_schedule): no one-trial screen, first look at n.
    pairs: the mainline's values on the candidate's own seeds, aligned with
    candidate_values (same seed, same data order and init), or None. When rho (the track's
    measured within-seed correlation) makes it stronger (paired_is_stronger), the look uses
    a paired t-test on the differences; otherwise the unpaired test above.
    Returns a Decision; when "promising", more_trials seeds are wanted now (count
    the ones already running against it).
    """
    cand = _check_values(candidate_values, "candidate_values")
    main = _check_values(mainline_values, "mainline_values")
    if not cand:
        raise ValueError("decide() needs at least one finished candidate trial")
    if not main:
        raise ValueError("decide() needs at least one mainline trial on this track: run a baseline trial first")
    schedule = look_schedule(cfg, screen, first)
    if len(cand) < schedule[0][0]:
        raise ValueError(f"decide() needs {schedule[0][0]} trials for its first look, got {len(cand)}")
    if sigma is None or dof is None or dof < 1:
        sigma, dof = 0.0, 0

    # the latest look reached; it judges exactly its planned trials
    k = max(i for i, (n_k, _) in enumerate(schedule) if n_k <= len(cand))
    n_look, alpha_k = schedule[k]
    used = cand[:n_look]
    last = k == len(schedule) - 1
    matched = _check_values(pairs[:n_look], "pairs") if pairs is not None and len(pairs) >= n_look else None

    # pooled sigma: the track's noise floor plus the candidate's own spread
    cm, mm = math.fsum(used) / n_look, math.fsum(main) / len(main)
    ss_c = math.fsum((x - cm) ** 2 for x in used)
    dof_t = dof + n_look - 1
    if dof_t > 0:
        s = math.sqrt((dof * sigma ** 2 + ss_c) / dof_t)
        test = f"one-sided t-test, pooled sigma (dof {dof_t})"
    else:
        s, dof_t = cfg.prior_sigma, math.inf
        test = f"one-sided z-test, PRIOR sigma {cfg.prior_sigma:g} (no repeated trials yet)"
    effect = cm - mm
    se = s * math.sqrt(1.0 / n_look + 1.0 / len(main))
    if matched is not None and paired_is_stronger(rho, n_look, len(main), dof_t, alpha_k or (1 - cfg.confidence)):
        diffs = [c - m for c, m in zip(used, matched)]
        effect = math.fsum(diffs) / n_look
        mm = cm - effect
        sd = math.sqrt(math.fsum((x - effect) ** 2 for x in diffs) / (n_look - 1))
        se, dof_t = sd / math.sqrt(n_look), n_look - 1
        test = f"one-sided paired t-test on {n_look} seed-matched differences (dof {dof_t}, within-seed rho {rho:.2f})"
    gain = -effect if cfg.direction == "minimize" else effect
    if se > 0:
        p = t_sf(gain / se, dof_t)
    else:  # identical repeated trials (a deterministic target): any difference is real
        p = 0.0 if gain > 0 else 1.0 if gain < 0 else 0.5
    test += (f", {cfg.direction}, look {k + 1}/{len(schedule)} at n={n_look} vs mainline n={len(main)}"
             f", alpha {alpha_k:.4g}")

    # the verdict. Only a look with alpha to spend can confirm; discards are always allowed
    significant = alpha_k > 0 and p <= alpha_k
    rule, needed = ("screen", cfg.screen_sigma) if k == 0 and screen else ("futility", cfg.futility_sigma)
    if significant and gain >= cfg.min_effect:
        verdict, why = "confirmed", f"p <= alpha and gain >= min_effect {cfg.min_effect:g}"
    elif last:
        verdict = "discard"
        why = (f"significant but gain {gain:.4g} < min_effect {cfg.min_effect:g}" if significant
               else f"not significant at max_trials={cfg.max_trials}")
    elif not (gain > 0 and gain >= needed * s):
        verdict, why = "discard", f"{rule}: gain {gain:.4g} is not > 0 and >= {needed:g} sigma"
    else:
        verdict, why = "promising", "needs more trials"
    more = schedule[k + 1][0] - len(cand) if verdict == "promising" else 0
    if len(cand) > n_look:
        why += f" (judged on the first {n_look} of {len(cand)} trials)"

    return Decision(verdict=verdict, test=f"{test}: {why}", p_value=p, confidence=1.0 - p,
                    effect_bpb=effect, effect_sigma=_in_sigma(effect, s),
                    noise_floor=s, trials=len(cand), candidate_mean=cm, mainline_mean=mm,
                    more_trials=more)
