"""
The campaign loop: the Ray driver that keeps every worker busy and writes every decision.

    reason = Campaign(cfg).run()     # until --until, --max-trials, Ctrl-C or `swarm stop`

This module only composes; each part lives in a module of its own:

  recorder.py   the journal: sync (new events -> state), emit, outages, the owner lease
  state.py      the state: a fold of the journal (trials, candidates, merges, seeds, noise)
  scheduler.py  what is due: the next decision, the next trial for an idle worker
  decisions.py  decisions journaled then done: verdicts, merges, promotions, reverts, ports
  pool.py       the Ray workers: joining, dispatch, results, leases, stop
  pipeline.py   the agent, ahead of the workers: proposals, implementations, fixes, notes
  candidates.py a hypothesis built into a checked commit; context.py what the proposer sees

One pass of the loop:
  sync       read new journal events into the state (workers' results, progress,
             heartbeats, stop requests; the coordinator's own decisions too)
  reconcile  make every decision the state is missing
  leases     a trial whose worker stopped answering loses it (journaled as
             aborted, counted once) and is needed again
  fill       the agent runs ahead, keeping `buffer` candidates ready per track
  dispatch   scheduler assignments -> run_trial.remote on idle workers; a worker with
             nothing to do while the agent works runs another baseline of its mainline
  wait       ray.wait on running trials (and joining workers), at most poll_s

The state is the journal: every decision is an event first and an effect
(a branch moved) second, so a coordinator killed at any point and restarted
with the same campaign rebuilds the same state, aborts and re-runs the trials
it had in flight, resets the mainline branches to what the journal says, and
never merges a candidate twice.
"""

from __future__ import annotations

import gc
import signal
import threading
import time

from coordinator.budget import require_budget
from coordinator.candidates import Candidates
from coordinator.config import CampaignError, SwarmConfig, config_from_dict, default_campaign_tag
from coordinator.decisions import Decisions
from coordinator.mainline import MainlineRepo
from coordinator.pipeline import AGENT_BACKOFF_S, AgentPipeline
from coordinator.pool import WorkerPool
from coordinator.recorder import Recorder
from coordinator.scheduler import Policy, schedule
from coordinator.state import CampaignState
from journal import open_journal
from core.target import Target

__all__ = ["Campaign", "CampaignError"]

# Settings that define how a campaign judges: a resumed campaign keeps the ones it started with.
CAMPAIGN_DEFINING = ("baseline_trials", "retest_trials", "confidence", "retest_confidence", "min_effect",
                     "max_seeds", "time_budget", "seed", "smoke", "heldout")


def _log(msg: str):
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


