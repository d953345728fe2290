"""The markdown lab journal: what a campaign did and why, for a reader the next morning.

`swarm journal --format markdown` and the dashboard's download print it. Like every
export it is a pure function of the replayed events, with times in UTC, so the same
journal gives the same bytes on any machine (tests compare it with a golden file).
"""

from .events import dumps
from .export import (ACCELERATOR_HEADER, _isnum, accelerator_rows, effect_text, hypotheses_in_order, num,
                     one_line, short, track_row, when)
from .views import CampaignView, mean

# Log lines of a crashed trial quoted in the lab journal.
LOG_TAIL_LINES = 6
# Commits shown per track in the markdown leaderboard.
LEADERBOARD_ROWS = 5


def _md(x) -> str:
    """Text safe inside a markdown table cell."""
    return one_line(x).replace("|", "\\|") if x not in (None, "") else "-"


def _kv(d) -> str:
    if not isinstance(d, dict):
        return one_line(d)
    return " · ".join(f"{k} {one_line(v) if not isinstance(v, (dict, list)) else dumps(v)}"
                      for k, v in d.items())


def markdown(state: CampaignView) -> str:
    out = []
    w = out.append
    w(f"# Lab journal: campaign `{state.campaign}`\n")
    target = state.target.get("name") if isinstance(state.target, dict) else None
    line = f"{when(state.first_time)} to {when(state.last_time)} UTC · {state.count} events"
    if target:
        line += f" · target {target} ({state.direction} val_bpb)"
    line += f" · stopped: {state.stop_reason}" if state.stopped else " · still running"
    w(line + "\n")
    for note in state.trust_notes():
        w(f"> **Note:** {note}.\n")

    names = state.track_names()
    w("## Tracks\n")
    w("| track | mainline | val_bpb | held-out test_bpb | noise floor σ (dof) | trials | workers |")
    w("|---|---|---|---|---|---|---|")
    for name in names:
        head, level, test, sigma, dof, n = track_row(state, name)
        ws = ", ".join(x.worker + (" (lost)" if x.state == "lost" else "")
                       for x in sorted(state.workers.values(), key=lambda x: x.worker) if x.track == name)
        w(f"| `{name}` | `{short(head)}` | {num(level)} | {num(test)} | "
          f"{num(sigma) + f' ({dof})' if sigma is not None else 'not measured yet'} | {n} | {_md(ws)} |")
    w("\nThe noise floor is the pooled standard deviation of repeated trials of the same commit "
      "on a track; effects are compared with it.\n")

    rows = accelerator_rows(state)
    if rows:
        w("## Accelerator time\n")
        w("| " + " | ".join(ACCELERATOR_HEADER) + " |")
        w("|---" * len(ACCELERATOR_HEADER) + "|")
        for row in rows:
            w("| " + " | ".join(row) + " |")
        w("\nTraining share: the part of the workers' trial wall time spent in the training process after "
          "its start-up. The pre-flight runs beside the first training step.\n")

    w("## Mainline progress\n")
    for name in names:
        tr = state.tracks.get(name)
        if not tr or not tr.history:
            continue
        w(f"### `{name}`\n")
        for s in tr.history:
            w("- " + _mainline_step(state, name, s))
        w("")

    w("## Leaderboard\n")
    w(f"Commits by mean val_bpb over their ok validation trials ({state.direction}; at most "
      f"{LEADERBOARD_ROWS} per track; one trial is a weak figure: mind the noise floor).\n")
    for name in names:
        board = state.leaderboard(name)[:LEADERBOARD_ROWS]
        if not board:
            continue
        w(f"### `{name}`\n")
        w("| # | commit | mean val_bpb | sd | trials | what |")
        w("|---|---|---|---|---|---|")
        for i, r in enumerate(board, 1):
            what = _md(r["label"]) + (" **(mainline)**" if r["mainline"] else "")
            w(f"| {i} | `{short(r['commit'])}` | {num(r['mean'])} | {num(r['std'])} | {r['n']} | {what} |")
        w("")

    w("## Journal\n")
    entries = [(h.time or 0.0, 0, i, h) for i, h in enumerate(hypotheses_in_order(state))]
    entries += [(ev.time, 1, i, ev) for i, ev in enumerate(state.notes)]
    entries += [(wk.last_seen or 0.0, 2, i, wk) for i, wk in enumerate(state.workers.values())
                if wk.state == "lost"]
    if state.started:
        entries.append((state.started, -1, 0, "started"))
    if state.stopped:
        entries.append((state.stopped, 3, 0, "stopped"))
    for _t, kind, _i, item in sorted(entries, key=lambda e: e[:3]):
        if kind == 0:
            _hypothesis_entry(state, item, w)
        elif kind == 1:
            d = item.data
            w(f"### {when(item.time)} · Lab note: {one_line(d.get('title') or 'untitled')} "
              f"({one_line(d.get('author') or item.source)})\n")
            w("\n".join("> " + ln for ln in str(d.get("text") or "").splitlines()) + "\n")
        elif kind == 2:
            w(f"### {when(item.last_seen)} · Worker lost: {item.worker}\n")
            w(f"{one_line(item.lost_reason or 'no reason given')}\n")
        elif item == "started":
            w(f"### {when(state.started)} · Campaign started\n")
            w((_kv(state.config) or "no config recorded") + "\n")
        else:
            w(f"### {when(state.stopped)} · Campaign stopped\n")
            w(f"{one_line(state.stop_reason or 'no reason given')}\n")

    w("## Workers\n")
    w("| worker | track | hardware | state | trials | crashes | joined | last seen |")
    w("|---|---|---|---|---|---|---|---|")
    for x in sorted(state.workers.values(), key=lambda x: x.worker):
        hw = _kv(x.hardware) if x.hardware else x.hardware_class
        st = x.state + (f": {x.lost_reason}" if x.lost_reason else "") + (f" ({x.trial_id})" if x.trial_id else "")
        w(f"| {x.worker} | `{x.track or '-'}` | {_md(hw)} | {_md(st)} | {x.trials} | {x.crashes} | "
          f"{when(x.joined)} | {when(x.last_seen)} |")
    w("")

    w("## Agent usage\n")
    if state.usage:
        w("| agent | model | calls | input tokens | output tokens | cache read | cache write | cost (USD) "
          "| mean latency (s) |")
        w("|---|---|---|---|---|---|---|---|---|")
        total = [0, 0, 0, 0, 0, 0.0]
        for (agent, model), u in sorted(state.usage.items()):
            w(f"| {_md(agent)} | {_md(model)} | {u.calls} | {u.input_tokens:,} | {u.output_tokens:,} | "
              f"{u.cache_read_tokens:,} | {u.cache_write_tokens:,} | {u.cost_usd:.4f} | {u.latency_s / u.calls:.1f} |")
            for i, x in enumerate((u.calls, u.input_tokens, u.output_tokens, u.cache_read_tokens,
                                   u.cache_write_tokens, u.cost_usd)):
                total[i] += x
        w(f"| **total** | | {total[0]} | {total[1]:,} | {total[2]:,} | {total[3]:,} | {total[4]:,} | "
          f"{total[5]:.4f} | |")
    else:
        w("No agent usage recorded.")
    w("")

    if state.unknown:
        w("## Events this reader did not understand\n")
        w("Kept in the journal as written; a newer version of this tool may show them.\n")
        for ev, why in state.unknown:
            w(f"- {when(ev.time)} `{ev.type}` v{ev.v} from {one_line(ev.source) or '?'}: {why}: "
              f"`{one_line(dumps(ev.data), 200)}`")
        w("")
    return "\n".join(out)


