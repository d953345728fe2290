"""Views of a campaign computed by replaying its events.

    state = replay(j.read())            # or fold live: state.apply(ev) for each followed event
    state.trials, state.hypotheses, state.candidates, state.tracks (mainline history),
    state.workers, state.notes, state.usage, state.unknown
    state.noise_floor(track), state.leaderboard(track), state.mainline_curve(track)

Replay never crashes on what it does not understand: unknown types, events of a
newer schema and events with unusable data land in state.unknown with a reason.
Partial campaigns are normal: a trial started but never finished is in flight.
"""

import math
from typing import Optional

from core.stats import noise_floor  # the one definition of the noise floor (pure function)

from .events import SCHEMA_VERSION, Event

from .records import (VAL_KINDS, Candidate, Hypothesis, MainlineStep, Track, Trial, Usage, WorkerStatus,
                      _num, ident, mean, text)

__all__ = ["CampaignView", "replay", "VAL_KINDS", "mean"]


class CampaignView:
    """Everything the journal says about one campaign, folded event by event."""

    def __init__(self, campaign: str = ""):
        self.campaign = campaign
        self.started = self.stopped = None
        self.stop_reason = None
        self.config, self.target = {}, {}
        self.first_time = self.last_time = None
        self.trials, self.hypotheses, self.candidates = {}, {}, {}
        self.tracks, self.workers = {}, {}
        self.notes = []                  # lab_note events
        self.usage = {}                  # (agent, model) -> Usage
        self.unknown = []                # (event, why) for what was not understood
        self.ignored = []                # (event, why) duplicates left out on purpose
        self.count = 0
        self.position = None             # of the last applied event

    @property
    def direction(self) -> str:
        for d in (self.config, self.target):
            if isinstance(d, dict) and d.get("direction") in ("minimize", "maximize"):
                return d["direction"]
        return "minimize"

    # -- folding ---------------------------------------------------------------
    def apply(self, event: Event, pos: Optional[str] = None):
        self.count += 1
        self.position = pos
        if not self.campaign:
            self.campaign = event.campaign
        if event.time:
            self.first_time = event.time if self.first_time is None else min(self.first_time, event.time)
            self.last_time = event.time if self.last_time is None else max(self.last_time, event.time)
        why = self._duplicate(event)
        if why:
            self.ignored.append((event, why))
            return self
        handler = getattr(self, "_on_" + event.type, None) if event.type.isidentifier() else None
        if event.v > SCHEMA_VERSION:
            self.unknown.append((event, f"schema v{event.v} is newer than this reader (v{SCHEMA_VERSION})"))
        elif handler is None:
            self.unknown.append((event, "unknown event type"))
        else:
            try:
                handler(event, event.data)
            except (TypeError, ValueError, AttributeError, KeyError) as e:
                self.unknown.append((event, f"unusable data ({type(e).__name__}: {e})"))
        return self

    def _duplicate(self, event: Event) -> Optional[str]:
        """Why an event must not count again, or None. A trial reported twice (an old worker
        that outlived a killed coordinator, a retried result) counts once: the first report."""
        if event.type == "trial_finished" and event.v <= SCHEMA_VERSION and isinstance(event.data, dict):
            t = self.trials.get(str(event.data.get("trial_id")))
            if t is not None and t.status != "running":
                return f"trial {t.trial_id} already finished ({t.status})"
        return None

    def _trial(self, d) -> Trial:
        tid = ident(d.get("trial_id"), required=True)
        fields = {k: ident(d.get(k)) for k in ("worker", "track", "commit", "kind", "candidate_id")}
        t = self.trials.get(tid)
        if t is None:
            t = self.trials[tid] = Trial(tid)
        for k, v in fields.items():
            if v is not None:
                setattr(t, k, v)
        if isinstance(d.get("seed"), int):
            t.seed = d["seed"]
        return t

    def _track(self, name) -> Track:
        name = name or "?"
        if name not in self.tracks:
            self.tracks[name] = Track(name)
        return self.tracks[name]

    def _worker(self, name, when) -> WorkerStatus:
        name = ident(name, required=True)
        w = self.workers.get(name)
        if w is None:
            w = self.workers[name] = WorkerStatus(name)
        w.last_seen = when
        return w

    def _candidate(self, cid) -> Candidate:
        cid = ident(cid, required=True)
        c = self.candidates.get(cid)
        if c is None:
            c = self.candidates[cid] = Candidate(cid)
        return c

    def _on_campaign_started(self, ev, d):
        self.started = ev.time
        self.config = d.get("config") or {}
        self.target = d.get("target") or {}

    def _on_campaign_stopped(self, ev, d):
        self.stopped, self.stop_reason = ev.time, text(d.get("reason"))

    def _on_campaign_resumed(self, ev, d):
        self.stopped = self.stop_reason = None

    def _on_stop_requested(self, ev, d):
        pass  # the coordinator acts on it; campaign_stopped follows

    def _on_coordinator_lease(self, ev, d):
        pass  # the coordinator's owner lease: only coordinators act on it (coordinator/state.py)

    def _on_merge_conflict(self, ev, d):
        pass  # shown in the event log; the candidate's verdict stands

    def _on_fix_requested(self, ev, d):
        pass  # the failed candidate's verdict stands; the fix is a candidate of its own

    def _on_worker_joined(self, ev, d):
        w = self._worker(d.get("worker"), ev.time)
        w.track, w.profile = ident(d.get("track")), text(d.get("profile"))
        w.hardware_class = text(d.get("hardware_class"))
        w.hardware = d.get("hardware")
        w.joined, w.state, w.lost_reason, w.trial_id = ev.time, "idle", None, None

    def _on_worker_lost(self, ev, d):
        w = self._worker(d.get("worker"), ev.time)
        w.state, w.lost_reason = "lost", text(d.get("reason"))

    def _on_worker_heartbeat(self, ev, d):
        w = self._worker(d.get("worker"), ev.time)
        if w.state == "lost":  # it came back without a new worker_joined
            w.state = "idle"

    def _on_trial_started(self, ev, d):
        t = self._trial(d)
        t.started = ev.time
        track = self._track(t.track)
        if t.kind == "baseline" and track.head is None and t.commit:
            track.head = t.commit
            track.history.append(MainlineStep(ev.time, "baseline", t.commit))
        if t.worker:
            w = self._worker(t.worker, ev.time)
            w.state, w.trial_id = "busy", t.trial_id

    def _on_trial_progress(self, ev, d):
        t = self._trial(d)
        t.progress = d

    def _on_trial_finished(self, ev, d):
        t = self._trial(d)
        t.finished = ev.time
        t.status = text(d.get("status")) or "ok"
        t.crash_class = d.get("crash_class") and text(d["crash_class"])
        t.reason, t.log_tail, t.log_path = text(d.get("reason")), text(d.get("log_tail")), text(d.get("log_path"))
        t.val_bpb = d.get("val_bpb")
        t.metrics = d["metrics"] if isinstance(d.get("metrics"), dict) else {}
        t.timings = d["timings"] if isinstance(d.get("timings"), dict) else {}
        t.sandbox, t.metric_source = text(d.get("sandbox")), text(d.get("metric_source"))
        if t.worker:
            w = self._worker(t.worker, ev.time)
            w.trials += 1
            w.crashes += t.status == "crash"
            if w.trial_id == t.trial_id:
                w.state, w.trial_id = ("idle" if w.state == "busy" else w.state), None

    def _on_hypothesis_proposed(self, ev, d):
        hid = ident(d.get("hypothesis_id"), required=True)
        h = self.hypotheses.get(hid) or Hypothesis(hid)
        h.track, h.mainline_commit = ident(d.get("track")), ident(d.get("mainline_commit"))
        for k in ("title", "rationale", "expected_effect", "risk", "agent"):
            setattr(h, k, text(d.get(k)))
        h.time = ev.time
        self.hypotheses[hid] = h

    def _link(self, c: Candidate, hid):
        hid = ident(hid)
        if hid is None:
            return
        c.hypothesis_id = hid
        h = self.hypotheses.setdefault(c.hypothesis_id, Hypothesis(c.hypothesis_id))
        if c.candidate_id not in h.candidates:
            h.candidates.append(c.candidate_id)

    def _on_candidate_created(self, ev, d):
        c = self._candidate(d.get("candidate_id"))
        c.track, c.commit, c.base_commit = ident(d.get("track")), ident(d.get("commit")), ident(d.get("base_commit"))
        c.time, c.implementer = ev.time, text(d.get("implementer"))
        self._link(c, d.get("hypothesis_id"))

    def _on_candidate_invalid(self, ev, d):
        c = self._candidate(d.get("candidate_id"))
        c.track = c.track or ident(d.get("track"))
        c.time = c.time or ev.time
        c.invalid = text(d.get("reason")) or "invalid"
        self._link(c, d.get("hypothesis_id"))

    def _on_verdict(self, ev, d):
        c = self._candidate(d.get("candidate_id"))
        c.track = c.track or ident(d.get("track"))
        c.verdicts.append(dict(d, time=ev.time))
        self._link(c, d.get("hypothesis_id"))

    def _merged_candidate(self, commit) -> Optional[Candidate]:
        for c in reversed(list(self.candidates.values())):
            if commit and c.merged_commit == commit:
                return c
        return None

    def _step(self, ev, d, action, **extra):
        """Append a mainline step of the event's track; returns (track, step)."""
        track = self._track(ident(d.get("track")))
        commit = ident(d.get("commit"))
        previous = ident(d.get("restored" if action == "reverted" else "previous"))
        c = self._merged_candidate(commit)
        step = MainlineStep(ev.time, action, commit, previous, c and c.candidate_id, **extra)
        track.history.append(step)
        return track, step, c

    def _on_merged(self, ev, d):
        c = self._candidate(d.get("candidate_id")) if d.get("candidate_id") is not None else None
        if c:
            c.merged_commit, c.outcome = ident(d.get("commit")), "merged"
        track, step, _ = self._step(ev, d, "merged")
        track.head = step.commit or track.head

    def _on_retested(self, ev, d):
        self._step(ev, d, "retested", effect_bpb=d.get("effect_bpb"), p_value=d.get("p_value"),
                   verdict=text(d.get("verdict")))

    def _on_promoted(self, ev, d):
        track, step, c = self._step(ev, d, "promoted", val_bpb=d.get("val_bpb"))
        step.effect_bpb = c.verdict.get("effect_bpb") if c and c.verdict else None
        track.head = step.commit or track.head
        if c:
            c.outcome = "promoted"

    def _on_reverted(self, ev, d):
        track, step, c = self._step(ev, d, "reverted", reason=text(d.get("reason")))
        track.head = step.previous or track.head
        if c:
            c.outcome = "reverted"

    def _on_heldout_result(self, ev, d):
        track, step, _ = self._step(ev, d, "heldout", test_bpb=d.get("test_bpb"))
        step.candidate_id = None
        for s in reversed(track.history):
            if s.action == "promoted" and s.commit == step.commit:
                s.test_bpb = step.test_bpb
                break

    def _on_lab_note(self, ev, d):
        self.notes.append(ev)

    def _on_agent_usage(self, ev, d):
        u = self.usage.setdefault((str(d.get("agent")), str(d.get("model"))), Usage())
        u.calls += 1
        for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
            setattr(u, k, getattr(u, k) + int(_num(d.get(k))))
        u.cost_usd += _num(d.get("cost_usd"))
        u.latency_s += _num(d.get("latency_s"))

    # -- derived views -----------------------------------------------------------
    def trials_of(self, commit=None, candidate_id=None, track=None, kinds=None) -> list:
        out = [t for t in self.trials.values()
               if (commit is None or t.commit == commit)
               and (candidate_id is None or t.candidate_id == candidate_id)
               and (track is None or t.track == track)
               and (kinds is None or t.kind in kinds)]
        return sorted(out, key=lambda t: (t.started or t.finished or 0.0))

    def values_by_commit(self, track) -> dict:
        """commit -> ok val_bpb values of validation trials on one track."""
        groups = {}
        for t in self.trials.values():
            if t.track == track and t.kind in VAL_KINDS and t.value is not None:
                groups.setdefault(t.commit, []).append(t.value)
        return groups

    def noise_floor(self, track):
        """Pooled spread of repeated trials of the same commit on a track: (sigma, dof)."""
        return noise_floor(list(self.values_by_commit(track).values()))

    def track_names(self) -> list:
        names = set(self.tracks) | {t.track for t in self.trials.values() if t.track}
        names |= {w.track for w in self.workers.values() if w.track}
        return sorted(n for n in names if n != "?") + (["?"] if "?" in names else [])

    def label(self, commit) -> str:
        """What a commit is: a hypothesis title, 'baseline', or the merge of one."""
        for c in self.candidates.values():
            if commit and commit in (c.commit, c.merged_commit):
                h = self.hypotheses.get(c.hypothesis_id or "")
                title = h.title if h and h.title else c.candidate_id
                return title if commit == c.commit else f"merge of: {title}"
        if any(t.commit == commit and t.kind == "baseline" for t in self.trials.values()):
            return "baseline"
        return ""

    def trust_notes(self) -> list[str]:
        """What a reader must know before trusting the values: trials that ran without the sandbox,
        values the trials reported themselves (no fixed evaluator)."""
        done = [t for t in self.trials.values() if t.finished is not None]
        off = sum(1 for t in done if t.sandbox == "off")
        own = sum(1 for t in done if t.metric_source == "self-reported")
        notes = []
        if off:
            notes.append(f"{off} of {len(done)} trials ran without the sandbox (--sandbox off, for debugging "
                         f"only): their code was not confined")
        if own:
            notes.append(f"{own} of {len(done)} values are self-reported: the target has no fixed evaluator, "
                         f"so the trial printed its own metric")
        return notes

    def leaderboard(self, track) -> list:
        """Commits of a track ranked by mean val_bpb (best first): dicts with commit, n, mean,
        std, label, mainline (is the head now)."""
        head = self.tracks[track].head if track in self.tracks else None
        rows = []
        for commit, vals in self.values_by_commit(track).items():
            m = mean(vals)
            sd = math.sqrt(sum((x - m) ** 2 for x in vals) / (len(vals) - 1)) if len(vals) > 1 else None
            rows.append(dict(commit=commit, n=len(vals), mean=m, std=sd, label=self.label(commit),
                             mainline=commit == head))
        rows.sort(key=lambda r: r["mean"], reverse=self.direction == "maximize")
        return rows

    def mainline_curve(self, track) -> list:
        """The accepted level over time: (time, val_bpb, commit) at the baseline, each
        promotion and each revert that restored a known level."""
        tr = self.tracks.get(track)
        if tr is None:
            return []
        groups = self.values_by_commit(track)
        level = {}
        points = []
        for step in tr.history:
            if step.action == "baseline":
                base = self.trials_of(commit=step.commit, track=track, kinds=("baseline",))
                done = [t.finished for t in base if t.value is not None]
                if step.commit in groups and done:
                    level[step.commit] = mean(groups[step.commit])
                    points.append((min(done), level[step.commit], step.commit))
            elif step.action == "promoted":
                v = step.val_bpb if isinstance(step.val_bpb, (int, float)) else mean(groups.get(step.commit, []))
                if v is not None:
                    level[step.commit] = v
                    points.append((step.time, v, step.commit))
            elif step.action == "reverted" and step.previous in level:
                points.append((step.time, level[step.previous], step.previous))
        return points

    def hypothesis_status(self, h: Hypothesis) -> str:
        """One word or two for the table: proposed, invalid, running, pending, a verdict
        (with what the mainline did with it)."""
        if not h.candidates:
            return "proposed"
        c = self.candidates[h.candidates[-1]]
        if c.invalid and not c.verdict:
            return "invalid"
        if c.verdict:
            s = str(c.verdict.get("verdict"))
            return f"{s}, {c.outcome}" if c.outcome else s
        trials = self.trials_of(candidate_id=c.candidate_id)
        if any(t.status == "running" for t in trials):
            return "running"
        return "pending" if trials else "queued"


def replay(events, campaign: str = "") -> CampaignView:
    """Fold (position, event) pairs (what Journal.read yields) or bare events into a state."""
    state = CampaignView(campaign)
    for item in events:
        if isinstance(item, tuple):
            state.apply(item[1], item[0])
        else:
            state.apply(item)
    return state
