"""What the dashboard shows, as JSON: journal/views.py's CampaignView, folded live,
plus the few histories the page draws and the views do not keep (live loss curves,
the noise floor over time, agent spend over time, candidate diffs).

    state = DashboardState(tag); state.apply(ev, pos) ...   # like views.CampaignView
    redact_text(json.dumps(snapshot(state, now)), secrets)  # everything on the page, secrets hidden
    hypothesis_detail(state, hid, diff_source)              # one table row opened: diff, verdict, trials

Every payload leaves through redact(): no password, key or journal URL reaches a
browser, whatever an older writer put into the journal.
"""

import bisect
import itertools
import json
import math
import re
from collections import deque

from core.stats import t_isf
from journal.export import effect_text, event_line, one_line, short, trial_description, trial_status
from journal.views import VAL_KINDS, CampaignView

# Loss points kept per running trial (its curve on the workers panel).
CURVE_POINTS = 300
# Points of the noise-floor-over-time line sent to the page (older ones are thinned).
NOISE_POINTS = 400
# Two-sided confidence of the mainline band and of the effect intervals.
BAND_CONFIDENCE = 0.95
# Longest diff kept per candidate (bytes of text); the journal holds it whole.
DIFF_LIMIT = 200_000
# Snapshot sections an event type can change (the workers panel and the header are always rebuilt;
# "track": the chart of the event's track; "all": everything, for what is not listed).
TOUCHES = {"trial_progress": (), "worker_heartbeat": (), "worker_joined": (), "worker_lost": (),
           "stop_requested": (), "campaign_stopped": (), "campaign_resumed": (), "lab_note": ("notes",),
           "agent_usage": ("usage", "promotions"), "hypothesis_proposed": ("hypotheses",),
           "candidate_created": ("hypotheses",), "candidate_invalid": ("hypotheses",),
           "trial_started": ("hypotheses", "track"), "trial_finished": ("hypotheses", "track"),
           "verdict": ("hypotheses", "track"), "merge_conflict": (), "fix_requested": ()}
# Colour class of a trial dot, by what became of it (the page maps these to colours).
DOT_CLASS = {"keep": "kept", "discard": "discarded", "pending": "pending", "heldout": "heldout",
             "crash": "crash", "invalid": "crash", "aborted": "aborted"}

# -- redaction ------------------------------------------------------------------------
# Keys whose values are never shown (config keys, env names, anything secret-looking).
SECRET_KEY = re.compile(r"(password|passwd|secret|api[_-]?key|credential|(^|_)token$|^auth(orization)?$|^journal$|"
                        r"journal_url|^env$|^anthropic)", re.I)
# A URL with credentials (redis://:pw@host:port/0, https://user:pw@host/...) or any Redis URL
# (a journal's address) -> scheme://***: neither the password nor where the journal lives
# (the character classes stop at a backslash too, so redacting JSON text never eats an escape)
URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"\\]*@[^\s'\"\\]*|(rediss?://)[^\s'\"\\]+")
# password=..., token: ..., API keys in free text (lab notes, log tails)
SECRET_TEXT = re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|requirepass)(\s*[=:]\s*|\s+)"
                         r"[^\s,;'\"\\]+")
API_KEY_TEXT = re.compile(r"\b(sk-[A-Za-z0-9_-]{8,}|ghp_[A-Za-z0-9]{8,}|xox[bp]-[A-Za-z0-9-]{8,})")
HIDDEN = "***"
MAYBE_SECRET = re.compile(r"://|sk-|ghp_|xox|(?i:password|passwd|pwd|secret|token|api[_-]?key|requirepass)")


def redact_text(s: str, extra=()) -> str:
    """Text (or JSON text) with credentials and the literal secrets in `extra` hidden."""
    for secret in extra:
        for form in (secret, json.dumps(secret)[1:-1]) if secret else ():   # as is, and JSON-escaped
            if form in s:
                s = s.replace(form, HIDDEN)
    if not MAYBE_SECRET.search(s):      # most strings: one search instead of three substitutions
        return s
    s = URL_CREDENTIALS.sub(lambda m: (m.group(1) or m.group(2)) + HIDDEN, s)
    s = SECRET_TEXT.sub(lambda m: m.group(1) + m.group(2) + HIDDEN, s)
    return API_KEY_TEXT.sub(HIDDEN, s)


