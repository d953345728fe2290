"""
The agent pipeline: hypotheses proposed, built into candidates, sent back when they crash,
and the analyst's lab notes, all running ahead of the workers.

    agents = AgentPipeline(cfg, rec, mainline, log)
    agents.plan(target, candidates, given, initial)   # before the campaign's first event: can refuse
    agents.start()                                     # after Ray: a Ray actor for a model backend
    agents.fill(pool.ready_tracks())                   # each loop pass: keep `buffer` candidates per track

Proposing, implementing and the analyst's notes are jobs of an agent runner
(coordinator/agent_runner.py: a Ray actor for a model backend, agent_threads calls at
once; in-process for the offline agent, which answers in milliseconds), so dispatching,
results and leases never wait on a model. Only the coordinator's thread touches the
journal and git: a job answers with plain data (hypotheses, the files an implementation
changed, a note, usage records) and harvest() turns it into events and commits.

A hypothesis that only sets constants, or carries a patch (a ported win), is built at once
here, no model call. A built candidate that fails the worker's checks, or a code change
that crashes or is invalid in its trial, goes back to its implementer MAX_FIXES times with
its diff, the reason and the log tail. An agent with nothing new is asked again with the
evidence every EXHAUSTED_RETRY_S: the campaign never ends for want of ideas. An agent
failure is the backend's, never the hypothesis's: a bad key, model or setting stops the
campaign; anything else is retried after a backoff.
"""

from __future__ import annotations

import importlib
import time
import uuid
from dataclasses import asdict

from agents.actor import AgentService
from agents.analyst import Analyst
from agents.anthropic_client import API_KEY_ENV
from agents.base import AgentError, Hypothesis, ImplementationError
from agents.factory import AgentSet, choose_backend
from coordinator.agent_runner import AgentRunner, AgentStartError
from coordinator.candidates import CandidateRejected, ConstantsImplementer, FilesImplementer
from coordinator.config import CampaignError
from coordinator.context import CRASH_LOG_TAIL, research_context
from coordinator.mainline import PatchImplementer
from coordinator.scheduler import fresh_candidates
from core.keys import hypothesis_key

AGENT_THREADS = 8          # agent calls in flight at once (agent_threads unset, a model backend)
MAX_FIXES = 1              # an implementation that does not run goes back to its implementer this often
NO_FIX = ("constants", "offline", "patch")  # implementers that would build the same thing again
ANALYST_EVENTS = ("hypothesis_proposed", "verdict", "trial_finished", "candidate_invalid", "merged",
                  "promoted", "reverted", "lab_note")   # what the analyst reads (agents/analyst.py)
AGENT_BACKOFF_S = 5.0      # first wait after an overloaded / rate-limited / unreachable agent
AGENT_BACKOFF_MAX_S = 120.0  # longest wait between agent retries
FATAL_AGENT_ERRORS = ("auth", "model", "config")  # AgentError kinds no retry can fix: the campaign stops
AGENT_STOP_WAIT_S = 2.0    # on stop: how long agent calls in flight get to answer
MIN_BATCH_PART = 4         # with a proposal in flight, another asks for at least buffer / this many
EXHAUSTED_RETRY_S = 30.0   # an agent that proposed nothing new is asked again after this (with the evidence)
FILL_PASSES = 3            # in-loop jobs per loop pass: propose -> hypotheses -> candidates in one pass


