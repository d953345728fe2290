"""Exports of a replayed campaign: a terminal table, a markdown lab journal, a
results.tsv (upstream columns first) and JSON lines.

Every export is a pure function of the events, with times in UTC, so the same
journal gives the same bytes on any machine (the tests compare them exactly).
"""

import datetime
import io
import math

from .events import SCHEMA_VERSION, dumps
from .views import CampaignView, mean

# Upstream autoresearch results.tsv columns; ours follow them.
TSV_UPSTREAM = ("commit", "val_bpb", "memory_gb", "status", "description")
TSV_EXTRA = ("time", "trial_id", "track", "kind", "seed", "worker", "hypothesis_id", "candidate_id",
             "verdict", "effect_bpb", "effect_sigma", "p_value", "crash_class")
# Log lines of a crashed trial quoted in the lab journal.
LOG_TAIL_LINES = 6
# Commits shown per track in the markdown leaderboard.
LEADERBOARD_ROWS = 5
# Width of the plain-text table (goldens, pipes); a terminal uses its own width.
TABLE_WIDTH = 150


# -- small formatters ------------------------------------------------------------
def when(t, fmt="%Y-%m-%d %H:%M") -> str:
    if not isinstance(t, (int, float)) or not t:
        return "?"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(fmt)


def short(commit) -> str:
    return str(commit)[:7] if commit else "-"


def _isnum(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x, digits=4, signed=False) -> str:
    if not _isnum(x):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def effect_text(v: dict, unit: str = "") -> str:
    """'-0.0130 ± 0.0022 (-5.8σ)' from a verdict's data; '-' when it has no effect."""
    if not v or not _isnum(v.get("effect_bpb")):
        return "-"
    s = num(v["effect_bpb"], signed=True) + unit
    if _isnum(v.get("noise_floor")):
        s += f" ± {num(v['noise_floor'])}"
    if _isnum(v.get("effect_sigma")):
        s += f" ({v['effect_sigma']:+.1f}σ)"
    return s


def one_line(x, limit=None) -> str:
    s = " ".join(str(x).split()) if x is not None else ""
    return s if limit is None or len(s) <= limit else s[:limit - 1] + "…"


def _md(x) -> str:
    """Text safe inside a markdown table cell."""
    return one_line(x).replace("|", "\\|") if x not in (None, "") else "-"


def _kv(d) -> str:
    if not isinstance(d, dict):
        return one_line(d)
    return " · ".join(f"{k} {one_line(v) if not isinstance(v, (dict, list)) else dumps(v)}"
                      for k, v in d.items())


def candidate_summary(state: CampaignView, cid):
    """(finished trials, running trials, mean val_bpb) of a candidate's own trials."""
    trials = state.trials_of(candidate_id=cid, kinds=("candidate",))
    done = [t for t in trials if t.status != "running"]
    vals = [t.value for t in done if t.value is not None]
    return len(done), len(trials) - len(done), mean(vals)


def hypotheses_in_order(state: CampaignView) -> list:
    return sorted(state.hypotheses.values(), key=lambda h: h.time or 0.0)


def track_row(state: CampaignView, name):
    """(head, head val_bpb, held-out test_bpb, sigma, dof, trials) of one track."""
    tr = state.tracks.get(name)
    head = tr.head if tr else None
    curve = state.mainline_curve(name)
    level = next((v for _t, v, c in reversed(curve) if c == head), None)
    test = None
    for step in (tr.history if tr else []):
        if step.action == "heldout" and step.commit == head:
            test = step.test_bpb
    sigma, dof = state.noise_floor(name)
    n = len([t for t in state.trials.values() if t.track == name])
    return head, level, test, sigma, dof, n


# -- accelerator time per worker (worker/accounting.py's split of each trial's timings) ----
ACCELERATOR_PARTS = ("startup", "training", "evaluate", "preflight", "smoke", "idle")


def accelerator_time(state: CampaignView) -> dict:
    """worker -> {trials, total, startup, training, evaluate, preflight, smoke, idle, training_share}
    summed over its finished trials that report the split (older journals: none, so no entry)."""
    out = {}
    for t in state.trials.values():
        tm = t.timings or {}
        if not t.worker or t.finished is None or not _isnum(tm.get("training")) or not _isnum(tm.get("total")):
            continue
        w = out.setdefault(t.worker, {"trials": 0, "total": 0.0, **{k: 0.0 for k in ACCELERATOR_PARTS}})
        w["trials"] += 1
        for k in ("total", *ACCELERATOR_PARTS):
            w[k] += float(tm.get(k) or 0.0) if _isnum(tm.get(k)) else 0.0
    for w in out.values():
        w["training_share"] = w["training"] / w["total"] if w["total"] > 0 else 0.0
    return out