def secrets_in(obj, found=None) -> set:
    """Literal secrets a journal itself holds (an older campaign_started recorded the journal URL
    with its password, the trial env with keys): hidden wherever else they are quoted."""
    found = set() if found is None else found
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and SECRET_KEY.search(k) and isinstance(v, str) and len(v) >= 4:
                found.add(v)
            secrets_in(v, found)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            secrets_in(x, found)
    elif isinstance(obj, str):
        for m in re.finditer(r"://([^/\s@'\"]*)@", obj):
            password = m.group(1).rpartition(":")[2]
            if len(password) >= 4:
                found.add(password)
    return found


def redact(obj, extra=()):
    """A copy of obj (JSON-like) with secret-looking keys' values and credentials in text hidden.
    extra: literal strings (the journal URL, its password) hidden wherever they appear."""
    if isinstance(obj, str):
        return redact_text(obj, extra)
    if isinstance(obj, dict):
        return {k: (HIDDEN if isinstance(k, str) and SECRET_KEY.search(k) and v not in (None, "", {}, [])
                    else redact(v, extra)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(x, extra) for x in obj]
    return obj


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _round(x, digits=6):
    return round(x, digits) if _finite(x) else None


class DashboardState(CampaignView):
    """views.CampaignView plus the histories the page draws. Every fold is O(1) per event,
    so a live page stays cheap after the start-up replay."""

    def __init__(self, campaign: str = ""):
        super().__init__(campaign)
        self.curves = {}           # running trial id -> deque of (time, step, loss)
        self.groups = {}           # (track, commit) -> [n, mean, M2] of validation values (Welford)
        self.pooled = {}           # track -> [sum of M2, dof]
        self.noise_history = {}    # track -> [(time, sigma, dof)]
        self.verdict_dof = {}      # candidate id -> (noise dof, mainline n) when its verdict came
        self.spend = []            # (time, tokens, cost_usd) of each agent_usage
        self.diffs = {}            # candidate id -> diff text from candidate_created
        self.patches = {}          # hypothesis id -> patch text (ported wins)
        self.recent = deque(maxlen=40)  # the latest events but progress (one line each on the page)
        self.secrets = set()       # literal secrets found in the journal itself (see secrets_in)
        self.cache, self.dirty = {}, set()   # snapshot sections built, and those events touched since
        self.revs = {}             # section -> how many times it was rebuilt

    def apply(self, event, pos=None):
        if event.type in ("campaign_started", "campaign_resumed"):
            secrets_in(event.data, self.secrets)
        super().apply(event, pos)
        touched = TOUCHES.get(event.type, ("all",))
        self.dirty.update(touched)
        if "track" in touched or "all" in touched:
            trial = self.trials.get(str(event.data.get("trial_id"))) if "trial_id" in event.data else None
            track = event.data.get("track") or (trial.track if trial else None)
            self.dirty.add(f"track:{track}" if isinstance(track, str) else "all")
        if event.type != "trial_progress":     # the workers panel shows those
            self.recent.append(event)
        return self

    def _on_trial_progress(self, ev, d):
        super()._on_trial_progress(ev, d)
        tid = str(d.get("trial_id"))
        if _finite(d.get("loss")):
            self.curves.setdefault(tid, deque(maxlen=CURVE_POINTS)).append(
                (ev.time, d.get("step"), float(d["loss"])))

    def _on_trial_finished(self, ev, d):
        super()._on_trial_finished(ev, d)
        t = self.trials[str(d.get("trial_id"))]
        self.curves.pop(t.trial_id, None)
        if t.kind in VAL_KINDS and t.value is not None and t.track:
            g = self.groups.setdefault((t.track, t.commit), [0, 0.0, 0.0])
            old_m2 = g[2]
            g[0] += 1
            delta = t.value - g[1]
            g[1] += delta / g[0]
            g[2] += delta * (t.value - g[1])
            if g[0] >= 2:
                p = self.pooled.setdefault(t.track, [0.0, 0])
                p[0] += g[2] - old_m2
                p[1] += 1
                self.noise_history.setdefault(t.track, []).append(
                    (ev.time, math.sqrt(max(p[0], 0.0) / p[1]), p[1]))

    def _on_verdict(self, ev, d):
        super()._on_verdict(ev, d)
        c = self.candidates[str(d.get("candidate_id"))]
        base = self.groups.get((c.track, c.base_commit))
        self.verdict_dof[c.candidate_id] = (self.pooled.get(c.track, [0, 0])[1], base[0] if base else None)

    def _on_agent_usage(self, ev, d):
        super()._on_agent_usage(ev, d)
        tokens = sum(int(d[k]) for k in ("input_tokens", "output_tokens") if _finite(d.get(k)))
        self.spend.append((ev.time, tokens, float(d["cost_usd"]) if _finite(d.get("cost_usd")) else 0.0))

    def _on_candidate_created(self, ev, d):
        super()._on_candidate_created(ev, d)
        if isinstance(d.get("diff"), str) and d["diff"]:
            self.diffs[str(d.get("candidate_id"))] = d["diff"][:DIFF_LIMIT]

    def _on_hypothesis_proposed(self, ev, d):
        super()._on_hypothesis_proposed(ev, d)
        if isinstance(d.get("patch"), str) and d["patch"]:
            self.patches[str(d.get("hypothesis_id"))] = d["patch"][:DIFF_LIMIT]

    def live_noise(self, track):
        """(sigma, dof) of a track from the running sums: what stats.noise_floor gives on replay."""
        p = self.pooled.get(track)
        if not p or p[1] == 0:
            return None, 0
        return math.sqrt(max(p[0], 0.0) / p[1]), p[1]


# -- the snapshot --------------------------------------------------------------------
def _accel_s(t, now) -> float:
    """Seconds of accelerator time of a trial; one still running counts until now (the stop of a
    stopped campaign)."""
    if t.started is None or t.kind is None:
        return 0.0
    end = t.finished if t.finished is not None else (now if t.status == "running" else t.started)
    return max(0.0, end - t.started)


def _track_view(state: DashboardState, name, now, half_t):
    """The chart of one track: trial dots (columns), mainline steps with the band, promotions
    and reverts, held-out line, noise floor over time."""
    dots = {k: [] for k in ("id", "t", "v", "cls", "kind", "seed", "commit", "label", "worker")}
    texts = {}          # a dot's label is an index into dots["labels"] (many trials share one)
    for t in state.trials_of(track=name):
        if t.finished is None or t.kind == "heldout":
            continue
        status = trial_status(state, t)
        label = texts.setdefault(trial_description(state, t), len(texts))
        for k, x in (("id", t.trial_id), ("t", t.finished), ("v", _round(t.value)),
                     ("cls", DOT_CLASS.get(status, status)), ("kind", t.kind), ("seed", t.seed),
                     ("commit", short(t.commit)), ("label", label), ("worker", t.worker)):
            dots[k].append(x)
    dots["labels"] = list(texts)
    sigma, dof = state.live_noise(name)
    labels = {}
    for c in state.candidates.values():
        if c.track == name and (c.commit or c.merged_commit):
            h = state.hypotheses.get(c.hypothesis_id or "")
            title = h.title if h and h.title else c.candidate_id
            labels.setdefault(c.commit, title)
            labels[c.merged_commit] = f"merge of: {title}"
    mainline = []
    for when, level, commit in state.mainline_curve(name):
        g = state.groups.get((name, commit))
        n = g[0] if g else 0
        half = half_t(dof) * sigma / math.sqrt(n) if sigma is not None and n else None
        mainline.append({"t": when, "v": _round(level), "commit": short(commit), "n": n,
                         "lo": _round(level - half) if half is not None else None,
                         "hi": _round(level + half) if half is not None else None,
                         "label": labels.get(commit) or "baseline"})
    tr = state.tracks.get(name)
    marks, heldout = [], []
    for s in (tr.history if tr else []):
        if s.action in ("promoted", "reverted"):
            c = state.candidates.get(s.candidate_id or "")
            h = state.hypotheses.get(c.hypothesis_id or "") if c else None
            marks.append({"t": s.time, "action": s.action, "commit": short(s.commit),
                          "title": one_line(h.title if h else "", 60), "reason": one_line(s.reason or "", 120)})
        elif s.action == "heldout" and _finite(s.test_bpb):
            heldout.append({"t": s.time, "v": _round(s.test_bpb), "commit": short(s.commit)})
    noise = state.noise_history.get(name, [])
    step = max(1, len(noise) // NOISE_POINTS)
    noise = noise[::step] + ([noise[-1]] if noise and (len(noise) - 1) % step else [])
    level = mainline[-1]["v"] if mainline else None
    return {"name": name, "head": short(tr.head if tr else None), "level": level,
            "heldout_now": heldout[-1]["v"] if heldout else None,
            "sigma": _round(sigma), "dof": dof, "trials": len(dots["id"]), "dots": dots,
            "mainline": mainline, "marks": marks, "heldout": heldout,
            "noise": [{"t": a, "sigma": _round(b), "dof": c} for a, b, c in noise]}


def _worker_view(state: DashboardState, w, now):
    t = state.trials.get(w.trial_id or "") if w.state == "busy" else None
    row = {"name": w.worker, "track": w.track, "hardware": w.hardware_class or "", "state": w.state,
           "reason": w.lost_reason or "", "last_seen": w.last_seen, "trials": w.trials, "crashes": w.crashes,
           "trial": None, "curve": []}
    if t is not None:
        p = t.progress or {}
        budget = (state.config or {}).get("time_budget") if isinstance(state.config, dict) else None
        row["trial"] = {"id": t.trial_id, "kind": t.kind, "seed": t.seed, "commit": short(t.commit),
                        "label": trial_description(state, t), "started": t.started,
                        "step": p.get("step"), "progress": _round(p.get("progress"), 4),
                        "loss": _round(p.get("loss"), 4), "seconds_left": _round(p.get("seconds_left"), 1),
                        "budget": budget if _finite(budget) else None}
        row["curve"] = [[a, b, round(c, 4)] for a, b, c in state.curves.get(t.trial_id, ())]
    return row


def _effect_ci(state: DashboardState, c, v, half_t):
    """(lo, hi) of a verdict's effect: t(dof) x sigma x sqrt(1/n_candidate + 1/n_mainline)."""
    if not v or not _finite(v.get("effect_bpb")) or not _finite(v.get("noise_floor")):
        return None, None
    dof, n_main = state.verdict_dof.get(c.candidate_id, (0, None))
    n_cand = v.get("trials") if isinstance(v.get("trials"), int) and v["trials"] > 0 else None
    if not dof or not n_cand or not n_main:
        return None, None
    half = half_t(dof) * v["noise_floor"] * math.sqrt(1 / n_cand + 1 / n_main)
    return _round(v["effect_bpb"] - half), _round(v["effect_bpb"] + half)


def verdict_words(state, c) -> str:
    """The verdict's test in plain words."""
    v = c.verdict if c else None
    if c is None:
        return "Not implemented yet."
    if c.invalid and not v:
        return f"Invalid candidate: {one_line(c.invalid)}."
    if not v:
        return "No verdict yet: its trials are queued or running."
    word = {"confirmed": "beat the mainline", "discard": "did not beat the mainline",
            "promising": "looked better and was given more seeds", "crash": "crashed",
            "invalid": "was invalid"}.get(str(v.get("verdict")), str(v.get("verdict")))
    s = f"After {v.get('trials', '?')} trial(s) the candidate {word}"
    if _finite(v.get("candidate_mean")) and _finite(v.get("mainline_mean")):
        s += f": mean val_bpb {v['candidate_mean']:.4f} against the mainline's {v['mainline_mean']:.4f}"
    if _finite(v.get("effect_bpb")):
        s += f", an effect of {effect_text(v, ' bpb')}"
    if _finite(v.get("p_value")):
        s += (f". One-sided p = {v['p_value']:.4f}: the chance of a gain this large from noise alone "
              f"if the change did nothing")
    s += "."
    if v.get("test") not in (None, "", "none"):
        s += f" Test: {one_line(v['test'])}."
    if c.outcome:
        s += {"merged": " Merged into the mainline; awaiting its re-test with fresh seeds.",
              "promoted": " Merged, re-tested with fresh seeds and promoted.",
              "reverted": " Merged, but the re-test with fresh seeds did not hold up: reverted."}.get(c.outcome, "")
    return s


def _hypothesis_row(state: DashboardState, h, half_t, done_by_candidate):
    c = state.candidates[h.candidates[-1]] if h.candidates else None
    v = (c.verdict or {}) if c else {}
    lo, hi = _effect_ci(state, c, v, half_t) if c else (None, None)
    used = done_by_candidate.get(c.candidate_id, 0) if c else 0
    return {"id": h.hypothesis_id, "title": one_line(h.title) or h.hypothesis_id, "agent": h.agent or "",
            "track": h.track or (c.track if c else "") or "", "status": state.hypothesis_status(h),
            "time": h.time, "effect": _round(v.get("effect_bpb")), "sigma": _round(v.get("effect_sigma"), 2),
            "lo": lo, "hi": hi, "p": _round(v.get("p_value"), 5), "trials": used}


def _promotion_costs(state: DashboardState, now):
    """What each promotion cost since the previous one (campaign-wide windows): accelerator-hours,
    agent tokens and dollars, and the accepted gain. Prefix sums: one pass over trials and spend."""
    steps = sorted((s.time, name, s) for name, tr in state.tracks.items() for s in tr.history
                   if s.action == "promoted")
    done = sorted((t.finished, _accel_s(t, now)) for t in state.trials.values() if t.finished is not None)
    done_t, acc = [x for x, _ in done], list(itertools.accumulate((y for _, y in done), initial=0.0))
    spend = sorted(state.spend)
    spend_t = [x for x, _, _ in spend]
    tok = list(itertools.accumulate((y for _, y, _ in spend), initial=0))
    usd = list(itertools.accumulate((z for _, _, z in spend), initial=0.0))
    out, prev = [], state.first_time or 0.0
    for when, name, s in steps:
        a, b = bisect.bisect_right(done_t, prev), bisect.bisect_right(done_t, when)
        c, d = bisect.bisect_right(spend_t, prev), bisect.bisect_right(spend_t, when)
        hours = (acc[b] - acc[a]) / 3600
        gain = -s.effect_bpb if _finite(s.effect_bpb) else None
        if gain is not None and state.direction == "maximize":
            gain = -gain
        out.append({"t": when, "track": name, "commit": short(s.commit), "gain": _round(gain),
                    "accel_h": _round(hours, 3), "tokens": tok[d] - tok[c], "usd": _round(usd[d] - usd[c], 4),
                    "test": _round(s.test_bpb),
                    "gain_per_h": _round(gain / hours, 5) if gain is not None and hours > 0 else None})
        prev = when
    return out


def _half_t(dof):
    """Half-width factor of the two-sided BAND_CONFIDENCE interval with dof degrees of freedom."""
    return t_isf((1 - BAND_CONFIDENCE) / 2, dof) if dof else 1.959964


def _section(state, name, now):
    """One part of the snapshot, built from the state."""
    if name.startswith("track:"):
        return _track_view(state, name[6:], now, _half_t)
    if name == "hypotheses":
        done = {}
        for t in state.trials.values():
            if t.candidate_id and t.status != "running":
                done[t.candidate_id] = done.get(t.candidate_id, 0) + 1
        hyps = sorted(state.hypotheses.values(), key=lambda h: h.time or 0.0)
        return [_hypothesis_row(state, h, _half_t, done) for h in hyps]
    if name == "promotions":
        return _promotion_costs(state, now)
    if name == "notes":
        return [{"t": ev.time, "author": one_line(ev.data.get("author") or ev.source),
                 "title": one_line(ev.data.get("title") or "untitled"), "text": str(ev.data.get("text") or "")}
                for ev in state.notes]
    if name == "usage":
        return [{"agent": a, "model": m, "calls": u.calls, "input": u.input_tokens, "output": u.output_tokens,
                 "cache_read": u.cache_read_tokens, "cache_write": u.cache_write_tokens,
                 "usd": _round(u.cost_usd, 4), "latency": _round(u.latency_s / u.calls, 2) if u.calls else None}
                for (a, m), u in sorted(state.usage.items())]
    raise KeyError(name)


SECTIONS = ("hypotheses", "promotions", "notes", "usage")


def snapshot(state: DashboardState, now: float) -> dict:
    """Everything the page shows, JSON-ready, NOT redacted: pass its JSON text through
    redact_text(text, state.secrets + yours) before it leaves (dashboard/server.py does). Sections
    that no event touched since the last call are reused (state.cache), so a progress report
    costs the workers panel only; each section's revision (state.revs) moves when it is rebuilt."""
    if not state.campaign or not state.count:
        return {"campaign": state.campaign or None, "empty": True}
    now = min(now, state.stopped) if state.stopped else now   # a stopped campaign's clock stands still
    names = [n for n in state.track_names() if n != "?"]
    for name in [f"track:{n}" for n in names] + list(SECTIONS):
        if name not in state.cache or name in state.dirty or "all" in state.dirty:
            state.cache[name] = _section(state, name, now)
            state.revs[name] = state.revs.get(name, 0) + 1      # the page redraws a section when it moves
    state.dirty.clear()
    tracks = [state.cache[f"track:{n}"] for n in names]
    promotions, usage = state.cache["promotions"], state.cache["usage"]
    finished = sum(t.status != "running" for t in state.trials.values())
    accel_h = sum(_accel_s(t, now) for t in state.trials.values()) / 3600
    held = [tv["heldout"] for tv in tracks if tv["heldout"]]
    best = [h["v"] for hs in held for h in hs]
    best_heldout = (max(best) if state.direction == "maximize" else min(best)) if best else None
    gains = [(hs[0]["v"] - hs[-1]["v"]) * (-1 if state.direction == "maximize" else 1) for hs in held if len(hs) >= 2]
    return {
        "campaign": state.campaign, "empty": False, "now": now, "direction": state.direction,
        "running": state.started is not None and state.stopped is None,
        "stop_reason": state.stop_reason or None,
        "started": state.started or state.first_time, "stopped": state.stopped, "last_time": state.last_time,
        "events": state.count,
        "header": {"elapsed_s": _round(((state.stopped or now) - (state.started or state.first_time or now)), 1),
                   "trials": finished, "running": len(state.trials) - finished,
                   "crashes": sum(t.status == "crash" for t in state.trials.values()),
                   "promotions": len(promotions),
                   "reverts": sum(s.action == "reverted" for tr in state.tracks.values() for s in tr.history),
                   "best_heldout": best_heldout, "accel_h": _round(accel_h, 3),
                   "tokens": sum(u["input"] + u["output"] for u in usage),
                   "usd": _round(sum(u["usd"] or 0 for u in usage), 4),
                   "heldout_gain_per_h": _round(sum(gains) / accel_h, 5) if gains and accel_h > 0 else None},
        "tracks": tracks,
        "workers": [_worker_view(state, w, now) for w in sorted(state.workers.values(), key=lambda w: w.worker)],
        "hypotheses": state.cache["hypotheses"],
        "promotions": promotions,
        "notes": state.cache["notes"],
        "usage": usage,
        "recent": [event_line(ev) for ev in state.recent],
        "revs": {k: state.revs[k] for k in [f"track:{n}" for n in names] + list(SECTIONS)},
        "unknown": len(state.unknown),
    }


def hypothesis_detail(state: DashboardState, hid: str, diff_of=None, secrets=()) -> dict:
    """One hypothesis opened: rationale, each candidate's diff, verdict in words, its trials' values.
    diff_of(candidate) -> text or None: the git layer, used when the journal holds no diff."""
    h = state.hypotheses.get(hid)
    if h is None:
        return None
    cands = []
    for cid in h.candidates:
        c = state.candidates[cid]
        diff, source = state.diffs.get(cid), "journal"
        if not diff and diff_of is not None:
            diff, source = diff_of(c), "git"
        if not diff and state.patches.get(hid):
            diff, source = state.patches[hid], "patch"
        trials = [{"id": t.trial_id, "kind": t.kind, "seed": t.seed, "worker": t.worker, "status": t.status,
                   "crash": t.crash_class, "value": _round(t.value), "reason": one_line(t.reason or "", 200)}
                  for t in state.trials_of(candidate_id=cid)]
        cands.append({"id": cid, "commit": short(c.commit), "base": short(c.base_commit),
                      "implementer": c.implementer or "", "diff": diff or None,
                      "diff_source": source if diff else None,
                      "verdict": verdict_words(state, c), "trials": trials})
    return redact({"id": h.hypothesis_id, "title": h.title, "agent": h.agent, "track": h.track,
                   "rationale": h.rationale, "expected": one_line(h.expected_effect), "risk": one_line(h.risk),
                   "status": state.hypothesis_status(h), "candidates": cands}, [*secrets, *state.secrets])