def _mainline_step(state: CampaignView, track, s) -> str:
    t = when(s.time)
    c = state.candidates.get(s.candidate_id or "")
    h = state.hypotheses.get(c.hypothesis_id or "") if c else None
    what = f" ({h.hypothesis_id}: {one_line(h.title)})" if h else ""
    if s.action == "baseline":
        vals = state.values_by_commit(track).get(s.commit, [])
        return (f"{t} **baseline** `{short(s.commit)}`: val_bpb {num(mean(vals))} "
                f"(mean of {len(vals)} trial{'s' if len(vals) != 1 else ''})")
    if s.action == "merged":
        return f"{t} **merged** `{short(s.commit)}`{what} onto `{short(s.previous)}`"
    if s.action == "retested":
        return (f"{t} **re-tested** `{short(s.commit)}`: {s.verdict or '?'}, effect "
                f"{num(s.effect_bpb, signed=True)} bpb, p = {num(s.p_value)}")
    if s.action == "promoted":
        line = f"{t} **promoted** `{short(s.commit)}`{what}: val_bpb {num(s.val_bpb)}"
        if _isnum(s.effect_bpb):
            line += f", effect {num(s.effect_bpb, signed=True)} bpb"
        if _isnum(s.test_bpb):
            line += f", held-out test_bpb {num(s.test_bpb)}"
        return line
    if s.action == "reverted":
        return (f"{t} **reverted** `{short(s.commit)}`{what}, back to `{short(s.previous)}`: "
                f"{one_line(s.reason or 'no reason given')}")
    if s.action == "heldout":
        return f"{t} **held-out** `{short(s.commit)}`: test_bpb {num(s.test_bpb)}"
    return f"{t} {s.action} `{short(s.commit)}`"


