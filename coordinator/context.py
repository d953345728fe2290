"""
What the proposer is shown: a track's mainline files, its program.md, every hypothesis
judged on the track with its verdict (and why it crashed), the noise floor and the lab
notes. Built from the campaign's state alone.

    ctx = research_context(state, track, files, program, again=False)
"""

from __future__ import annotations

from agents.base import ResearchContext

CRASH_LOG_TAIL = 2000      # characters of a crashed trial's log the proposer sees
NOTES_SHOWN = 20           # the latest lab notes the proposer reads
NEAR_MISSES = 5            # closest misses named when the agent is asked again


def research_context(st, track: str, files: dict, program: str, again: bool = False) -> ResearchContext:
    """again: the agent's last answer had nothing new for this mainline; the context says so
    and names the closest misses (the campaign goes on all night)."""
    trusted = st.swarm[track].trusted
    history = [_entry(st, hid, d) for hid, d in st.hyp.items() if d.get("track") == track]
    notes = [str(n.data.get("text", "")) for n in st.notes[-NOTES_SHOWN:]]
    if again:
        near = sorted((e for e in history if e.get("effect_sigma") is not None
                       and e.get("mainline_commit") == trusted), key=lambda e: e["effect_sigma"])[:NEAR_MISSES]
        notes.append("Your last answer proposed nothing new for this mainline, and the campaign goes on all "
                     f"night. {sum(1 for e in history if e.get('mainline_commit') == trusted)} hypotheses were "
                     "judged on it; the closest misses: "
                     + ("; ".join(f"{e.get('title')} ({e['effect_sigma']:+.1f} sigma, {e.get('verdict')})"
                                  for e in near) or "none yet")
                     + ". Propose finer steps around the best values, values rejected on older mainlines, "
                       "pairs of near-misses, or structural code changes.")
    return ResearchContext(track=track, mainline_commit=trusted, program_md=program, files=files,
                           history=history, noise_floor=st.noise(track)[0], notes=notes)


def _entry(st, hid: str, d: dict) -> dict:
    """One hypothesis as the proposer reads it: its last candidate's verdict, or why it failed."""
    entry = {"title": d.get("title"), "params": d.get("params"), "mainline_commit": d.get("mainline_commit"),
             "verdict": None, "effect_bpb": None, "effect_sigma": None, "trials": 0}
    vh = st.hypotheses.get(hid)
    if vh is None or not vh.candidates:
        return entry
    c = st.candidates[vh.candidates[-1]]
    entry["mainline_commit"] = c.base_commit or entry["mainline_commit"]
    if c.invalid and not c.verdict:
        entry["verdict"] = "invalid"
        entry["reason"] = c.invalid if isinstance(c.invalid, str) else None
    elif c.verdict:
        for k in ("verdict", "effect_bpb", "effect_sigma", "trials"):
            entry[k] = c.verdict.get(k)
    crashed = [t for t in st.trials_of(candidate_id=c.candidate_id) if t.status in ("crash", "invalid")]
    if crashed:               # why it crashed: the proposer should not repeat it
        t = crashed[-1]
        entry.update(reason=t.reason, crash_class=t.crash_class, log_tail=(t.log_tail or "")[-CRASH_LOG_TAIL:])
    return entry
