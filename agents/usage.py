"""
Token, cost and latency accounting of language-model calls.

Every API call becomes one plain dict with the fields of an `agent_usage`
journal event (CONTRACTS.md): agent, model, purpose, input_tokens,
output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_s.
A UsageMeter collects them; the caller (coordinator, agent actor) drains them
and emits them to the journal, or the meter emits them itself when it was
given a journal (anything with .emit(type, source, **data)).

Costs come from a small price table by model id (longest matching prefix,
then the model family). They are estimates for the journal's cost column,
not a bill: check https://platform.claude.com/docs/en/about-claude/pricing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

# USD per million tokens: (input, output, 5-minute cache write, cache read).
# As published on Anthropic's pricing page, 2026-10. Longest prefix wins, so
# "claude-opus-4-5-20251101" is priced as "claude-opus-4-5".
PRICES: dict[str, tuple[float, float, float, float]] = {
    "claude-fable-5-1": (10.0, 50.0, 12.5, 0.25),
    "claude-mythos-5-1": (10.0, 50.0, 12.5, 0.25),
    "claude-fable-5": (10.0, 50.0, 12.5, 1.0),
    "claude-mythos-5": (10.0, 50.0, 12.5, 1.0),
    "claude-opus-5-5": (4.0, 20.0, 5.0, 0.20),
    "claude-opus-5": (5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-8": (5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-7": (5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-6": (5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-5": (5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-1": (15.0, 75.0, 18.75, 1.50),
    "claude-opus-4": (15.0, 75.0, 18.75, 1.50),
    "claude-sonnet-5-5": (2.0, 10.0, 2.5, 0.10),
    "claude-sonnet-5": (2.0, 10.0, 2.5, 0.20),
    "claude-sonnet-4": (3.0, 15.0, 3.75, 0.30),
    "claude-haiku-5-5": (0.10, 0.50, 0.125, 0.01),  # prompts up to 100k tokens
    "claude-haiku-4-5": (1.0, 5.0, 1.25, 0.10),
    "claude-3-5-haiku": (0.80, 4.0, 1.0, 0.08),
}

# Fallback by family word in the model id, for ids the table does not know
# (new snapshots, proxies' names); None = unknown, cost_usd stays None.
FAMILY_PRICES: dict[str, tuple[float, float, float, float]] = {
    "fable": (10.0, 50.0, 12.5, 1.0),
    "mythos": (10.0, 50.0, 12.5, 1.0),
    "opus": (5.0, 25.0, 6.25, 0.50),
    "sonnet": (3.0, 15.0, 3.75, 0.30),
    "haiku": (1.0, 5.0, 1.25, 0.10),
}

# The data fields of an agent_usage event, in order.
USAGE_FIELDS = ("agent", "model", "purpose", "input_tokens", "output_tokens",
                "cache_read_tokens", "cache_write_tokens", "cost_usd", "latency_s")


def prices_for(model: str) -> tuple[float, float, float, float] | None:
    """(input, output, cache write, cache read) USD per MTok for a model id, or None."""
    m = (model or "").lower()
    best = max((p for p in PRICES if m.startswith(p)), key=len, default=None)
    if best is not None:
        return PRICES[best]
    for family, prices in FAMILY_PRICES.items():
        if family in m:
            return prices
    return None


def cost_usd(model: str, input_tokens: int, output_tokens: int,
             cache_read_tokens: int = 0, cache_write_tokens: int = 0) -> float | None:
    """Estimated USD cost of one call; None when the model's prices are unknown."""
    p = prices_for(model)
    if p is None:
        return None
    inp, out, write, read = p
    total = (input_tokens * inp + output_tokens * out
             + cache_write_tokens * write + cache_read_tokens * read) / 1e6
    return round(total, 6)


def _field(usage: Any, name: str) -> int:
    """An int usage field from the SDK's Usage object or a plain dict (None -> 0)."""
    v = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
    return int(v or 0)


def usage_record(agent: str, model: str, purpose: str, usage: Any, latency_s: float,
                 **extra: Any) -> dict:
    """One agent_usage dict from an API response's `usage` (SDK object or dict)."""
    inp = _field(usage, "input_tokens")
    out = _field(usage, "output_tokens")
    read = _field(usage, "cache_read_input_tokens")
    write = _field(usage, "cache_creation_input_tokens")
    rec = {
        "agent": agent,
        "model": model,
        "purpose": purpose,
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_tokens": read,
        "cache_write_tokens": write,
        "cost_usd": cost_usd(model, inp, out, read, write),
        "latency_s": round(float(latency_s), 3),
    }
    rec.update(extra)
    return rec


class UsageMeter:
    """Collects usage records; emits each to `journal` at once when one is given.

    A journal failure is logged, not raised: losing one accounting line must
    not lose the hypothesis the call produced. drain() hands the records to a
    caller that emits them itself (an agent actor returning them to the
    coordinator).
    """

    def __init__(self, journal: Any = None):
        self.journal = journal
        self.records: list[dict] = []
        self._lock = threading.Lock()

    def add(self, record: dict) -> dict:
        with self._lock:
            self.records.append(record)
        if self.journal is not None:
            try:
                self.journal.emit("agent_usage", source=record.get("agent") or "agent", **record)
            except Exception as e:  # accounting must never break research
                log.warning("could not write agent_usage to the journal: %s", e)
        return record

    def drain(self) -> list[dict]:
        """The records collected since the last drain (and forget them)."""
        with self._lock:
            out, self.records = self.records, []
        return out

    def totals(self) -> dict:
        """Sums over the records not yet drained (tokens, cost, latency, calls)."""
        with self._lock:
            recs = list(self.records)
        costs = [r["cost_usd"] for r in recs if r.get("cost_usd") is not None]
        return {
            "calls": len(recs),
            "input_tokens": sum(r["input_tokens"] for r in recs),
            "output_tokens": sum(r["output_tokens"] for r in recs),
            "cache_read_tokens": sum(r["cache_read_tokens"] for r in recs),
            "cache_write_tokens": sum(r["cache_write_tokens"] for r in recs),
            "cost_usd": round(sum(costs), 6) if costs else None,
            "latency_s": round(sum(r["latency_s"] for r in recs), 3),
        }

    def __getstate__(self):  # picklable for Ray: the lock is recreated
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