def _hypothesis_entry(state: CampaignView, h, w) -> None:
    w(f"### {when(h.time)} · {h.hypothesis_id}: {one_line(h.title) or 'untitled'}\n")
    w(f"*{one_line(h.agent) or 'unknown agent'} on `{h.track or '-'}`, mainline `{short(h.mainline_commit)}`*\n")
    if h.rationale:
        w(f"**Rationale.** {one_line(h.rationale)}\n")
    w(f"**Expected effect:** {one_line(h.expected_effect) or '-'} · **risk:** {one_line(h.risk) or '-'}\n")
    if not h.candidates:
        w("Not implemented yet.\n")
    for cid in h.candidates:
        c = state.candidates[cid]
        if c.invalid:
            w(f"**Invalid candidate** {cid}: {one_line(c.invalid)}\n")
            continue
        w(f"Candidate {cid}, commit `{short(c.commit)}` on `{short(c.base_commit)}`:\n")
        trials = state.trials_of(candidate_id=cid)
        if trials:
            w("| trial | kind | seed | worker | status | val_bpb |")
            w("|---|---|---|---|---|---|")
            for t in trials:
                st = t.status
                if t.status == "running" and t.progress and _isnum(t.progress.get("progress")):
                    st += f" ({t.progress['progress']:.0%})"
                if t.crash_class:
                    st += f" ({t.crash_class})"
                w(f"| {t.trial_id} | {t.kind or '-'} | {t.seed if t.seed is not None else '-'} | "
                  f"{t.worker or '-'} | {_md(st)} | {num(t.value)} |")
            w("")
            for t in trials:
                if t.status == "crash":
                    w(f"{t.trial_id} crashed: {one_line(t.reason or t.crash_class or 'no reason')}. Log tail:\n")
                    tail = str(t.log_tail or "").splitlines()[-LOG_TAIL_LINES:]
                    w("```\n" + "\n".join(tail) + "\n```\n")
        else:
            w("No trials yet.\n")
        for v in c.verdicts:
            line = f"**Verdict: {v.get('verdict')}**"
            if _isnum(v.get("effect_bpb")):
                line += f": effect {effect_text(v, ' bpb')}"
            if _isnum(v.get("p_value")):
                line += f", p = {num(v['p_value'])}"
            elif _isnum(v.get("confidence")):
                line += f", confidence {num(v['confidence'])}"
            if v.get("test") not in (None, "", "none"):
                line += f" ({v['test']})"
            line += f", {v.get('trials', '?')} trial{'s' if v.get('trials') != 1 else ''}"
            if _isnum(v.get("candidate_mean")) and _isnum(v.get("mainline_mean")):
                line += f"; candidate {num(v['candidate_mean'])} vs mainline {num(v['mainline_mean'])}"
            w(line + ".\n")
        if c.merged_commit:
            fate = {"merged": "awaiting its re-test", "promoted": "promoted",
                    "reverted": "reverted after its re-test"}.get(c.outcome or "", c.outcome)
            tr = state.tracks.get(c.track or "")
            test = [s.test_bpb for s in (tr.history if tr else [])
                    if s.action == "promoted" and s.commit == c.merged_commit and _isnum(s.test_bpb)]
            if test:
                fate += f" (held-out test_bpb {num(test[-1])})"
            w(f"**Mainline:** merged as `{short(c.merged_commit)}`, {fate}.\n")
