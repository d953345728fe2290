"""Exports of a replayed campaign: a terminal table, a results.tsv (upstream
columns first), JSON lines, one line per event, and the formatters the markdown
lab journal (labjournal.py) shares.

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
