"""
The propose_hypotheses tool: its schema, the checks its input must pass, and the refusal of
near-duplicates. A model's (or a command agent's) proposals become Hypotheses only through
validate_proposals; what the journal already holds for the mainline is refused by
refuse_duplicates, with the reason told back so the model can replace it.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any, Mapping

from agents.base import RISKS, Hypothesis, ResearchContext
from agents.prompts import inline
from core.keys import hypothesis_key, params_key

MAX_TITLE = 200
MAX_RATIONALE = 4000

PROPOSE_TOOL = {
    "name": "propose_hypotheses",
    "description": (
        "Submit new hypotheses for the current mainline. Each is one change to the editable files, "
        "to be implemented and judged by training against the mainline's repeated trials."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "hypotheses": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "title": {"type": "string",
                                  "description": "What changes, e.g. 'WARMDOWN_RATIO 0.5 -> 0.8'"},
                        "rationale": {"type": "string",
                                      "description": "Why it should help, citing the evidence"},
                        "expected_effect": {"type": "string",
                                            "description": "Expected change of val_bpb, e.g. '-0.01 bpb'"},
                        "risk": {"type": "string", "enum": list(RISKS)},
                        "params": {"type": "object",
                                   "description": "Constant name -> new value, when the change only "
                                                  "sets constants at the top of train.py"},
                    },
                    "required": ["title", "rationale", "expected_effect", "risk"],
                },
            }
        },
        "required": ["hypotheses"],
    },
}


class ProposalError(ValueError):
    """A proposal's input is malformed; the message says what to correct (sent back as a tool error)."""


def _constant_names(ctx: ResearchContext) -> dict[str, Any] | None:
    text = (ctx.files or {}).get("train.py")
    if not text:
        return None
    try:
        from agents.constant_rewriter import constant_values
        return constant_values(text)
    except Exception:  # a mainline that does not parse: no name check
        return None


def _json_scalarish(v: Any) -> bool:
    if v is None or isinstance(v, (bool, str)):
        return True
    if isinstance(v, (int, float)):
        return math.isfinite(v)
    if isinstance(v, list):
        return all(_json_scalarish(x) for x in v)
    return False


def validate_proposals(data: Any, ctx: ResearchContext, agent: str) -> list[Hypothesis]:
    """Hypotheses from a propose_hypotheses input, or ProposalError naming every problem."""
    if not isinstance(data, Mapping) or not isinstance(data.get("hypotheses"), list):
        raise ProposalError('input must be an object {"hypotheses": [ ... ]} with a list of hypotheses')
    items = data["hypotheses"]
    if not items:
        raise ProposalError("hypotheses is empty: give at least one")
    constants = _constant_names(ctx)
    problems: list[str] = []
    out: list[Hypothesis] = []
    for i, item in enumerate(items):
        where = f"hypotheses[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where} must be an object, got {type(item).__name__}")
            continue
        bad = len(problems)
        title, rationale = item.get("title"), item.get("rationale")
        effect, risk, params = item.get("expected_effect"), item.get("risk"), item.get("params")
        if not isinstance(title, str) or not title.strip():
            problems.append(f"{where}.title must be a non-empty string")
        elif len(title) > MAX_TITLE:
            problems.append(f"{where}.title is {len(title)} characters; keep it under {MAX_TITLE}")
        if not isinstance(rationale, str) or not rationale.strip():
            problems.append(f"{where}.rationale must be a non-empty string")
        if isinstance(effect, (int, float)) and not isinstance(effect, bool) and math.isfinite(effect):
            effect = f"{effect:+g} bpb"
        if not isinstance(effect, str) or not effect.strip():
            problems.append(f"{where}.expected_effect must be a string such as '-0.01 bpb'")
        if not isinstance(risk, str) or risk.strip().lower() not in RISKS:
            problems.append(f"{where}.risk must be one of {', '.join(RISKS)} (got {risk!r})")
        if params is not None:
            if not isinstance(params, Mapping):
                problems.append(f"{where}.params must be an object of constant name -> value")
            else:
                for k, v in params.items():
                    if not _json_scalarish(v):
                        problems.append(f"{where}.params.{k} must be a number, string, boolean or list")
                    elif constants is not None and k not in constants:
                        problems.append(f"{where}.params.{k} is not a constant at the top of train.py "
                                        f"(known: {', '.join(constants)})")
        if len(problems) > bad:
            continue
        out.append(Hypothesis(
            hypothesis_id=uuid.uuid4().hex,
            title=title.strip(),
            rationale=rationale.strip()[:MAX_RATIONALE],
            expected_effect=effect.strip(),
            risk=risk.strip().lower(),
            agent=agent,
            track=ctx.track,
            mainline_commit=ctx.mainline_commit,
            params=dict(params) if params else None,
        ))
    if problems:
        raise ProposalError(
            "propose_hypotheses input rejected, nothing was recorded: " + "; ".join(problems)
            + ". Call propose_hypotheses again with the whole corrected list."
        )
    return out