def accelerator_rows(state: CampaignView) -> list:
    """(worker, trials, training %, seconds per part...) as display strings, one row per worker."""
    rows = []
    for name, w in sorted(accelerator_time(state).items()):
        rows.append((name, str(w["trials"]), f"{100 * w['training_share']:.1f}%", f"{w['total']:.0f}",
                     *(f"{w[k]:.0f}" for k in ACCELERATOR_PARTS)))
    return rows


ACCELERATOR_HEADER = ("worker", "trials", "training share", "wall s", "start-up s", "training s", "evaluation s",
                      "pre-flight s (overlaps)", "smoke s", "idle s")


# -- table (rich) ----------------------------------------------------------------
def render_table(state: CampaignView, console) -> None:
    """Print the campaign as rich tables on a rich Console."""
    from rich.table import Table

    console.print(f"[bold]campaign {state.campaign}[/bold]  {when(state.first_time)} .. "
                  f"{when(state.last_time)} UTC  {state.count} events"
                  + (f"  stopped: {state.stop_reason}" if state.stopped else ""))
    tracks = Table(title="tracks", title_justify="left")
    for col in ("track", "mainline", "val_bpb", "held-out", "noise σ (dof)", "trials"):
        tracks.add_column(col, justify="right" if col in ("val_bpb", "held-out", "trials") else "left")
    for name in state.track_names():
        head, level, test, sigma, dof, n = track_row(state, name)
        tracks.add_row(name, short(head), num(level), num(test),
                       f"{num(sigma)} ({dof})" if sigma is not None else "-", str(n))
    console.print(tracks)
    for note in state.trust_notes():
        console.print(f"[yellow]note:[/yellow] {note}")

    table = Table(title="hypotheses", title_justify="left")
    for col in ("hypothesis", "track", "trials", "mean val_bpb", "effect ± noise", "verdict", "commit"):
        table.add_column(col, justify="right" if col in ("trials", "mean val_bpb") else "left")
    for h in hypotheses_in_order(state):
        c = state.candidates[h.candidates[-1]] if h.candidates else None
        done, running, m = candidate_summary(state, c.candidate_id) if c else (0, 0, None)
        trials = str(done) + (f" +{running} running" if running else "")
        table.add_row(f"{h.hypothesis_id}: {h.title}", h.track or (c and c.track) or "-", trials,
                      num(m), effect_text(c.verdict if c else None), state.hypothesis_status(h),
                      short(c.commit if c else None))
    console.print(table)

    workers = Table(title="workers", title_justify="left")
    for col in ("worker", "track", "state", "trial", "trials", "crashes", "last seen (UTC)"):
        workers.add_column(col, justify="right" if col in ("trials", "crashes") else "left")
    for w in sorted(state.workers.values(), key=lambda w: w.worker):
        workers.add_row(w.worker, w.track or "-", w.state + (f" ({w.lost_reason})" if w.lost_reason else ""),
                        w.trial_id or "-", str(w.trials), str(w.crashes), when(w.last_seen))
    console.print(workers)
    rows = accelerator_rows(state)
    if rows:
        acc = Table(title="accelerator time (trials' wall seconds)", title_justify="left")
        for col in ACCELERATOR_HEADER:
            acc.add_column(col, justify="left" if col == "worker" else "right")
        for row in rows:
            acc.add_row(*row)
        console.print(acc)
    if state.unknown:
        console.print(f"{len(state.unknown)} event(s) not understood by this reader: "
                      + ", ".join(sorted({f'{e.type} v{e.v}' for e, _ in state.unknown}))
                      + "  (see --format markdown)")


def table_text(state: CampaignView, width: int = TABLE_WIDTH) -> str:
    """The table as plain text of a fixed width (for pipes and golden files)."""
    from rich.console import Console
    buf = io.StringIO()
    render_table(state, Console(file=buf, width=width, color_system=None, force_terminal=False,
                                legacy_windows=False, soft_wrap=False))
    return buf.getvalue()


