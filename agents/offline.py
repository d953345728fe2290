"""
The offline agent: proposes and implements hypotheses with no language model.

It perturbs the hyperparameter constants of train.py (learning rates, batch
sizes, depth, schedule ratios, window pattern, Adam betas). Each knob's
candidate values are derived from its current value; what overnight runs kept
winning (shared/RESEARCH-NOTES.md) only raises sampling weights, never rules
anything out. It never repeats a change the journal already holds for the same
mainline commit; once the mainline moves, earlier values become eligible again
(losers with lower weight), because the optimum of one knob moves when the
others change. Now and then it combines two earlier near-wins.

It never runs out: when every step of the coarse space was judged on this
mainline, it proposes the structural one-liners of the research notes (SiLU or
GELU for ReLU², value embeddings on every layer, shorter windows, MLP width,
init scale) as code edits (a patch) and pairs of any two earlier gains,
significant or not; then finer and finer steps around the current values
(level 1, 2, ...: the optimum is near where the mainline is).

Deterministic: the same seed and the same context give the same hypotheses.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.base import (
    Hypothesis,
    ImplementationError,
    Implementer,
    Proposer,
    ResearchContext,
)
from core.keys import hypothesis_key, params_key, same_value
from core.paths import compile_error
from agents.constant_rewriter import Constant, ConstantsError, coerce, format_value, read_constants, rewrite_constants
from agents.knobs import KNOBS, STRUCTURAL, Knob, is_num, knob_for, sig

AGENT_NAME = "offline"
EDITABLE_FILE = "train.py"
COMBINE_PROB = 0.15  # chance that a hypothesis combines two earlier near-wins
PREFER_BOOST = 2.0  # weight multiplier for a step in the direction public runs favoured
SAME_KNOB_DECAY = 0.3  # after one change to a knob in a batch, its other values weigh this much
NEAR_WIN_SIGMA = -1.0  # effect_sigma at or below this counts as a near-win (minimizing)
# Weight of a value judged on an earlier mainline, by its verdict there (not
# judged on any mainline: 1.0). Promising ones deserve another look most.
RETRY_WEIGHT = {"promising": 1.5, "confirmed": 0.5, "discard": 0.5, "crash": 0.25, "invalid": 0.1}
MAX_LEVEL = 40  # finer-step levels tried per call (level L: steps of ~0.4 / 2^L; ints move L + 2)
# ---------------------------------------------------------------------------
# Proposer
# ---------------------------------------------------------------------------


@dataclass
class _Option:
    params: dict
    key: str
    weight: float
    title: str
    rationale: str
    expected: float  # expected effect on val_bpb (negative = better)
    risk: str
    knobs: tuple  # names it touches
    patch: str | None = None  # a code edit (structural one-liners), params empty


def _fmt(c: Constant, value: Any) -> str:
    return format_value(value, c.source)


class OfflineProposer(Proposer):
    """Mutation proposer over train.py's constants.

    seed: RNG seed (same seed + same context -> same hypotheses).
    combine_prob: chance per hypothesis of combining two earlier near-wins.
    knobs: search space by constant name (default KNOBS).
    path: the editable file whose constants are perturbed.
    """

    name = AGENT_NAME

    def __init__(self, seed: int = 0, combine_prob: float = COMBINE_PROB,
                 knobs: dict[str, Knob] | None = None, path: str = EDITABLE_FILE):
        self.seed = seed
        self.combine_prob = combine_prob
        self.knobs = KNOBS if knobs is None else knobs
        self.path = path
        # keys this instance proposed, per (track, mainline): not repeated even
        # before the journal's history shows them
        self._proposed: dict[tuple, set[str]] = {}
        self._parsed: tuple[str, dict[str, Constant]] | None = None  # (text, constants) of the last call

    # -- public -------------------------------------------------------------

    def propose(self, ctx: ResearchContext, n: int) -> list[Hypothesis]:
        if n <= 0:
            return []
        constants = self._constants(ctx)
        mine = self._proposed.setdefault((ctx.track, ctx.mainline_commit), set())
        taken, earlier = self._judged(ctx)
        taken |= mine

        singles = self._singles(constants, taken, earlier)
        combos = self._combos(constants, taken, ctx.history)
        rng = random.Random(self._rng_seed(ctx, taken))
        # never out of ideas: once the coarse space is spent, code edits and any two earlier
        # gains, then finer and finer steps (drawn only after every coarse option)
        extra, level = [], 0
        while len(singles) + len(combos) + len(extra) < n and level <= MAX_LEVEL:
            known = taken | {o.key for o in combos + extra}
            if level == 0:
                extra += self._structural(ctx, known)
                extra += self._combos(constants, known, ctx.history, near=_any_gain)
            else:
                extra += self._finer(constants, known, level)
            level += 1

        out = []
        while len(out) < n and (singles or combos or extra):
            use_combo = combos and (not singles or rng.random() < self.combine_prob)
            pool = (combos if use_combo else singles) if singles or combos else extra
            opt = pool.pop(self._pick(rng, pool))
            for o in singles + extra:  # spread one batch over several knobs
                if set(o.knobs) & set(opt.knobs):
                    o.weight *= SAME_KNOB_DECAY
            mine.add(opt.key)
            out.append(self._hypothesis(opt, ctx, rng))
        return out

    # -- pieces -------------------------------------------------------------

    def _constants(self, ctx: ResearchContext) -> dict[str, Constant]:
        if self.path not in ctx.files:
            raise ValueError(
                f"ResearchContext.files has no {self.path!r} (has: {sorted(ctx.files) or 'nothing'}); "
                f"the offline agent perturbs the constants of {self.path}: pass the mainline's text there"
            )
        text = ctx.files[self.path]
        if self._parsed is None or self._parsed[0] != text:
            try:
                self._parsed = (text, read_constants(text, self.path))
            except ConstantsError as e:
                raise ValueError(f"mainline {self.path} of {ctx.mainline_commit}: {e}") from None
        return self._parsed[1]

    @staticmethod
    def _judged(ctx: ResearchContext) -> tuple[set[str], dict[str, dict]]:
        """(keys already in the journal for this mainline, latest entry per key
        from other mainlines)."""
        taken, earlier = set(), {}
        for entry in ctx.history:
            key = hypothesis_key(entry)
            if entry.get("mainline_commit") == ctx.mainline_commit:
                taken.add(key)
            else:
                earlier[key] = entry
        return taken, earlier

    def _singles(self, constants, taken, earlier) -> list[_Option]:
        out = []
        for name, c in constants.items():
            knob = knob_for(name, self.knobs)
            if knob is None:
                continue
            seen = set()
            for step in knob.steps(c.value):
                try:
                    value = coerce(name, c.value, step.value)
                except ConstantsError:
                    continue
                params = {name: value}
                key = params_key(params)
                if same_value(value, c.value) or key in taken or key in seen:
                    continue
                seen.add(key)
                favoured = knob.prefer is not None and step.direction == knob.prefer
                weight = knob.weight * (PREFER_BOOST if favoured else 1.0)
                old, new = _fmt(c, c.value), _fmt(c, value)
                why = f"Public runs: {knob.reason}." if favoured and knob.reason else "Exploration around the current value."
                retry = ""
                if key in earlier:
                    e = earlier[key]
                    weight *= RETRY_WEIGHT.get(e.get("verdict"), 1.0)
                    retry = " " + _retry_note(e)
                expected = -0.01 if favoured else -0.005
                out.append(_Option(
                    params=params, key=key, weight=weight,
                    title=f"{name} {old} -> {new}",
                    rationale=f"Set {name} ({knob.what}) from {old} to {new} ({step.label}). {why}{retry}",
                    expected=expected, risk=step.risk, knobs=(name,),
                ))
        return out

    def _structural(self, ctx: ResearchContext, taken) -> list[_Option]:
        """The research notes' structural one-liners that match this mainline's text, as patches."""
        text = ctx.files[self.path]
        out = []
        for title, why, edits in STRUCTURAL:
            key = hypothesis_key({"title": title})
            if key in taken or not all(text.count(old) == 1 for old, _ in edits):
                continue
            new = text
            for old, rep in edits:
                new = new.replace(old, rep)
            patch = "".join(difflib.unified_diff(text.splitlines(keepends=True), new.splitlines(keepends=True),
                                                 f"a/{self.path}", f"b/{self.path}"))
            out.append(_Option(params={}, key=key, weight=1.0, title=title,
                               rationale=f"A structural one-liner from public runs: {why}.",
                               expected=-0.005, risk="medium", knobs=(f"code:{title}",), patch=patch))
        return out

    def _finer(self, constants, taken, level: int) -> list[_Option]:
        """Level L of an ever finer grid around the current value of every knob: factors
        2^(k / 2^L) for odd k up to 4x either way (each level halves the spacing; a step
        near the current value weighs more), additive 0.05 k / 2^L for a fraction at 0,
        +-(L + 2) for a small integer."""
        out, taken = [], set(taken)
        for name, c in constants.items():
            knob = knob_for(name, self.knobs)
            if knob is None or not is_num(c.value):
                continue
            cur, grid = c.value, 2 ** level
            if isinstance(cur, int) and abs(cur) <= 64:
                steps = [(cur + d, 1.0) for d in (level + 2, -(level + 2)) if cur + d >= 1]
            elif cur == 0:
                steps = [(0.05 * k / grid, 1.0) for k in range(1, grid + 1, 2)]
            else:
                steps = [(cur * 2 ** (k / grid), 1.0 / (1.0 + abs(k) / grid)) for k in range(-2 * grid + 1, 2 * grid, 2)]
                steps = [(round(v) if isinstance(cur, int) else sig(v, 3 + level // 2), w) for v, w in steps]
            for v, closeness in steps:
                try:
                    value = coerce(name, cur, v)
                except ConstantsError:
                    continue
                if isinstance(cur, float) and 0 <= cur <= 1 and name.endswith(("_RATIO", "_FRAC")) \
                        and not 0 <= value <= 1:
                    continue          # a fraction stays a fraction
                key = params_key({name: value})
                if same_value(value, cur) or key in taken:
                    continue
                taken.add(key)
                old, new = _fmt(c, cur), _fmt(c, value)
                out.append(_Option(params={name: value}, key=key, weight=knob.weight * closeness,
                                   title=f"{name} {old} -> {new}",
                                   rationale=f"Set {name} ({knob.what}) from {old} to {new}: a finer step (level "
                                             f"{level}) around the current optimum; the coarse steps were judged.",
                                   expected=-0.003, risk="low", knobs=(name,)))
        return out

    def _combos(self, constants, taken, history, near=None) -> list[_Option]:
        """Pairs of earlier near-wins (any mainline) on disjoint constants,
        still different from the current values."""
        if self.combine_prob <= 0:
            return []
        near = near or _near_win
        wins, seen = [], set()
        for entry in history:
            params = entry.get("params") or {}
            if not params or not near(entry):
                continue
            try:
                changed = {k: coerce(k, constants[k].value, v) for k, v in params.items()}
            except (KeyError, ConstantsError):
                continue  # names gone from train.py, or values that no longer fit
            changed = {k: v for k, v in changed.items() if not same_value(v, constants[k].value)}
            key = params_key(changed)
            if changed and key not in seen:
                seen.add(key)
                wins.append((changed, entry))
        out = []
        for i, (a, ea) in enumerate(wins):
            for b, eb in wins[i + 1:]:
                if set(a) & set(b):
                    continue
                params = {**a, **b}
                key = params_key(params)
                if key in taken:
                    continue
                parts = [f"{k} {_fmt(constants[k], constants[k].value)} -> {_fmt(constants[k], v)}" for k, v in params.items()]
                out.append(_Option(
                    params=params, key=key, weight=1.0,
                    title=" + ".join(parts),
                    rationale=(f"Combine two earlier near-wins: {ea.get('title') or params_key(a)} "
                               f"({_effect_text(ea)}) and {eb.get('title') or params_key(b)} ({_effect_text(eb)}); "
                               "each alone was below significance, together they may clear the noise floor."),
                    expected=-0.02, risk="medium", knobs=tuple(params),
                ))
        return out

    def _rng_seed(self, ctx: ResearchContext, taken: set[str]) -> int:
        h = hashlib.sha256()
        h.update(json.dumps([self.seed, ctx.track, ctx.mainline_commit, sorted(taken)]).encode())
        h.update(ctx.files[self.path].encode("utf-8", "surrogatepass"))
        return int.from_bytes(h.digest()[:8], "big")

    @staticmethod
    def _pick(rng: random.Random, pool: list[_Option]) -> int:
        r = rng.random() * sum(o.weight for o in pool)
        for i, o in enumerate(pool):
            r -= o.weight
            if r < 0:
                return i
        return len(pool) - 1

    def _hypothesis(self, opt: _Option, ctx: ResearchContext, rng: random.Random) -> Hypothesis:
        effect = f"{opt.expected:+.3f} bpb"
        if ctx.noise_floor:
            effect += f" (~{abs(opt.expected) / ctx.noise_floor:.1f} sigma of the noise floor {ctx.noise_floor:.3g})"
        return Hypothesis(
            hypothesis_id=uuid.UUID(int=rng.getrandbits(128), version=4).hex,
            title=opt.title,
            rationale=opt.rationale,
            expected_effect=effect,
            risk=opt.risk,
            agent=self.name,
            track=ctx.track,
            mainline_commit=ctx.mainline_commit,
            params=dict(opt.params) or None,
            patch=opt.patch,
        )


def _near_win(entry: dict) -> bool:
    if entry.get("verdict") == "promising":
        return True
    sigma = entry.get("effect_sigma")
    return entry.get("verdict") == "discard" and sigma is not None and sigma <= NEAR_WIN_SIGMA


def _any_gain(entry: dict) -> bool:
    """Any earlier change that measured better than its mainline, significant or not."""
    sigma = entry.get("effect_sigma")
    return _near_win(entry) or (sigma is not None and sigma < 0)


def _effect_text(entry: dict) -> str:
    parts = [f"verdict {entry.get('verdict')}"]
    if entry.get("effect_bpb") is not None:
        parts.append(f"{entry['effect_bpb']:+.4f} bpb")
    if entry.get("effect_sigma") is not None:
        parts.append(f"{entry['effect_sigma']:+.1f} sigma")
    return ", ".join(parts)


def _retry_note(entry: dict) -> str:
    commit = (entry.get("mainline_commit") or "?")[:8]
    return (f"Retry: judged on an earlier mainline {commit} ({_effect_text(entry)}); "
            "the optimum of one knob moves when the others change.")


# ---------------------------------------------------------------------------
# Implementer
# ---------------------------------------------------------------------------


class OfflineImplementer(Implementer):
    """Sets hypothesis.params as constants of train.py in the workspace."""

    name = AGENT_NAME

    def __init__(self, path: str = EDITABLE_FILE):
        self.path = path

    def implement(self, h: Hypothesis, workspace: Path) -> None:
        if h.patch:
            raise ImplementationError(
                f"hypothesis {h.hypothesis_id} carries a patch; the offline implementer only sets "
                f"constants from params: use a patch-applying implementer"
            )
        if not h.params or not isinstance(h.params, dict):
            raise ImplementationError(
                f"hypothesis {h.hypothesis_id} has no params (constant name -> value) to set in {self.path}"
            )
        bad = [k for k in h.params if not isinstance(k, str)]
        if bad:
            raise ImplementationError(f"hypothesis {h.hypothesis_id}: params names must be strings, got {bad!r}")
        file = Path(workspace) / self.path
        if not file.is_file():
            raise ImplementationError(f"{file} not found: the workspace must be a checkout of the research repo")
        # newline="" keeps \r\n files as they are
        with open(file, encoding="utf-8", newline="") as f:
            text = f.read()
        try:
            new = rewrite_constants(text, h.params, self.path)
        except ConstantsError as e:
            raise ImplementationError(f"hypothesis {h.hypothesis_id} ({h.title}): {e}") from None
        err = compile_error(self.path, new)
        if err:
            raise ImplementationError(f"hypothesis {h.hypothesis_id}: rewritten {self.path} does not compile: {err}")
        if new != text:
            with open(file, "w", encoding="utf-8", newline="") as f:
                f.write(new)