# ---------------------------------------------------------------------------
# Near-duplicates
# ---------------------------------------------------------------------------

# Constant settings spelled out in a title: "NAME 0.5 -> 0.8", "NAME: 8 → 4",
# "NAME from 0.5 to 0.8", and direct sets "NAME = 0.8", "NAME to 0.8".
_NAME = r"\b([A-Z][A-Z0-9_]{2,})\b"
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:\s*\*\*\s*\d+)?"
_ARROW = r"(?:->|→|\bto\b)"
_TITLE_CHANGE = re.compile(_NAME + r"\s*(?:[:=]\s*)?(?:from\s+)?" + _NUM + r"\s*" + _ARROW + r"\s*(" + _NUM + ")")
_TITLE_SET = re.compile(_NAME + r"\s*(?:[:=]|\bto\b)\s*(" + _NUM + r")(?!\s*" + _ARROW + ")")


def _number(text: str) -> int | float:
    if "**" in text:
        base, exp = text.split("**")
        return int(base) ** int(exp)
    return int(text) if re.fullmatch(r"[-+]?\d+", text.strip()) else float(text)


def title_params(title: str) -> dict[str, Any]:
    """Constant settings a title spells out ('DEPTH 8 -> 4, MATRIX_LR = 0.06'), else {}."""
    out: dict[str, Any] = {}
    for pattern in (_TITLE_CHANGE, _TITLE_SET):
        for name, value in pattern.findall(title or ""):
            if name in out:
                continue
            try:
                out[name] = _number(value)
            except (ValueError, OverflowError):
                continue
    return out


def dedup_keys(h: Hypothesis | Mapping[str, Any]) -> set[str]:
    """The identities of a hypothesis or history entry: its key (params, else normalized title)
    and, when its title spells out constant settings, the params key of those."""
    keys = {hypothesis_key(h)}
    title = h.title if isinstance(h, Hypothesis) else h.get("title")
    tp = title_params(title or "")
    if tp:
        keys.add(params_key(tp))
    return keys


def refuse_duplicates(hyps: list[Hypothesis], ctx: ResearchContext,
                      taken: set[str] | None = None) -> tuple[list[Hypothesis], list[tuple[Hypothesis, str]]]:
    """(kept, refused): hypotheses whose identity matches one already in the journal for the
    same mainline (judged or pending), in `taken`, or earlier in this batch are refused.
    Entries of other mainlines do not count: after the mainline moves, losers may return."""
    seen: dict[str, str] = {}
    for entry in ctx.history or []:
        if entry.get("mainline_commit") == ctx.mainline_commit:
            verdict = entry.get("verdict") or "pending"
            for k in dedup_keys(entry):
                seen.setdefault(k, f"already {verdict} on this mainline as {inline(entry.get('title'), 80)!r}")
    for k in taken or ():
        seen.setdefault(k, "already proposed by this agent for this mainline")
    kept, refused = [], []
    for h in hyps:
        keys = dedup_keys(h)
        hit = next((seen[k] for k in keys if k in seen), None)
        if hit:
            refused.append((h, hit))
            continue
        kept.append(h)
        for k in keys:
            seen[k] = f"a duplicate of {h.title!r} in the same batch"
    return kept, refused
