"""
Decisions: what the state says is due, journaled, then done to the mainline branches.

    decisions = Decisions(rec, mainline, policy, code, log, on_verdict)
    decisions.reconcile(tracks)      # every decision the state is missing, then ports of wins

scheduler.next_decision(state, policy) names the next decision the journal lacks (a
verdict on a candidate, a re-test's outcome, a promotion or revert, the next merge, a
held-out result); each is written as an event first and its effect (a branch moved)
second, so a coordinator killed in between redoes the effect from the journal on resume
and never decides twice. A promotion on one track becomes a hypothesis, carrying its
patch, on every other track that has workers (a port).
"""

from __future__ import annotations

import uuid

from coordinator.scheduler import next_decision

PORT_AGENT = "port"        # agent name of hypotheses that carry another track's win


class Decisions:
    def __init__(self, rec, mainline, policy, code, log, on_verdict):
        """code(commit): the content hash of a commit's editable files (candidates.Candidates.code).
        on_verdict(decision): a verdict was journaled (the agent pipeline counts them and asks
        for fixes of crashed code)."""
        self.rec, self.mainline, self.policy = rec, mainline, policy
        self.code, self.log, self.on_verdict = code, log, on_verdict

    def reconcile(self, tracks):
        """Make every decision the state is missing, then port wins to `tracks` (with workers)."""
        while True:
            step = next_decision(self.rec.state, self.policy)
            if step is None:
                if not self._port_wins(tracks):
                    return
                continue
            kind = step[0]
            if kind == "verdict":
                d = step[1]
                self.rec.emit("verdict", **d)
                h = self.rec.state.hypothesis_of(d["candidate_id"])
                self.log(f"verdict {d['verdict']:<9} {h.get('title', d['candidate_id'])[:60]} "
                         f"(trials {d['trials']}, effect {fmt(d.get('effect_bpb'), '+.4f')}, "
                         f"{fmt(d.get('effect_sigma'), '+.1f')} sigma, p={fmt(d.get('p_value'))})")
                self.on_verdict(d)
            elif kind == "retested":
                d = step[1]
                self.rec.emit("retested", **d)
                self.log(f"re-test of merge {d['commit'][:12]} on {d['track']}: {d['verdict']} "
                         f"after {d['trials']} trials (p={fmt(d.get('p_value'))})")
            elif kind in ("promote", "revert"):
                self._finish_merge(step[1])
            elif kind == "merge":
                self._merge(step[1], step[2])
            elif kind == "heldout_result":
                d = step[1]
                self.rec.emit("heldout_result", **d)
                self.log(f"held-out test of {d['commit'][:12]} on {d['track']}: "
                         f"{fmt(d['test_bpb']) if d['test_bpb'] is not None else d['reason'] or d['status']}")

    def reconcile_quietly(self, tracks):
        """At stop: the last decisions, never an exception (campaign_stopped must still be written)."""
        try:
            self.reconcile(tracks)
        except Exception as e:
            self.log(f"warning: last decisions failed at stop: {type(e).__name__}: {e}")

    def _merge(self, track: str, cid: str):
        st = self.rec.state
        ts = st.swarm[track]
        c = st.candidates[cid]
        h = st.hyp.get(c.hypothesis_id, {})
        commit, why, conflict = self.mainline.merge(c.commit, ts.trusted, cid, h.get("title", cid))
        if commit is None:
            again = conflict and st.conflicts.get(c.hypothesis_id, 0) == 0
            action = "reimplement" if again else "drop"
            self.rec.emit("merge_conflict", track=track, candidate_id=cid, hypothesis_id=c.hypothesis_id,
                          mainline=ts.trusted, reason=why, action=action)
            self.log(f"merge of {h.get('title', cid)[:60]} conflicts ({why}): "
                     f"{'re-implementing it on the new mainline' if again else 'dropped'}")
            return
        self.rec.emit("merged", track=track, candidate_id=cid, commit=commit, previous=ts.trusted,
                      hypothesis_id=c.hypothesis_id, content=self.code(commit))
        self.mainline.set_branch(track, commit)
        self.log(f"merged {h.get('title', cid)[:60]} into {self.mainline.branch(track)} as {commit[:12]}; "
                 f"re-testing it")

    def _finish_merge(self, m):
        r = m.retest
        if r["verdict"] == "confirmed":
            vals = self.rec.state.commit_values(m.track, m.commit)
            self.rec.emit("promoted", track=m.track, commit=m.commit, previous=m.previous,
                          val_bpb=sum(vals) / len(vals) if vals else None, candidate_id=m.candidate_id,
                          p_value=r.get("p_value"), effect_bpb=r.get("effect_bpb"))
            self.mainline.set_branch(m.track, m.commit)
            self.log(f"promoted {m.commit[:12]} on {m.track} (effect {fmt(r.get('effect_bpb'), '+.4f')})")
        else:
            reason = r.get("reason") or (f"the merged mainline is not better than {m.previous[:12]} "
                                         f"with fresh seeds ({r.get('test')})")
            self.rec.emit("reverted", track=m.track, commit=m.commit, restored=m.previous, reason=reason,
                          candidate_id=m.candidate_id)
            self.mainline.set_branch(m.track, m.previous)
            self.log(f"reverted {m.commit[:12]} on {m.track}: {reason[:120]}")

    def _port_wins(self, tracks) -> bool:
        """A promotion on one track becomes a hypothesis, with its patch, on every other track."""
        st = self.rec.state
        made = False
        for track, cid, commit, previous in list(st.promotions):
            for other in tracks:
                if other == track or (cid, other) in st.ports:
                    continue
                src = st.hypothesis_of(cid)
                self.rec.emit("hypothesis_proposed", hypothesis_id=uuid.uuid4().hex,
                              title=f"port: {src.get('title', cid)}",
                              rationale=f"Promoted on track {track} (merge {commit[:12]}); the same change on "
                                        f"this track. {src.get('rationale', '')}".strip(),
                              expected_effect=src.get("expected_effect"), risk=src.get("risk"), agent=PORT_AGENT,
                              track=other, mainline_commit=st.swarm[other].trusted, params=src.get("params"),
                              patch=self.mainline.diff(previous, commit), ported_from=cid)
                made = True
        return made


def fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)
