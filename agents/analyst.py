"""
The analyst: every N verdicts it writes a lab note to the journal, which the
proposers read as evidence.

A note says what is load-bearing (ablations that cost a lot), what kept
failing (constants tried again and again without a win, crash classes), which
second-order effects appeared (a change that lost on one mainline and won after
the mainline moved) and what to try next. The statistical summary is computed
from the journal's events, deterministically, with no model at all; given an
Anthropic client, a model writes the note from that summary and the recent
events (fenced: they are data), and the computed summary is the fallback when
the API fails.

Restart-safe: whether a note is due is decided from the journal itself (the
verdicts since this author's last lab_note), not from a counter in memory.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

from agents import prompts, proposals

log = logging.getLogger(__name__)

EVERY_N_VERDICTS = 10     # a note after this many new verdicts
AUTHOR = "analyst"
LOAD_BEARING_SIGMA = 2.0  # an ablation that loses by at least this much is load-bearing
TOP = 5                   # lines per section
ABLATION = re.compile(r"\b(remove[sd]?|removing|without|ablat\w*|disabl\w*|drop\w*|no)\b")  # in a title


@dataclass
class AnalystConfig:
    every: int = EVERY_N_VERDICTS
    author: str = AUTHOR
    direction: str = "minimize"   # of the metric: effects < 0 are wins when minimizing
    track: str | None = None      # only this track's events (None: all)
    use_model: bool = True        # with a client: a model writes the note from the summary

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "AnalystConfig" | None) -> "AnalystConfig":
        if isinstance(d, AnalystConfig):
            return d
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown analyst setting(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**d)
        if not isinstance(cfg.every, int) or cfg.every < 1:
            raise ValueError(f"analyst every must be a positive number of verdicts, got {cfg.every!r}")
        if cfg.direction not in ("minimize", "maximize"):
            raise ValueError(f"analyst direction must be minimize or maximize, got {cfg.direction!r}")
        return cfg


def _as_event(e: Any) -> tuple[str, str, dict]:
    """(type, source, data) of a journal Event, a (position, Event) pair or a plain dict."""
    if isinstance(e, tuple) and len(e) == 2:
        e = e[1]
    if isinstance(e, Mapping):
        return str(e.get("type", "")), str(e.get("source", "")), dict(e.get("data") or {})
    return str(getattr(e, "type", "")), str(getattr(e, "source", "")), dict(getattr(e, "data", None) or {})


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


class Analyst:
    """Writes lab notes from the journal's events.

    config: AnalystConfig fields (dict). journal: where notes go (.emit). client: an
    AnthropicClient for model-written notes (optional). program_md: the standing orders.
    """

    def __init__(self, config: Mapping | AnalystConfig | None = None, journal: Any = None, *,
                 client: Any = None, program_md: str = ""):
        self.config = AnalystConfig.from_dict(config)
        self.journal = journal
        self.client = client
        self.program_md = program_md
        self.usage = getattr(client, "usage", None)

    def drain_usage(self) -> list[dict]:
        return self.usage.drain() if self.usage is not None else []

    # -- when ------------------------------------------------------------------

    def pending_verdicts(self, events: Iterable[Any]) -> int:
        """Verdicts (of the configured track) since this author's last lab note."""
        n = 0
        for e in events:
            typ, _, data = _as_event(e)
            if typ == "lab_note" and data.get("author") == self.config.author:
                n = 0
            elif typ == "verdict" and self._mine(data):
                n += 1
        return n

    def maybe_write(self, events: Iterable[Any]) -> dict | None:
        """Write (and emit) a note when at least `every` verdicts came since the last one."""
        events = list(events)
        if self.pending_verdicts(events) < self.config.every:
            return None
        return self.write(events)

    # -- what ------------------------------------------------------------------

    def write(self, events: Iterable[Any]) -> dict:
        """A note {author, title, text} from the events; emitted as lab_note when a journal is set."""
        events = list(events)
        title, summary = self.summarize(events)
        note = {"author": self.config.author, "title": title, "text": summary}
        if self.client is not None and self.config.use_model:
            try:
                note = self._model_note(summary, events) or note
            except Exception as e:  # AgentError and friends: the computed note still goes out
                log.warning("analyst: the model could not write the note (%s); using the computed summary", e)
                note["text"] = summary + f"\n\n(The model-written note failed: {str(e)[:200]})"
        if self.journal is not None:
            self.journal.emit("lab_note", source=self.config.author, **note)
        return note

    def _mine(self, data: Mapping) -> bool:
        return self.config.track is None or data.get("track") in (None, self.config.track)

    def _better(self, effect: float | None) -> bool:
        if effect is None:
            return False
        return effect < 0 if self.config.direction == "minimize" else effect > 0

    def summarize(self, events: list[Any]) -> tuple[str, str]:
        """(title, text): the deterministic statistical summary of the events."""
        hyps: dict[str, dict] = {}
        verdicts: list[dict] = []
        crash_classes: Counter = Counter()
        crash_reasons: Counter = Counter()
        invalid_reasons: Counter = Counter()
        merges = promotions = reverts = notes = 0
        for e in events:
            typ, _, d = _as_event(e)
            if typ == "hypothesis_proposed" and d.get("hypothesis_id"):
                hyps[d["hypothesis_id"]] = d
            elif typ == "verdict" and self._mine(d):
                verdicts.append(d)
            elif typ == "trial_finished" and self._mine(d) and d.get("status") not in (None, "ok"):
                crash_classes[d.get("crash_class") or d.get("status")] += 1
                if d.get("reason"):
                    crash_reasons[prompts.truncate(prompts.clean(str(d["reason"])).strip(), 120)] += 1
            elif typ == "candidate_invalid" and self._mine(d):
                crash_classes["invalid"] += 1
                if d.get("reason"):
                    invalid_reasons[prompts.truncate(prompts.clean(str(d["reason"])).strip(), 120)] += 1
            elif typ == "merged" and self._mine(d):
                merges += 1
            elif typ == "promoted" and self._mine(d):
                promotions += 1
            elif typ == "reverted" and self._mine(d):
                reverts += 1
            elif typ == "lab_note":
                notes += 1

        rows = []
        for i, v in enumerate(verdicts):
            h = hyps.get(v.get("hypothesis_id"), {})
            title = h.get("title") or v.get("title") or v.get("candidate_id") or "?"
            params = h.get("params") or proposals.title_params(title) or {}
            rows.append({
                "title": title, "params": params, "verdict": v.get("verdict"),
                "sigma": _num(v.get("effect_sigma")), "bpb": _num(v.get("effect_bpb")),
                "trials": v.get("trials"), "mainline": h.get("mainline_commit"), "i": i,
            })

        def line(r: dict) -> str:
            eff = prompts.effect_text({"effect_bpb": r["bpb"], "effect_sigma": r["sigma"]})
            trials = f", {r['trials']} trials" if r.get("trials") else ""
            return f"- {prompts.inline(r['title'], 100)}: {r['verdict']}, {eff}{trials}"

        by_verdict = Counter(r["verdict"] for r in rows)
        n = len(rows)
        track = self.config.track or "all tracks"
        title = (f"Lab note: {n} verdicts on {track} ({by_verdict.get('confirmed', 0)} confirmed, "
                 f"{by_verdict.get('promising', 0)} promising, {by_verdict.get('discard', 0)} discarded, "
                 f"{by_verdict.get('crash', 0) + by_verdict.get('invalid', 0)} crashed/invalid)")
        sign = 1 if self.config.direction == "minimize" else -1
        out = [f"Mainline moves: {merges} merged, {promotions} promoted, {reverts} reverted."]

        # Load-bearing: what helped, and ablations that hurt a lot
        wins = sorted((r for r in rows if r["verdict"] in ("confirmed", "promising") and self._better(r["sigma"])),
                      key=lambda r: sign * r["sigma"])
        ablations = [r for r in rows if r["sigma"] is not None and sign * r["sigma"] >= LOAD_BEARING_SIGMA
                     and ABLATION.search(r["title"].lower())]
        out.append("## Load-bearing")
        if wins:
            out.append("What helped (best first):")
            out += [line(r) for r in wins[:TOP]]
        if ablations:
            out.append(f"Removing these cost at least {LOAD_BEARING_SIGMA:g}σ, so they are load-bearing:")
            out += [line(r) for r in sorted(ablations, key=lambda r: -sign * r["sigma"])[:TOP]]
        if not wins and not ablations:
            out.append("- Nothing has beaten the noise floor yet.")

        # Kept failing: constants tried repeatedly without a win, crash classes
        tries: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            for name in r["params"]:
                tries[name].append(r)
        failing = [(name, rs) for name, rs in tries.items()
                   if len(rs) >= 2 and not any(x["verdict"] in ("confirmed", "promising") for x in rs)]
        out.append("## Kept failing")
        for name, rs in sorted(failing, key=lambda t: -len(t[1]))[:TOP]:
            vals = ", ".join(f"{x['params'].get(name)!r} ({prompts.effect_text({'effect_sigma': x['sigma']})}, "
                             f"{x['verdict']})" for x in rs[-4:])
            out.append(f"- {name}: {len(rs)} tries, no win: {vals}")
        if crash_classes:
            out.append("- Crashes by class: " + ", ".join(f"{k} {v}" for k, v in crash_classes.most_common()))
            common = (crash_reasons + invalid_reasons).most_common(3)
            if common:  # the reasons come from run logs: data, fenced
                out.append("  Most common reasons:\n" + prompts.fence(
                    "\n".join(f"{k}x: {prompts.inline(reason, 120)}" for reason, k in common), "run-log"))
        if not failing and not crash_classes:
            out.append("- No repeated failures.")

        # Second-order effects: lost on one mainline, won on a later one
        out.append("## Second-order effects")
        second = []
        for name, rs in tries.items():
            lost = [x for x in rs if x["verdict"] in ("discard", "crash")]
            won = [x for x in rs if x["verdict"] in ("confirmed", "promising")]
            for w in won:
                earlier = [x for x in lost if x["mainline"] and w["mainline"] and x["mainline"] != w["mainline"]
                           and x["i"] < w["i"]]
                if earlier:
                    x = earlier[-1]
                    second.append(f"- {name}: {x['params'].get(name)!r} lost on mainline {str(x['mainline'])[:8]} "
                                  f"({prompts.effect_text({'effect_sigma': x['sigma']})}), "
                                  f"{w['params'].get(name)!r} won on {str(w['mainline'])[:8]} "
                                  f"({prompts.effect_text({'effect_sigma': w['sigma']})}) after the mainline "
                                  f"moved: its optimum depends on the other changes")
                    break
        out += second[:TOP] or ["- None seen yet."]

        # Try next
        out.append("## Try next")
        nexts = []
        for r in rows:
            if r["verdict"] == "promising":
                nexts.append(f"- More seeds for {prompts.inline(r['title'], 100)} (promising, "
                             f"{prompts.effect_text({'effect_sigma': r['sigma']})}).")
        for r in wins[:3]:
            if r["params"] and r["verdict"] == "confirmed":
                names = ", ".join(r["params"])
                nexts.append(f"- Push further along {names} (confirmed win), and retest earlier losers of "
                             f"other knobs on the new mainline.")
        if merges and failing:
            nexts.append("- The mainline moved: near-misses of " + ", ".join(n for n, _ in failing[:3])
                         + " may win now.")
        if not nexts:
            nexts.append("- Keep exploring: long plateaus precede breakthroughs; try the structural changes "
                         "program.md lists.")
        out += nexts[:TOP]
        return title, "\n".join(out)

    def _model_note(self, summary: str, events: list[Any]) -> dict | None:
        recent = []
        for e in events[-200:]:
            typ, _, d = _as_event(e)
            if typ == "hypothesis_proposed":
                recent.append(f"proposed {d.get('hypothesis_id', '')[:8]}: {d.get('title')}")
            elif typ == "verdict":
                recent.append(f"verdict {d.get('hypothesis_id', '')[:8]}: {d.get('verdict')} "
                              f"{prompts.effect_text(d)}")
            elif typ == "trial_finished" and d.get("status") not in (None, "ok"):
                recent.append(f"crash ({d.get('crash_class')}): {prompts.truncate(str(d.get('reason') or ''), 300)}")
        system = prompts.system_blocks(prompts.ANALYST_ROLE, self.program_md)
        resp = self.client.create("analyst", system=system,
                                  messages=[{"role": "user", "content": prompts.analyst_request(summary, "\n".join(recent))}])
        text = "\n".join(getattr(b, "text", "") or "" for b in resp.content
                         if getattr(b, "type", None) == "text").strip()
        if not text:
            return None
        first, _, rest = text.partition("\n")
        return {"author": self.config.author, "title": first.strip("# ").strip()[:200] or "Lab note",
                "text": rest.strip() + "\n\n---\nComputed summary:\n" + summary}
