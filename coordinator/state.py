"""
The coordinator's campaign state, rebuilt purely by replaying the journal.

journal.views.CampaignView already folds every event into trials, hypotheses,
candidates, tracks (mainline history) and workers; this subclass adds what the
coordinator decides from, kept as indexes so one decision stays cheap with
thousands of trials:

- per track: the trusted mainline (last promoted, else the initial commit), the
  merge being re-tested (at most one), the confirmed candidates waiting for it;
- per (track, commit): ok metric values (with their seeds and kinds) in journal
  order, finished and live trial counts per kind;
- per (track, code): the seeds taken. Code is the editable files' content
  (journaled with each candidate and merge), so a merge whose train.py equals its
  candidate's is the same code: training is deterministic for a seed, and a
  (code, seed) run twice adds no information (and re-imports the winner's curse);
- trials in flight with their lease (last sign of life), candidates still
  open, hypotheses waiting to be implemented, and what still needs a decision.

Decisions (verdicts, merges, promotions, reverts, conflicts) are journal events
written by the coordinator only; replay re-reads them and never re-decides.
The one thing not in the journal is a dispatch the worker has not confirmed yet
(mark_dispatched): it is lost on purpose with the process that made it.

A trial counts once: the first trial_finished of a trial_id wins; a later one
(a late result of a trial whose lease expired) is ignored.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from journal.events import SCHEMA_VERSION
from core.keys import hypothesis_key
from core.stats import pooled_sigma, within_seed_correlation
from journal.views import VAL_KINDS, CampaignView

# Fresh seeds of each trial kind start here. A (code, seed) runs at most once per
# track (held-out runs apart: another split); candidates take their mainline's
# seeds first (a seed-matched pair shares data order and init), re-tests take
# seeds neither side ever ran.
SEED_OFFSET = {"baseline": 0, "candidate": 0, "retest": 1000, "heldout": 2000}
RHO_MIN_PAIRS = 10          # seed-matched pairs before the within-seed correlation is trusted
RHO_REFRESH = 0.1           # recompute it when the track's repeated values grew by this share (>= 20)
# Verdicts that close a candidate (no more seeds).
FINAL_VERDICTS = ("discard", "confirmed", "crash", "invalid")
# Trial statuses that count as a finished trial (an aborted one is re-run).
COUNTED = ("ok", "crash", "invalid")


@dataclass
class Lease:
    """A trial in flight: who runs it and when it last showed a sign of life."""
    trial_id: str
    worker: str | None
    track: str
    commit: str
    seed: int
    kind: str
    candidate_id: str | None
    started: float
    last_seen: float
    confirmed: bool = False       # False: dispatched by this process, no trial_started seen yet


@dataclass
class Merge:
    """A confirmed candidate merged into its track's mainline, re-tested before it is trusted."""
    candidate_id: str
    track: str
    commit: str                   # the merge commit
    previous: str                 # the trusted mainline it was merged onto
    retest: dict | None = None    # the latest retested event's data
    outcome: str | None = None    # None (re-testing) | "promoted" | "reverted"


@dataclass
class TrackState:
    name: str
    trusted: str                  # the mainline commit candidates are built on
    merge: str | None = None      # candidate id of the merge in flight
    confirmed: list = field(default_factory=list)   # candidate ids waiting to be merged, in order
    open: dict = field(default_factory=dict)        # candidate ids without a final verdict (ordered)
    judged: int = 0               # candidates with a final verdict (the agent's history grew)
    noise_ss: float = 0.0         # pooled within-commit sum of squares over the track's commits
    noise_dof: int = 0            # its degrees of freedom (sum of n - 1)


@dataclass
class Group:
    """Running mean and sum of squares (Welford) of one commit's ok values on one track."""
    values: list = field(default_factory=list)   # journal order (decide() looks at the first n)
    seeds: list = field(default_factory=list)    # the seed of each value
    kinds: list = field(default_factory=list)    # the trial kind of each value
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float, seed=None, kind=None):
        self.values.append(x)
        self.seeds.append(seed)
        self.kinds.append(kind)
        delta = x - self.mean
        self.mean += delta / len(self.values)
        self.m2 += delta * (x - self.mean)