class AgentPipeline:
    def __init__(self, cfg, rec, mainline, log, backoff_s: float = AGENT_BACKOFF_S):
        self.cfg, self.rec, self.mainline, self.log = cfg, rec, mainline, log
        self.runner: AgentRunner | None = None
        self.backoff_s = backoff_s
        self.fatal: str | None = None      # why the agent backend cannot go on (the campaign stops)
        self.exhausted: dict = {}          # (track, mainline) -> (judged count, time) when the agent had nothing
        self.asked: dict = {}              # track -> hypotheses asked for by the proposals in flight
        self.in_impl: set = set()          # hypothesis ids being implemented
        self.backoff: dict = {}            # key -> (retry not before, failures so far)
        self.analyst_new: list = []        # events for the analyst since its last call
        self.verdicts_new = 10**9          # verdicts since the analyst last looked (at start: look)
        self.files_cache: dict = {}        # mainline commit -> (editable files, program.md)

    @property
    def state(self):
        return self.rec.state

    # ------------------------------------------------------------------ which agent, where
    def plan(self, target, candidates, given, initial: str):
        """How the agent will run, checked before anything is journaled (a bad backend or key
        refuses here): in-process for agents given as objects (`given`: a factory's, a test's)
        and the offline agent; a Ray actor for a model backend."""
        self.target, self.candidates = target, candidates
        self.patcher = PatchImplementer()
        self.constants = ConstantsImplementer()
        cfg = self.cfg
        threads = cfg.agent_threads
        if given is None and ":" in cfg.agent:
            given = self._from_factory(cfg.agent)
        if given is not None:
            proposer, implementer = given
            offline = proposer.name == "offline" and implementer.name == "offline"
            threads = (0 if offline else AGENT_THREADS) if threads is None else threads
            analyst = Analyst({"every": cfg.analyst_every or 1, "direction": target.direction}, None, client=None)
            agents = AgentSet(proposer.name, proposer, implementer, analyst, f"agents: {proposer.name}")
            self._plan = ("local", AgentService({"editable": list(target.editable)}, agents=agents), threads)
        else:
            program = self.mainline.read(initial, "program.md") or b""
            settings = {"offline": {"seed": cfg.seed}, **cfg.agents, "backend": cfg.agent,
                        "analyst": {"every": cfg.analyst_every or 1, "direction": target.direction},
                        "program_md": program.decode("utf-8", "replace")}
            settings.setdefault("editable", list(target.editable))
            try:
                backend, _ = choose_backend(settings)
                if backend == "offline" or threads == 0:
                    self._plan = ("local", AgentService(settings, announce=self.log), threads or 0)
                else:
                    settings["backend"] = backend       # the actor must not fall back to another backend
                    self._plan = ("actor", settings, AGENT_THREADS if threads is None else threads)
            except AgentError as e:
                raise CampaignError(f"agent: {e}") from None
        # constants set at once save a model call; agents given as objects run as given
        self.quick_constants = self._plan[0] == "actor"

    def _from_factory(self, name: str):
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise CampaignError(f"agent {name!r}: cannot load {attr} from {module} ({e})") from None
        made = factory(self.cfg, self.rec.journal)
        if not (isinstance(made, tuple) and len(made) == 2):
            raise CampaignError(f"agent factory {name} must return (proposer, implementer)")
        return made

    def start(self):
        mode, what, threads = self._plan
        if mode == "actor" and what["backend"] == "anthropic":
            key = (what.get("anthropic") or {}).get("api_key_env") or API_KEY_ENV
            if not AgentRunner.node_has_env(key):
                # a head started by a service, or before the key was exported: still run, here
                self.log(f"note: this machine's Ray node was started without ${key}, so the agents run in "
                         f"the coordinator's process instead of their own Ray actor; export {key} before "
                         f"`ray start --head` (or in the head service's environment) to give them one")
                mode, what = "local", AgentService(what, announce=self.log)
        if mode == "local":
            self.runner = AgentRunner.local(what, threads)
            return
        try:
            self.runner = AgentRunner.actor(what, threads)
        except AgentStartError as e:
            raise CampaignError(str(e)) from None
        self.log(f"{self.runner.message} (a Ray actor, {threads} calls at once)")

    # ------------------------------------------------------------------ what it is doing
    def busy(self, track: str) -> bool:
        """The agent is working on this track's next candidates (a worker may wait for them)."""
        return bool(self.asked.get(track) or self._backing_off(("propose", track)) or any(
            hid in self.in_impl or self._backing_off(("impl", hid)) for hid, _ in self._pending_impl(track)))

    def out_of_ideas(self, track: str) -> bool:
        return (track, self.state.swarm[track].trusted) in self.exhausted

    def waiting_for(self) -> str | None:
        """What the agent side holds up, if anything (said when nothing can be dispatched)."""
        if self.runner.busy():
            return "the agent's next hypotheses"
        if any(until > time.time() for until, _ in self.backoff.values()):
            return "the agent backend to answer again (backing off)"
        if self.exhausted:
            return f"the agent: it had nothing new; asking again every {EXHAUSTED_RETRY_S:g}s with the evidence"
        return None

    def _pending_impl(self, track):
        st = self.state
        return [(hid, base) for hid, base in st.pending_impl.items() if st.hyp.get(hid, {}).get("track") == track]

    def _backing_off(self, key) -> bool:
        until, _ = self.backoff.get(key, (0.0, 0))
        return time.time() < until

    def _failed(self, e, key, what: str):
        if e.kind in FATAL_AGENT_ERRORS:
            self.fatal = f"the agent backend cannot go on ({e.kind}): {e}"
            return
        _, tries = self.backoff.get(key, (0.0, 0))
        delay = min(AGENT_BACKOFF_MAX_S, self.backoff_s * 2 ** tries)
        self.backoff[key] = (time.time() + delay, tries + 1)
        self.log(f"the agent failed {what} ({e.kind}: {str(e)[:200]}); trying again in {delay:.0f}s")

    # ------------------------------------------------------------------ asking
    def fill(self, tracks: dict):
        """tracks: {track: ready workers}. Keep max(buffer, workers) candidates ahead per track."""
        for _ in range(FILL_PASSES):
            self.harvest()
            if self.fatal:
                return
            for track, n_workers in tracks.items():
                self._implement_pending(track)
                self._propose_more(track, n_workers)
        self._analyze()
        self.harvest()

    def _propose_more(self, track: str, n_workers: int):
        st = self.state
        ts = st.swarm[track]
        trusted = ts.trusted
        if self._backing_off(("propose", track)):
            return
        asked = self.asked.get(track, 0)
        want = (max(self.cfg.buffer, n_workers) - fresh_candidates(st, track) - len(self._pending_impl(track))
                - asked)
        dry = self.exhausted.get((track, trusted))
        if want <= 0 or (dry and dry[0] == ts.judged and time.time() - dry[1] < EXHAUSTED_RETRY_S):
            return                    # asked again once verdicts came in, or after a while
        if asked and want < max(1, self.cfg.buffer // MIN_BATCH_PART):
            return                    # a call is on its way: the next one waits for a worthwhile batch
        self.asked[track] = asked + want
        self.runner.submit("propose", ("propose", track), (track, trusted, want), "propose",
                           asdict(self._context(track, again=dry is not None)), want)

    def _context(self, track, again: bool):
        trusted = self.state.swarm[track].trusted
        if trusted not in self.files_cache:
            program = self.mainline.read(trusted, "program.md")
            self.files_cache[trusted] = (self.mainline.files(trusted, self.target.is_editable),
                                         program.decode("utf-8", "replace") if program else "")
        files, program = self.files_cache[trusted]
        return research_context(self.state, track, files, program, again=again)

    def _implement_pending(self, track: str):
        st = self.state
        for hid, base in self._pending_impl(track):
            if hid in self.in_impl or self._backing_off(("impl", hid)):
                continue
            h = Hypothesis.from_dict(st.hyp[hid])
            cid = uuid.uuid4().hex[:12]
            # a ported win or an agent's diff: git apply; constants only: set them. Here, at once
            quick = (self.patcher if h.patch else
                     self.constants if h.params and self.quick_constants else None)
            if quick is not None:
                try:
                    self.candidates.commit(h, quick, base, cid, track)
                    continue
                except ImplementationError as e:
                    if h.patch and not h.params:
                        self._invalid(h, cid, track, base, e.reason)
                        continue              # no model can do better than the patch it was given
            self.in_impl.add(hid)
            self.runner.submit("implement", ("impl", hid), (h, base, cid, track), "implement",
                               h.to_dict(), self.candidates.base_files(base))

    def _analyze(self):
        """Every analyst_every verdicts, the analyst's lab note (it decides from the journal itself)."""
        if not self.cfg.analyst_every or self.runner.busy("analyst") or self.verdicts_new < self.cfg.analyst_every:
            return
        self.verdicts_new = 0
        new, self.analyst_new = self.analyst_new, []
        self.runner.submit("analyst", ("analyst",), None, "lab_note", new)

    # ------------------------------------------------------------------ what the campaign tells it
    def observe(self, ev):
        """Every event read: keep what the analyst reads (its note is due after analyst_every verdicts)."""
        if not self.cfg.analyst_every or ev.type not in ANALYST_EVENTS:
            return
        d = ev.data
        if ev.type == "trial_finished":
            if d.get("status") in (None, "ok"):
                return
            d = {k: d.get(k) for k in ("trial_id", "track", "status", "crash_class", "reason")}
        elif ev.type == "hypothesis_proposed" and d.get("patch"):
            d = {k: v for k, v in d.items() if k != "patch"}
        self.analyst_new.append({"type": ev.type, "source": ev.source, "data": d})

    def on_verdict(self, verdict: dict):
        """A code change that crashed or was invalid goes back to its implementer with the reason,
        the log's tail and its own diff: the worker's smoke run, right before the trial on the
        same accelerator, is the implementer's test run."""
        self.verdicts_new += 1
        if verdict["verdict"] not in ("crash", "invalid"):
            return
        st = self.state
        c = st.candidates.get(verdict["candidate_id"])
        if c is None or not c.hypothesis_id:
            return
        t = st.trials.get(verdict.get("trial_id")) if verdict.get("trial_id") else None
        diff = self.mainline.diff(c.base_commit, c.commit) if c.base_commit and c.commit else ""
        self._request_fix(c.hypothesis_id, c.candidate_id, c.track, c.implementer, verdict.get("reason") or "",
                          verdict.get("crash_class") or verdict["verdict"], diff, (t.log_tail if t else "") or "")

    def _request_fix(self, hid, cid, track, implementer, reason, crash_class, diff, log_tail):
        st = self.state
        attempt = st.fixes.get(hid, 0) + 1
        if implementer in NO_FIX or hid not in st.hyp or attempt > MAX_FIXES or st.fatal:
            return
        if st.hyp[hid].get("params"):
            return     # constants that crash (a depth that runs out of memory) are a finding, not a bug
        self.rec.emit("fix_requested", track=track, candidate_id=cid, hypothesis_id=hid,
                      mainline=st.swarm[track].trusted, attempt=attempt, reason=reason[:2000],
                      crash_class=crash_class, diff=diff[:20_000], log_tail=log_tail[-CRASH_LOG_TAIL:])
        self.log(f"asking the {implementer} implementer to fix {str(st.hyp[hid].get('title'))[:60]} "
                 f"({crash_class}; attempt {attempt + 1} of {MAX_FIXES + 1})")

    def _invalid(self, h, cid: str, track: str, base: str, why: str):
        self.rec.emit("candidate_invalid", candidate_id=cid, hypothesis_id=h.hypothesis_id, track=track,
                      reason=why, base_commit=base)
        self.log(f"could not implement {h.title[:60]}: {why[:200]}")

    # ------------------------------------------------------------------ answers
    def harvest(self):
        """Turn the agent's answers into events (and candidates into commits)."""
        for job in self.runner.finished():
            answer = job.answer or {}
            if not answer.get("usage_emitted"):
                for rec in answer.get("usage") or []:
                    self.rec.emit("agent_usage", **rec)
            if job.kind == "analyst":
                self._on_note(job)
            elif job.kind == "propose":
                self._on_proposals(job)
            else:
                self._on_implementation(job)

    def _job_error(self, job):
        """The AgentError of a job that failed, or None (answered, or failed in another way)."""
        a = job.answer or {}
        if isinstance(job.error, AgentError):
            return job.error
        if a.get("error_kind") and (a.get("error") or a.get("agent_error")):
            return AgentError(a.get("error") or a.get("reason") or "agent error", kind=a["error_kind"])
        return None

    def _on_note(self, job):
        if job.error is not None:
            self.log(f"the analyst failed: {type(job.error).__name__}: {job.error}")
            return
        note = job.answer.get("note")
        if note:
            self.rec.emit("lab_note", author=note.get("author"), title=note.get("title"), text=note.get("text"))
            self.log(f"lab note: {str(note.get('title'))[:100]}")

    def _on_proposals(self, job):
        st = self.state
        track, asked_on, n = job.payload
        self.asked[track] = max(0, self.asked.get(track, 0) - n)
        err = self._job_error(job)
        if err is None and job.error is not None:     # a proposer's unexpected exception: retried like an outage
            e = job.error
            err = AgentError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", kind="api")
        if err is not None:
            self._failed(err, job.key, f"to propose for {track}")
            return
        self.backoff.pop(job.key, None)
        hs = [Hypothesis.from_dict(d) for d in job.answer.get("hypotheses") or []]
        ts = st.swarm[track]
        trusted = ts.trusted          # the mainline may have moved while the agent thought
        known = st.keys.get((track, trusted), set())
        fresh = [h for h in hs if hypothesis_key(h) not in known]
        if not fresh:
            if (track, trusted) not in self.exhausted:
                self.log(f"the {self.runner.backend} agent has no new hypothesis for {track} on "
                         f"mainline {trusted[:12]}: asking again with the evidence")
            self.exhausted[(track, trusted)] = (ts.judged, time.time())
            return
        self.exhausted.pop((track, trusted), None)
        for h in fresh:
            if hypothesis_key(h) in st.keys.get((track, trusted), set()):
                continue              # the same idea twice in one answer
            data = h.to_dict()
            data.update(track=track, mainline_commit=trusted)
            self.rec.emit("hypothesis_proposed", **data)

    def _on_implementation(self, job):
        st = self.state
        h, base, cid, track = job.payload
        self.in_impl.discard(h.hypothesis_id)
        if st.pending_impl.get(h.hypothesis_id) != base:
            return                    # built meanwhile, or to be rebuilt on a new mainline
        err = self._job_error(job)
        if err is not None:
            self._failed(err, job.key, f"to implement {h.title[:60]!r}")
            return
        a = job.answer or {}
        if job.error is not None or not a.get("ok"):   # an agent's failure is the hypothesis's
            why = a.get("reason") or f"the {self.runner.backend} implementer failed: " \
                                     f"{type(job.error).__name__}: {job.error}"
            self._invalid(h, cid, track, base, why)
            return
        self.backoff.pop(job.key, None)
        impl = FilesImplementer(a.get("files") or {}, a.get("implementer") or self.runner.backend)
        try:
            self.candidates.commit(h, impl, base, cid, track)
        except CandidateRejected as e:
            self._invalid(h, cid, track, base, e.reason)
            self._request_fix(h.hypothesis_id, cid, track, impl.name, e.reason, "invalid", e.diff, "")
        except ImplementationError as e:
            self._invalid(h, cid, track, base, e.reason)

    # ------------------------------------------------------------------ stop
    def last_jobs(self):
        """Agent jobs about to finish still land (a lab note, an answered call's usage)."""
        try:
            self.runner.wait(AGENT_STOP_WAIT_S)
            self.harvest()
        except Exception as e:
            self.log(f"warning: the agent's last answers were lost at stop: {type(e).__name__}: {e}")

    def shutdown(self):
        if self.runner is not None:
            self.runner.shutdown()          # a model call in flight finishes on its own, unread