class Campaign:
    def __init__(self, cfg: SwarmConfig, agent=None, resume_only: bool = False, log=_log, worker_class=None):
        """agent: (proposer, implementer) to use instead of cfg.agent. resume_only: refuse to start
        a new campaign (swarm resume). worker_class: a Ray actor class with worker/actor.py's API
        (default: the real worker; bench/scale.py passes a stand-in)."""
        self.cfg, self.log = cfg, log
        self.resume_only = resume_only
        self.given_agent = agent
        self.worker_class = worker_class
        self.agent_backoff_s = AGENT_BACKOFF_S   # first wait after a failed agent call (tests shorten it)
        self.interrupted = 0
        self.opened = False                # campaign_started/resumed written by this run
        self.waiting: str | None = None    # what the campaign waits for, as last said
        self.mainline: MainlineRepo | None = None
        self.journal = self.rec = self.pool = self.agents = None

    @property
    def state(self) -> CampaignState | None:
        return self.rec.state if self.rec else None

    # ------------------------------------------------------------------ start
    def run(self) -> str:
        """Run until a stop condition; returns the reason. Raises CampaignError when it cannot start."""
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        reason, error = "stopped", False
        try:
            self._open()
            self.pool.start_ray()
            self.agents.start()
            self._begin()
            self.pool.discover(force=True)
            reason, error = self._loop()
            return reason
        except KeyboardInterrupt:
            reason, error = "interrupted twice: trials were abandoned", True
            raise
        except BaseException as e:
            reason, error = f"coordinator error: {type(e).__name__}: {e}", True
            raise
        finally:
            try:
                self._shutdown(reason, error)
            finally:
                if old_handler is not None:
                    signal.signal(signal.SIGINT, old_handler)

    def _on_sigint(self, signum, frame):
        self.interrupted += 1
        if self.interrupted == 1:
            self.log("Ctrl-C: stopping (running trials are aborted and re-queued on resume); "
                     "Ctrl-C again to quit at once")
        else:
            raise KeyboardInterrupt

    def _open(self):
        """Everything that can refuse to start is checked here, before the campaign's first event
        (the owner lease aside)."""
        cfg = self.cfg
        self.mainline = MainlineRepo(cfg.repo_path, None, cfg.swarm_dir)   # a git repo, or a clear error
        self.mainline.head_commit()                                         # with a commit, or a clear error
        if not cfg.journal:
            cfg.swarm_dir.mkdir(parents=True, exist_ok=True)
        cfg.campaign = tag = self._campaign_tag()
        self.journal = open_journal(cfg.journal_url, campaign=tag)
        self.mainline.tag = tag
        self.rec = Recorder(self.journal, CampaignState(tag), self.log,
                            impatient=lambda: self.interrupted > 1)
        self.pool = WorkerPool(cfg, self.rec, self.mainline, self.log, self.worker_class)
        self.agents = AgentPipeline(cfg, self.rec, self.mainline, self.log, self.agent_backoff_s)
        self.rec.on_event, self.rec.on_back = self.agents.observe, self.pool.touch
        self.rec.sync(live=False)
        gc.freeze()     # the replayed state lives as long as the process: keep it out of GC passes
        self.rec.claim()

        st = self.state
        if st.started is None:
            self.initial = initial = self.mainline.head_commit()
            toml = self.mainline.read(initial, "target.toml")
            self.target = Target.from_toml(toml.decode(), "target.toml") if toml is not None else Target()
        else:
            self._check_resumable()
            initial = st.initial_commit
        require_budget(cfg.time_budget, self.target, self.mainline.read(initial, "prepare.py"))  # a fork may have none
        self.policy = Policy.from_config(cfg, self.target.direction)
        self.candidates = Candidates(cfg, self.rec, self.mainline, self.target)
        self.agents.plan(self.target, self.candidates, self.given_agent, initial)
        self.decisions = Decisions(self.rec, self.mainline, self.policy, self.candidates.code, self.log,
                                   self.agents.on_verdict)

    def _campaign_tag(self) -> str:
        cfg = self.cfg
        probe = open_journal(cfg.journal_url)
        try:
            have = probe.campaigns()
        finally:
            probe.close()
        tag = cfg.campaign
        if tag is None:
            if not self.resume_only:
                return default_campaign_tag()
            if not have:
                raise CampaignError(f"no campaign to resume in {cfg.journal_url}: start one with `swarm run`")
            tag = have[0]
        if self.resume_only and tag not in have:
            raise CampaignError(f"no campaign {tag!r} in {cfg.journal_url} (campaigns there: "
                                f"{', '.join(have) or 'none'}); start it with `swarm run --campaign {tag}`")
        return tag

    def _check_resumable(self):
        """The campaign's repository and settings, before anything is journaled."""
        st = self.state
        if not st.initial_commit or self.mainline.rev(st.initial_commit) is None:
            raise CampaignError(f"campaign {self.cfg.campaign}: the repository {self.cfg.repo_path} does not "
                                f"have its initial commit {st.initial_commit}; resume it from the clone it "
                                f"was started in")
        self.target = Target.from_dict(st.target) if st.target else Target()
        recorded = config_from_dict(st.config or {})
        kept = []
        for key in CAMPAIGN_DEFINING:
            if key in (st.config or {}) and getattr(self.cfg, key) != getattr(recorded, key):
                kept.append(f"{key}={getattr(recorded, key)!r}")
                setattr(self.cfg, key, getattr(recorded, key))
        if kept:
            self.log(f"note: resuming with the campaign's own {', '.join(kept)}")
        if self.cfg.workers is None and recorded.workers:
            self.cfg.workers = recorded.workers          # the campaign's own worker count, unless given
            self.log(f"note: resuming with the campaign's {recorded.workers} worker(s)")

    def _begin(self):
        if self.state.started is None:
            self._start_new(self.initial)
        else:
            self._resume()
        self.opened = True

    def _start_new(self, initial: str):
        cfg = self.cfg
        dirty = self.mainline.uncommitted(list(self.target.editable) + list(self.target.fixed))
        if dirty:
            self.log(f"note: uncommitted changes in {', '.join(dirty)} are not part of the campaign "
                     f"(it starts from the commit {initial[:12]}); commit them first to include them")
        self.mainline.pin_initial(initial)
        fixed = self.mainline.fixed_hashes(initial, self.target.fixed)
        self.rec.emit("campaign_started", config=cfg.to_dict(), target=self.target.to_dict(),
                      initial_commit=initial, fixed_hashes=fixed, repo=str(cfg.repo_path),
                      initial_content=self.candidates.code(initial))
        self.log(f"campaign {cfg.campaign}: started from {initial[:12]} in {cfg.repo_path} "
                 f"(journal {self.journal.url})")
        if cfg.smoke is not False and not self.target.smoke:   # a fork: each trial's log says it again
            self.log("note: no smoke runs: target.toml says smoke = false (its evaluation cannot be shortened)")

    def _resume(self):
        st = self.state
        self.rec.emit("campaign_resumed", config=self.cfg.to_dict())
        # trials a previous coordinator had in flight keep their lease: a worker that still
        # reports finishes them (its result counts); a silent one loses them (aborted, re-run)
        if st.leases:
            self.log(f"{len(st.leases)} trial(s) were in flight: they are re-queued unless their worker "
                     f"reports within the lease ({self.cfg.lease_s:g}s)")
        for track, ts in st.swarm.items():
            want = st.merges[ts.merge].commit if ts.merge else ts.trusted
            have = self.mainline.branch_commit(track)
            if have != want:
                self.mainline.set_branch(track, want)
                self.log(f"mainline {self.mainline.branch(track)} was at {(have or 'nothing')[:12]}, the "
                         f"journal says {want[:12]}: reset it")
        self.log(f"campaign {self.cfg.campaign}: resumed ({st.count} events, {st.finished_count} trials, "
                 f"{len(st.merges)} merges)")

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> tuple[str, bool]:
        pool, agents = self.pool, self.agents
        while True:
            self.rec.sync()
            self.rec.renew()
            stop = self._stop_condition()
            if stop:
                return stop
            self.decisions.reconcile(pool.ready_tracks())
            if self.state.fatal:
                continue
            pool.check_leases()
            pool.discover()
            agents.fill(pool.ready_tracks())
            spare = lambda track: agents.busy(track) or agents.out_of_ideas(track)  # noqa: E731
            if not pool.dispatch(lambda idle, spares: schedule(self.state, idle, self.policy, spares), spare):
                self._say_waiting()
            if pool.empty():
                problems = "; ".join(f"{k}: {v}" for k, v in pool.problems.items())
                if pool.own_ray or problems:
                    return f"no usable worker{(': ' + problems) if problems else ''}", True
            pool.wait(self.cfg.poll_s)

    def _stop_condition(self) -> tuple[str, bool] | None:
        st = self.state
        if self.interrupted:
            return "interrupted (Ctrl-C)", False
        if st.stop_requested:
            return f"stop requested ({st.stop_requested})", False
        if st.fatal:
            return st.fatal, True
        if self.agents.fatal:
            return self.agents.fatal, True
        if self.cfg.until is not None and time.time() >= self.cfg.until:
            return "reached --until", False
        if self.cfg.max_trials is not None and self.pool.finished_here >= self.cfg.max_trials \
                and not self.pool.running():
            self.decisions.reconcile(self.pool.ready_tracks())
            return f"reached --max-trials {self.cfg.max_trials}", False
        return None

    def _say_waiting(self):
        """Nothing to dispatch: say once what the campaign waits for (it never ends for want of
        ideas: an agent with nothing new is asked again, with the journal's evidence)."""
        if self.pool.running():
            why = "the running trials"
        elif self.pool.joining or not self.pool.workers:
            why = "workers to join"
        else:
            why = self.agents.waiting_for() or "work"
        if self.rec.outage or getattr(self.journal, "waiting", None):
            why = f"the journal ({self.rec.outage or self.journal.waiting})"
        if why != self.waiting:
            self.waiting = why
            self.log(f"waiting for {why}")

    # ------------------------------------------------------------------ stop
    def _shutdown(self, reason: str, error: bool):
        if self.rec is not None:
            self.rec.closing = True
        try:
            if self.opened:             # the campaign (re)started: close it in the journal
                self.pool.abort_running(reason)
                self.decisions.reconcile_quietly(self.pool.ready_tracks())
                self.agents.last_jobs()
                self.rec.emit("campaign_stopped", reason=reason, error=error)
                self.rec.release()
                self.log(f"campaign {self.cfg.campaign} stopped: {reason}")
                self.pool.stop_workers()
            elif self.rec is not None:
                self.rec.release()
        finally:
            for close in (self.agents and self.agents.shutdown, self.pool and self.pool.shutdown_ray,
                          self.journal and self.journal.close):
                if close:
                    close()
