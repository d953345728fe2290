"""
The offline agent's search space: one Knob per constant of train.py, with the candidate
values derived from the current one (what public overnight runs favoured only raises a
step's weight, shared/RESEARCH-NOTES.md), and the structural one-liners of the research
notes as exact text edits. agents/offline.py samples from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# Structural one-liners of the research notes, as code edits of train.py: (title, why,
# [(exact text, replacement), ...]). One that does not match the mainline's text is skipped.
STRUCTURAL = [
    ("SiLU instead of ReLU² in the MLP", "SiLU beat ReLU² on one Mac (ReLU² won on a laptop GPU: hardware-specific)",
     [("x = mx.square(nn.relu(x))  # ReLU²", "x = nn.silu(x)  # SiLU")]),
    ("GELU instead of ReLU² in the MLP", "the activation is hardware-specific; GELU is the other common choice",
     [("x = mx.square(nn.relu(x))  # ReLU²", "x = nn.gelu(x)  # GELU")]),
    ("value embeddings on every layer", "value embeddings on every layer was a kept structural one-liner",
     [("    return layer_idx % 2 == (n_layer - 1) % 2\n", "    return True\n")]),
    ("short windows at 1/8 of the context", "short-window layers at 1/8 of the context instead of 1/2 gave the "
     "biggest late win (more steps)", [("short_window = long_window // 2", "short_window = long_window // 8")]),
    ("short windows at 1/4 of the context", "cheaper attention: more steps in the budget",
     [("short_window = long_window // 2", "short_window = long_window // 4")]),
    ("MLP width 3x instead of 4x", "after cheaper attention the bottleneck moved to the MLP: shrinking it paid",
     [("nn.Linear(config.n_embd, 4 * config.n_embd", "nn.Linear(config.n_embd, 3 * config.n_embd"),
      ("nn.Linear(4 * config.n_embd, config.n_embd", "nn.Linear(3 * config.n_embd, config.n_embd")]),
    ("MLP width 2x instead of 4x", "a smaller MLP means more steps in a fixed time budget",
     [("nn.Linear(config.n_embd, 4 * config.n_embd", "nn.Linear(config.n_embd, 2 * config.n_embd"),
      ("nn.Linear(4 * config.n_embd, config.n_embd", "nn.Linear(2 * config.n_embd, config.n_embd")]),
    ("half the init scale of the matrices", "init scales matter on short runs",
     [("s = 3**0.5 * n_embd**-0.5", "s = 0.5 * 3**0.5 * n_embd**-0.5")]),
    ("1.5x the init scale of the matrices", "init scales matter on short runs",
     [("s = 3**0.5 * n_embd**-0.5", "s = 1.5 * 3**0.5 * n_embd**-0.5")]),
]


# ---------------------------------------------------------------------------
# Search space: one Knob per constant, candidate values derived from the current one
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    value: Any
    label: str  # "x1.4", "+1", "-0.1", "more short-window layers"
    risk: str
    direction: str  # "up" / "down"


@dataclass(frozen=True)
class Knob:
    what: str  # short description for the rationale
    steps: Callable[[Any], list[Step]]  # current value -> candidate steps
    weight: float = 1.0  # prior weight of touching this knob at all
    prefer: str | None = None  # direction public runs favoured
    reason: str = ""  # why, from RESEARCH-NOTES.md


def sig(x: float, digits: int = 3) -> float:
    """x to `digits` significant digits."""
    return float(f"{x:.{digits}g}")


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def multiplicative(factors, risks=None, digits=3):
    """Steps cur * f for positive numbers (ints stay ints: only exact products)."""
    risks = risks or {}

    def steps(cur):
        if not is_num(cur) or cur <= 0:
            return []
        out = []
        for f in factors:
            if isinstance(cur, int):
                v = cur * f
                if v != int(v) or v < 1:
                    continue
                v = int(v)
            else:
                v = sig(cur * f, digits)
            risk = risks.get(f, "medium" if f <= 0.5 or f >= 2 else "low")
            out.append(Step(v, f"x{f:g}", risk, "up" if f > 1 else "down"))
        return out

    return steps


def rounded_scale(factors, risk_up="high", risk_down="medium"):
    """Steps round(cur * f) for positive ints (model width)."""

    def steps(cur):
        if not isinstance(cur, int) or isinstance(cur, bool) or cur <= 0:
            return []
        return [
            Step(max(1, round(cur * f)), f"x{f:g}", risk_up if f > 1 else risk_down, "up" if f > 1 else "down")
            for f in factors
        ]

    return steps


def int_steps(deltas, lo=1):
    def steps(cur):
        if not isinstance(cur, int) or isinstance(cur, bool):
            return []
        out = []
        for d in deltas:
            if cur + d >= lo:
                risk = "low" if d < 0 else ("medium" if d == 1 else "high")
                out.append(Step(cur + d, f"{d:+d}", risk, "up" if d > 0 else "down"))
        return out

    return steps


def ratio_steps(deltas=(-0.2, -0.1, 0.1, 0.2)):
    """Fractions in [0, 1]: additive steps, clipped."""

    def steps(cur):
        if not is_num(cur) or not 0 <= cur <= 1:
            return []
        out = []
        for d in deltas:
            v = round(min(1.0, max(0.0, cur + d)), 2)
            out.append(Step(float(v), f"{d:+g}", "low", "up" if d > 0 else "down"))
        return out

    return steps


def weight_decay_steps(cur):
    if not is_num(cur) or cur < 0:
        return []
    if cur == 0:
        return [Step(v, f"={v:g}", "medium", "up") for v in (0.01, 0.05, 0.1)]
    return [Step(0.0, "off", "medium", "down")] + multiplicative((0.5, 2.0))(float(cur))


WINDOW_PATTERNS = ("L", "SL", "SSL", "SSSL", "SSSSSSSL")


def window_steps(cur):
    """Other S/L layer patterns; more short-window (S) layers is cheaper attention."""
    if not isinstance(cur, str) or not cur or set(cur.upper()) - set("SL"):
        return []

    def short_frac(p):
        return p.upper().count("S") / len(p)

    out = []
    for p in WINDOW_PATTERNS:
        more, fewer = short_frac(p) > short_frac(cur), short_frac(p) < short_frac(cur)
        label = "more short-window layers" if more else "fewer short-window layers" if fewer else "other layout"
        out.append(Step(p, label, "low", "up" if more else "down"))
    return out


def betas_steps(cur):
    """Move one beta toward 1 (halve 1-beta: longer memory) or away (double it)."""
    if not isinstance(cur, (tuple, list)) or len(cur) != 2 or not all(is_num(b) and 0 < b < 1 for b in cur):
        return []
    out = []
    for i in range(2):
        for f, direction in ((0.5, "up"), (2.0, "down")):
            b = round(1 - (1 - cur[i]) * f, 4)
            if not 0.5 <= b < 1:
                continue
            new = list(cur)
            new[i] = b
            out.append(Step(tuple(new), f"beta{i + 1} {cur[i]:g}->{b:g}", "medium", direction))
    return out


_HIGHER_LR = "higher learning rates across groups kept winning (matrix 0.04 -> 0.06-0.07, embedding 0.6 -> 1.0-1.75, unembedding 0.004 -> 0.008)"
_LR = multiplicative((0.5, 0.7, 1.4, 2.0))

KNOBS: dict[str, Knob] = {
    "MATRIX_LR": Knob("learning rate of the matrix parameters", _LR, 1.2, "up", _HIGHER_LR),
    "EMBEDDING_LR": Knob("learning rate of the token embeddings", _LR, 1.2, "up", _HIGHER_LR),
    "UNEMBEDDING_LR": Knob("learning rate of the output head", _LR, 1.2, "up", _HIGHER_LR),
    "SCALAR_LR": Knob("learning rate of the scalar parameters", _LR, 0.8, "up", _HIGHER_LR),
    "WARMDOWN_RATIO": Knob("fraction of the budget spent in LR warmdown", ratio_steps(), 1.5, "up",
                           "a longer warmdown (0.7 -> 1.0) was kept repeatedly in one Mac run"),
    "WARMUP_RATIO": Knob("fraction of the budget spent in LR warmup", ratio_steps(), 1.3, "up",
                         "some warmup (0 -> 0.2) was among six schedule keeps in a row"),
    "FINAL_LR_FRAC": Knob("final LR as a fraction of the peak", ratio_steps(), 1.3, "up",
                          "a non-zero final LR fraction kept winning"),
    "TOTAL_BATCH_SIZE": Knob("tokens per optimizer step", multiplicative((0.25, 0.5, 2.0), {0.5: "low"}), 1.3, "down",
                             "smaller total batch (2^16 -> 2^14) kept winning on small machines (more steps) until gradient noise stopped it"),
    "DEVICE_BATCH_SIZE": Knob("sequences per forward/backward pass", multiplicative((0.5, 2.0), {0.5: "low", 2.0: "high"}), 0.5),
    "DEPTH": Knob("number of transformer layers", int_steps((-2, -1, 1, 2)), 1.2, "down",
                  "on a fixed time budget steps beat size: depth 8 -> 4 was the largest single win on a Mac; deeper models reliably lost"),
    "ASPECT_RATIO": Knob("model width per layer (model_dim = DEPTH * ASPECT_RATIO)", rounded_scale((0.5, 0.75, 1.5, 2.0)), 0.8, "up",
                         "width over depth won (n_embd 256 -> 512 at depth 4)"),
    "HEAD_DIM": Knob("attention head dimension", multiplicative((0.5, 2.0)), 0.4),
    "WINDOW_PATTERN": Knob("sliding-window layer pattern (S short, L long)", window_steps, 1.0, "up",
                           "cheaper attention (more short-window layers) gave the biggest late win: more steps in the budget"),
    "WEIGHT_DECAY": Knob("weight decay", weight_decay_steps, 1.0, "down", "zero or decaying weight decay won on short runs"),
    "ADAM_BETAS": Knob("Adam betas", betas_steps, 0.6),
}

# Constants not in KNOBS are perturbed only when their name says what they are.
GENERIC_KNOBS = {
    "_LR": Knob("learning rate", _LR, 0.5),
    "_RATIO": Knob("fraction", ratio_steps(), 0.5),
    "_FRAC": Knob("fraction", ratio_steps(), 0.5),
}


def knob_for(name: str, knobs: dict[str, Knob] = KNOBS) -> Knob | None:
    if name in knobs:
        return knobs[name]
    for suffix, knob in GENERIC_KNOBS.items():
        if name.endswith(suffix):
            return knob
    return None