class CampaignState(CampaignView):
    """Fold of one campaign's events; see the module docstring."""

    def __init__(self, campaign: str = ""):
        super().__init__(campaign)
        self.initial_commit: str | None = None
        self.fixed_hashes: dict = {}
        self.swarm: dict[str, TrackState] = {}      # track name -> TrackState
        self.merges: dict[str, Merge] = {}          # candidate id -> Merge
        self.groups: dict[tuple, Group] = {}        # (track, commit) -> ok values of validation trials
        self.done: dict[tuple, int] = {}            # (track, commit, kind) -> counted finished trials
        self.live: dict[tuple, set] = {}            # (track, commit, kind) -> trial ids in flight
        self.seeds: dict[tuple, set] = {}           # (track, commit, kind) -> seeds taken (live + counted)
        self.taken: dict[tuple, set] = {}           # (track, code, family) -> seeds taken (live + counted)
        self.code: dict[str, str] = {}              # commit -> content key of its editable files
        self.rho_cache: dict[str, tuple] = {}       # track -> (values seen, rho, pairs)
        self.owner: dict | None = None              # the coordinator holding the owner lease (its last claim)
        self.track_groups: dict[str, list] = {}     # track -> its Groups (within_seed_rho reads one track)
        self.leases: dict[str, Lease] = {}          # trial id -> Lease, trials in flight
        self.hyp: dict[str, dict] = {}              # hypothesis id -> hypothesis_proposed data
        self.pending_impl: dict[str, str] = {}      # hypothesis id -> mainline commit to build it on
        self.conflicts: dict[str, int] = {}         # hypothesis id -> merge conflicts so far
        self.fixes: dict[str, int] = {}             # hypothesis id -> fix attempts asked for so far
        self.keys: dict[tuple, set] = {}            # (track, mainline) -> hypothesis keys proposed there
        self.ports: set = set()                     # (source candidate id, track) already ported
        self.promotions: list = []                  # (track, candidate id, commit, previous) in order
        self.undecided: set = set()                 # candidate ids with trials newer than their verdict
        self.retest_undecided: set = set()          # merge candidate ids likewise
        self.judged_on: dict[tuple, int] = {}       # (track, mainline commit) -> candidates judged against it
        self.heldout: dict[tuple, str | None] = {}  # (track, commit) -> None (wanted) | trial id | "done"
        self.heldout_wanted = True                  # campaign config: evaluate the test split on promotion
        self.stop_requested: str | None = None      # reason of a `swarm stop` since the last (re)start
        self.fatal: str | None = None               # why the campaign cannot judge anything
        self.finished_count = 0                     # counted trials (all runs of the campaign)
        self.fingerprints: dict[str, str] = {}      # track -> data fingerprint of its first worker
        self.failures: dict[tuple, str] = {}        # (track, commit, kind) -> first crashed/invalid trial id

    # -- folding -----------------------------------------------------------------
    def apply(self, event, pos=None, now: float | None = None):
        """Fold one event. now: when a live event was seen here (leases use the local clock;
        replay uses the event's own time)."""
        super().apply(event, pos)
        if event.v > SCHEMA_VERSION or (self.ignored and self.ignored[-1][0] is event):
            return self  # newer than this reader, or a duplicate the journal view left out
        handler = getattr(self, "_swarm_" + event.type, None) if event.type.isidentifier() else None
        if handler is not None:
            try:
                handler(event, event.data, event.time if now is None else now)
            except (TypeError, ValueError, KeyError, AttributeError) as e:
                self.unknown.append((event, f"coordinator: unusable data ({type(e).__name__}: {e})"))
                print(f"warning: journal event {event.type} {event.id} ignored by the coordinator: "
                      f"{type(e).__name__}: {e}", file=sys.stderr)
        return self

    def track_state(self, name: str) -> TrackState:
        ts = self.swarm.get(name)
        if ts is None:
            ts = self.swarm[name] = TrackState(name, self.initial_commit or "")
        return ts

    def _swarm_campaign_started(self, ev, d, now):
        self.initial_commit = d.get("initial_commit") or self.initial_commit
        if d.get("initial_content") and self.initial_commit:
            self.code[self.initial_commit] = d["initial_content"]
        self.fixed_hashes = dict(d.get("fixed_hashes") or {})
        self.heldout_wanted = bool((d.get("config") or {}).get("heldout", True))
        self.stop_requested = self.fatal = None

    def _swarm_campaign_resumed(self, ev, d, now):
        self.stop_requested = self.fatal = None
        if isinstance(d.get("config"), dict):
            self.heldout_wanted = bool(d["config"].get("heldout", self.heldout_wanted))

    def _swarm_coordinator_lease(self, ev, d, now):
        # one coordinator per campaign: a claim takes the lease when nobody holds it, when it is the
        # holder's own renewal, or when the holder's lease expired (event times: a replay agrees)
        cur, who = self.owner, str(d["owner"])
        if d.get("release"):
            if cur is not None and cur["owner"] == who:
                self.owner = None
            return
        if cur is None or cur["owner"] == who or ev.time > cur["time"] + cur["lease_s"] \
                or (d.get("takeover_of") and d["takeover_of"] == cur["owner"]):   # its holder died here
            self.owner = {"owner": who, "host": d.get("host"), "pid": d.get("pid"),
                          "lease_s": float(d.get("lease_s") or 0), "time": ev.time}

    def owner_now(self, now: float) -> dict | None:
        """The coordinator whose owner lease is still valid at `now`, or None."""
        o = self.owner
        return o if o is not None and now <= o["time"] + o["lease_s"] else None

    def _swarm_stop_requested(self, ev, d, now):
        self.stop_requested = str(d.get("reason") or "swarm stop")

    def _swarm_worker_joined(self, ev, d, now):
        if d.get("track"):
            self.track_state(d["track"])
            if d.get("data_fingerprint"):
                self.fingerprints.setdefault(d["track"], d["data_fingerprint"])

    def _swarm_worker_heartbeat(self, ev, d, now):
        lease = self.leases.get(str(d.get("trial_id")))
        if lease is not None and lease.worker == d.get("worker"):
            lease.last_seen = max(lease.last_seen, now)

    def _swarm_trial_progress(self, ev, d, now):
        self._swarm_worker_heartbeat(ev, d, now)

    def _swarm_trial_started(self, ev, d, now):
        tid = str(d["trial_id"])
        lease = self.leases.get(tid)
        if lease is not None:
            lease.confirmed = True
            lease.worker = d.get("worker") or lease.worker
            lease.last_seen = max(lease.last_seen, now)
            return
        if self.trials[tid].status != "running":
            return
        self._add_lease(Lease(tid, d.get("worker"), d["track"], d["commit"], int(d.get("seed") or 0),
                              d.get("kind") or "candidate", d.get("candidate_id"), now, now, True))

    def _add_lease(self, lease: Lease):
        self.leases[lease.trial_id] = lease
        key = (lease.track, lease.commit, lease.kind)
        self.live.setdefault(key, set()).add(lease.trial_id)
        self.seeds.setdefault(key, set()).add(lease.seed)
        self.taken.setdefault(self.code_key(lease.track, lease.commit, lease.kind), set()).add(lease.seed)

    def code_key(self, track, commit, kind) -> tuple:
        """Where a trial's seed is booked: its track, its code, and its split (held-out runs
        evaluate another split, so their seeds are their own)."""
        return (track, self.code.get(commit, commit), "heldout" if kind == "heldout" else "val")

    def mark_dispatched(self, trial_id, worker, track, commit, seed, kind, candidate_id, now):
        """A trial handed to a worker, before its trial_started is in the journal."""
        self._add_lease(Lease(trial_id, worker, track, commit, seed, kind, candidate_id, now, now, False))

    def forget_dispatch(self, trial_id):
        """A dispatch that never started (its worker vanished before writing anything)."""
        lease = self.leases.pop(trial_id, None)
        if lease is not None:
            key = (lease.track, lease.commit, lease.kind)
            self.live.get(key, set()).discard(trial_id)
            self.seeds.get(key, set()).discard(lease.seed)
            self.taken.get(self.code_key(*key), set()).discard(lease.seed)

    def _swarm_trial_finished(self, ev, d, now):
        t = self.trials[str(d["trial_id"])]
        lease = self.leases.pop(t.trial_id, None)
        track, commit, kind = t.track, t.commit, t.kind
        if lease is not None:
            track, commit, kind = lease.track, lease.commit, lease.kind
        key = (track, commit, kind)
        self.live.get(key, set()).discard(t.trial_id)
        if t.status not in COUNTED:           # aborted: its seed is free again and it will be re-run
            if t.seed is not None and not any(self.leases[o].seed == t.seed
                                              for o in self.live.get(key, ()) if o in self.leases):
                self.seeds.get(key, set()).discard(int(t.seed))
                self.taken.get(self.code_key(*key), set()).discard(int(t.seed))
            return
        self.finished_count += 1
        self.done[key] = self.done.get(key, 0) + 1
        if t.status != "ok":
            self.failures.setdefault(key, t.trial_id)
        if t.seed is not None:
            self.seeds.setdefault(key, set()).add(int(t.seed))
            self.taken.setdefault(self.code_key(*key), set()).add(int(t.seed))
        ts = self.track_state(track)
        if t.value is not None and kind in VAL_KINDS:
            g = self.groups.get((track, commit))
            if g is None:
                g = self.groups[(track, commit)] = Group()
                self.track_groups.setdefault(track, []).append(g)
            before = g.m2
            g.add(t.value, None if t.seed is None else int(t.seed), kind)
            ts.noise_ss += g.m2 - before
            ts.noise_dof += len(g.values) >= 2
        if kind == "candidate" and t.candidate_id in ts.open:
            self.undecided.add(t.candidate_id)
        elif kind == "retest" and ts.merge is not None and commit in (self.merges[ts.merge].commit,
                                                                       self.merges[ts.merge].previous) \
                and (t.status == "ok" or commit == self.merges[ts.merge].commit):
            self.retest_undecided.add(ts.merge)
        elif kind in ("baseline", "retest") and t.status != "ok" and commit == ts.trusted:
            self.fatal = (f"a baseline trial of the mainline {commit[:12]} on track {track} "
                          f"{'crashed' if t.status == 'crash' else 'was invalid'} "
                          f"({t.crash_class}: {t.reason}); the campaign cannot judge anything "
                          f"against a mainline that does not run. Fix the repository (try "
                          f"`swarm trial --commit {commit[:12]}`) and resume.")
        elif kind == "heldout" and (track, commit) in self.heldout and self.heldout[(track, commit)] != "done":
            self.heldout[(track, commit)] = t.trial_id

    def _swarm_hypothesis_proposed(self, ev, d, now):
        hid = str(d["hypothesis_id"])
        self.hyp[hid] = dict(d)
        if d.get("mainline_commit"):
            self.pending_impl[hid] = d["mainline_commit"]
            self._add_key(d.get("track"), d["mainline_commit"], d)
        if d.get("ported_from"):
            self.ports.add((d["ported_from"], d.get("track")))

    def _swarm_candidate_created(self, ev, d, now):
        if d.get("content"):
            self.code[d["commit"]] = d["content"]
        hid = str(d.get("hypothesis_id"))
        self.pending_impl.pop(hid, None)
        ts = self.track_state(d["track"])
        ts.open[str(d["candidate_id"])] = None
        if hid in self.hyp and d.get("base_commit"):      # a re-implementation is taken on its new base too
            self._add_key(d["track"], d["base_commit"], self.hyp[hid])

    def _add_key(self, track, mainline, hyp: dict):
        self.keys.setdefault((track, mainline), set()).add(hypothesis_key(hyp))

    def _swarm_candidate_invalid(self, ev, d, now):
        self.pending_impl.pop(str(d.get("hypothesis_id")), None)

    def _swarm_verdict(self, ev, d, now):
        cid = str(d["candidate_id"])
        ts = self.track_state(d["track"])
        c = self.candidates.get(cid)
        if c is not None and len(c.verdicts) == 1 and d.get("base_commit") and d.get("mainline_mean") is not None:
            # its first look compared it with the mainline (the view folded this verdict already)
            key = (d["track"], d["base_commit"])
            self.judged_on[key] = self.judged_on.get(key, 0) + 1
        if d.get("verdict") in FINAL_VERDICTS:
            if ts.open.pop(cid, False) is None:
                ts.judged += 1
            self.undecided.discard(cid)
            if d["verdict"] == "confirmed" and cid not in self.merges and cid not in ts.confirmed:
                ts.confirmed.append(cid)
        elif self.candidate_done(cid) <= int(d.get("trials") or 0):
            self.undecided.discard(cid)

    def _swarm_merge_conflict(self, ev, d, now):
        cid = str(d["candidate_id"])
        ts = self.track_state(d["track"])
        if cid in ts.confirmed:
            ts.confirmed.remove(cid)
        hid = str(d.get("hypothesis_id"))
        self.conflicts[hid] = self.conflicts.get(hid, 0) + 1
        if d.get("action") == "reimplement" and d.get("mainline"):
            self.pending_impl[hid] = d["mainline"]
            if hid in self.hyp:
                self._add_key(d["track"], d["mainline"], self.hyp[hid])

    def _swarm_fix_requested(self, ev, d, now):
        hid = str(d.get("hypothesis_id"))
        self.fixes[hid] = max(self.fixes.get(hid, 0), int(d.get("attempt") or 1))
        if hid in self.hyp and d.get("mainline"):
            self.hyp[hid]["fix"] = {k: d.get(k) for k in ("attempt", "reason", "crash_class", "diff", "log_tail")}
            self.pending_impl[hid] = d["mainline"]
            self._add_key(d.get("track"), d["mainline"], self.hyp[hid])

    def _swarm_merged(self, ev, d, now):
        cid = str(d["candidate_id"])
        ts = self.track_state(d["track"])
        if cid in ts.confirmed:
            ts.confirmed.remove(cid)
        if d.get("content"):
            self.code[d["commit"]] = d["content"]
        self.merges[cid] = Merge(cid, d["track"], d["commit"], d.get("previous") or ts.trusted)
        ts.merge = cid

    def _merge_of(self, d) -> Merge | None:
        cid = d.get("candidate_id")
        if cid in self.merges:
            return self.merges[cid]
        ts = self.swarm.get(d.get("track"))
        if ts is not None and ts.merge is not None and self.merges[ts.merge].commit == d.get("commit"):
            return self.merges[ts.merge]
        return None

    def _swarm_retested(self, ev, d, now):
        m = self._merge_of(d)
        if m is None:
            return
        m.retest = dict(d)
        if d.get("final") or self.retest_done(m.candidate_id) <= int(d.get("trials") or 0):
            self.retest_undecided.discard(m.candidate_id)

    def _swarm_promoted(self, ev, d, now):
        ts = self.track_state(d["track"])
        m = self._merge_of(d)
        ts.trusted = d["commit"]
        if m is not None:
            m.outcome = "promoted"
            self.retest_undecided.discard(m.candidate_id)
            self.promotions.append((m.track, m.candidate_id, m.commit, m.previous))
            if ts.merge == m.candidate_id:
                ts.merge = None
        if self.heldout_wanted:
            self.heldout.setdefault((ts.name, d["commit"]), None)

    def _swarm_reverted(self, ev, d, now):
        ts = self.track_state(d["track"])
        m = self._merge_of(d)
        if m is not None:
            m.outcome = "reverted"
            self.retest_undecided.discard(m.candidate_id)
            if ts.merge == m.candidate_id:
                ts.merge = None

    def _swarm_heldout_result(self, ev, d, now):
        self.heldout[(d["track"], d["commit"])] = "done"

    # -- reading -------------------------------------------------------------------
    def live_count(self, track, commit, kind) -> int:
        return len(self.live.get((track, commit, kind), ()))

    def candidate_done(self, cid) -> int:
        c = self.candidates.get(cid)
        return self.done.get((c.track, c.commit, "candidate"), 0) if c else 0

    def retest_done(self, cid) -> int:
        m = self.merges.get(cid)
        return self.done.get((m.track, m.commit, "retest"), 0) if m else 0

    def commit_values(self, track, commit) -> list:
        g = self.groups.get((track, commit))
        return g.values if g is not None else []

    def noise(self, track, exclude: str | None = None):
        """(sigma, dof): pooled within-commit spread of every commit of the track with >= 2 ok
        trials (stats.noise_floor's formula, kept as running sums: O(1) per decision).
        exclude: a commit left out (decide() pools the judged commit's own spread already)."""
        ts = self.swarm.get(track)
        if ts is None:
            return None, 0
        ss, dof = ts.noise_ss, ts.noise_dof
        g = self.groups.get((track, exclude)) if exclude else None
        if g is not None and len(g.values) >= 2:
            ss, dof = ss - g.m2, dof - (len(g.values) - 1)
        return pooled_sigma(ss, dof)

    def next_seeds(self, track, commit, kind, n, prefer=(), avoid=()) -> list:
        """n seeds this commit's code never ran (live or counted) on the track: the seeds in
        prefer first (a candidate takes its mainline's, so the two can be compared seed by
        seed), then fresh ones from the kind's offset up. avoid: other commits whose code
        must not have run them either (a re-test's seeds are fresh for both sides)."""
        taken = set(self.taken.get(self.code_key(track, commit, kind), ()))
        for other in avoid:
            taken |= self.taken.get(self.code_key(track, other, kind), set())
        out = []
        for s in prefer:
            if len(out) == n:
                return out
            if s is not None and s not in taken and s not in out:
                out.append(s)
        s = SEED_OFFSET.get(kind, 0)
        while len(out) < n:
            if s not in taken and s not in out:
                out.append(s)
            s += 1
        return out

    def commit_seeds(self, track, commit) -> list:
        g = self.groups.get((track, commit))
        return list(g.seeds) if g is not None else []

    def values_by_seed(self, track, commit, kinds=VAL_KINDS) -> dict:
        """seed -> the first ok value of this commit on that seed (of the given kinds)."""
        g = self.groups.get((track, commit))
        out = {}
        if g is not None:
            for x, seed, kind in zip(g.values, g.seeds, g.kinds):
                if kind in kinds and seed is not None:
                    out.setdefault(seed, x)
        return out

    def retest_pairs(self, cid) -> tuple[list, list, list]:
        """(seeds, merge values, previous mainline values) of a re-test's finished seed-matched
        pairs, in the order the merge's re-test values came in."""
        m = self.merges[cid]
        prev = self.values_by_seed(m.track, m.previous, ("retest",))
        seeds, a, b = [], [], []
        for seed, x in self.values_by_seed(m.track, m.commit, ("retest",)).items():
            if seed in prev:
                seeds.append(seed)
                a.append(x)
                b.append(prev[seed])
        return seeds, a, b

    def within_seed_rho(self, track) -> tuple[float | None, int]:
        """The track's within-seed correlation of trial noise: residuals from each commit's
        own mean, correlated between different commits run on the same seed (the same data
        order and initialization). (rho, pairs); rho None below RHO_MIN_PAIRS pairs. Kept
        until the track's repeated values grew by RHO_REFRESH (it is O(values) to compute)."""
        cached = self.rho_cache.get(track)
        ts = self.swarm.get(track)
        seen = ts.noise_dof if ts is not None else 0
        if cached is not None and seen - cached[0] < max(20, RHO_REFRESH * cached[0]):
            return cached[1], cached[2]
        rho, pairs = within_seed_correlation(((g.values, g.seeds) for g in self.track_groups.get(track, ())),
                                             RHO_MIN_PAIRS)
        self.rho_cache[track] = (seen, rho, pairs)
        return rho, pairs

    def hypothesis_of(self, cid) -> dict:
        c = self.candidates.get(cid)
        return self.hyp.get(c.hypothesis_id, {}) if c and c.hypothesis_id else {}

    def running(self) -> bool:
        """Something the journal says is still running (a `swarm run` may hold it)."""
        return self.started is not None and self.stopped is None