# -- tsv ---------------------------------------------------------------------------
def trial_status(state: CampaignView, t) -> str:
    """Upstream words where they fit: keep / discard / crash (else pending, heldout, ...)."""
    if t.status == "crash":
        return "crash"
    if t.status != "ok":
        return t.status
    if t.kind == "baseline":
        return "keep"
    if t.kind == "heldout":
        return "heldout"
    c = state.candidates.get(t.candidate_id or "")
    v = (c.verdict or {}).get("verdict") if c else None
    if c and c.outcome == "promoted":
        return "keep"
    if c and c.outcome == "reverted":
        return "discard"
    if v in ("discard", "crash", "invalid"):
        return "discard" if v == "discard" else v
    return "pending"


def trial_description(state: CampaignView, t) -> str:
    """What a trial ran: 'baseline', the held-out test of a commit, a hypothesis (or its re-test)."""
    if t.kind == "baseline":
        return "baseline"
    if t.kind == "heldout":
        return f"held-out test of {short(t.commit)}"
    c = state.candidates.get(t.candidate_id or "")
    h = state.hypotheses.get(c.hypothesis_id or "") if c else None
    title = (h.title if h and h.title else None) or (c.candidate_id if c else state.label(t.commit))
    return f"re-test: {title}" if t.kind == "retest" else str(title or short(t.commit))


def tsv(state: CampaignView) -> str:
    """One row per finished trial in finishing order: upstream columns, then ours."""
    done = [t for t in state.trials.values() if t.status != "running"]
    rows = [tsv_header()] + [tsv_row(state, t) for t in sorted(done, key=lambda t: t.finished or 0.0)]
    return "\n".join(rows) + "\n"


def tsv_header() -> str:
    return "\t".join(TSV_UPSTREAM + TSV_EXTRA)


def tsv_row(state: CampaignView, t) -> str:
    c = state.candidates.get(t.candidate_id or "")
    v = (c.verdict or {}) if c and t.kind == "candidate" else {}
    mem = (t.metrics or {}).get("peak_vram_mb")
    cells = [short(t.commit), num(t.value if t.value is not None else 0.0, 6),
             f"{mem / 1024:.1f}" if _isnum(mem) else "0.0", trial_status(state, t),
             trial_description(state, t),
             when(t.finished, "%Y-%m-%dT%H:%M:%SZ"), t.trial_id, t.track, t.kind, t.seed, t.worker,
             c.hypothesis_id if c else None, t.candidate_id, v.get("verdict"),
             num(v.get("effect_bpb"), 6, signed=True) if v else None,
             num(v.get("effect_sigma"), 2, signed=True) if v else None,
             num(v.get("p_value"), 4) if v else None, t.crash_class]
    return "\t".join("" if x is None or x == "-" else one_line(x) for x in cells)


# -- json lines --------------------------------------------------------------------
def json_lines(events) -> str:
    """One event per line, as stored (unknown ones too): what `swarm journal --format json` prints."""
    return "".join(ev.to_json() + "\n" for _pos, ev in events)


# -- markdown lab journal ------------------------------------------------------------
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


# -- one line per event (--follow) ------------------------------------------------------
# Data fields worth a glance, in this order; the rest stays in --format json.
LINE_FIELDS = ("trial_id", "hypothesis_id", "candidate_id", "worker", "title", "kind", "seed", "status",
               "crash_class", "val_bpb", "verdict", "effect_bpb", "p_value", "commit", "restored",
               "test_bpb", "progress", "loss", "reason", "agent", "cost_usd")


def event_line(ev) -> str:
    """A readable one-line summary of any event (unknown ones are marked, never refused)."""
    d = ev.data
    parts = []
    for k in LINE_FIELDS:
        x = d.get(k)
        if x is None or x == "":
            continue
        if k in ("commit", "restored"):
            x = short(x)
        elif k == "progress" and _isnum(x):
            x = f"{x:.0%}"
        elif _isnum(x) and isinstance(x, float):
            x = f"{x:.4g}"
        parts.append(f"{k}={one_line(x, 60)}")
    tag = ""
    if not ev.known:
        tag = "[unknown type] " if ev.v <= SCHEMA_VERSION else f"[schema v{ev.v}] "
    if not parts:
        parts.append(one_line(dumps(d), 120))
    return f"{when(ev.time, '%Y-%m-%d %H:%M:%S')}  {one_line(ev.source) or '?'}  {tag}{ev.type}  " + " ".join(parts)
