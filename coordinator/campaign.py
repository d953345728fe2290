"""
The campaign loop: the Ray driver that keeps every worker busy and writes every decision.

    reason = Campaign(cfg).run()     # until --until, --max-trials, Ctrl-C or `swarm stop`

One pass of the loop:
  sync       read new journal events into the state (workers' results, progress,
             heartbeats, stop requests; the coordinator's own decisions too)
  reconcile  make every decision the state is missing: verdicts, re-test
             decisions, promotions and reverts, the next merge, held-out results,
             ports of a win to the other tracks
  leases     a trial whose worker stopped answering loses it (journaled as
             aborted, counted once) and is needed again
  fill       the agent runs ahead: proposals, implementations and the analyst's lab notes
             are jobs of an agent actor (coordinator/agent_runner.py: a Ray actor for a model
             backend, agent_threads calls at once), keeping `buffer` candidates ready per
             track; answers become events here (the coordinator is the journal's single
             writer, agent_usage included), so a slow model never holds up the loop
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
import hashlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agents.base import ImplementationError
from coordinator.agent_runner import AgentRunner, AgentStartError
from coordinator.budget import require_budget, track_of
from coordinator.config import SwarmConfig, config_from_dict, default_campaign_tag
from coordinator.mainline import MainlineRepo, PatchImplementer
from coordinator.scheduler import Policy, fresh_candidates, next_decision, schedule
from coordinator.state import CampaignState

SOURCE = "coordinator"
# Settings that define how a campaign judges: a resumed campaign keeps the ones it started with.
CAMPAIGN_DEFINING = ("baseline_trials", "retest_trials", "confidence", "min_effect", "max_seeds",
                     "time_budget", "seed", "smoke", "heldout")
DISCOVER_S = 10.0          # how often the cluster is checked for mlx resources without a worker
ABORT_WAIT_S = 15.0        # on stop: how long aborted trials get to report back
STOP_WAIT_S = 10.0         # on stop: how long workers get to flush their journal and exit
MAX_WORKER_ABORTS = 3      # a worker that aborts this many trials in a row is retired
PORT_AGENT = "port"        # agent name of hypotheses that carry another track's win
AGENT_THREADS = 8          # agent calls in flight at once (agent_threads unset, a model backend)
CONSTANTS_IMPLEMENTER = "constants"  # hypotheses that only set constants are applied here, no model call
MAX_FIXES = 1              # an implementation that does not run goes back to its implementer this often
NO_FIX = ("constants", "offline", "patch")  # implementers that would build the same thing again
ANALYST_EVENTS = ("hypothesis_proposed", "verdict", "trial_finished", "candidate_invalid", "merged",
                  "promoted", "reverted", "lab_note")   # what the analyst reads (agents/analyst.py)
AGENT_BACKOFF_S = 5.0      # first wait after an overloaded / rate-limited / unreachable agent
AGENT_BACKOFF_MAX_S = 120.0  # longest wait between agent retries
FATAL_AGENT_ERRORS = ("auth", "model", "config")  # AgentError kinds no retry can fix: the campaign stops
AGENT_STOP_WAIT_S = 2.0    # on stop: how long agent calls in flight get to answer
MIN_BATCH_PART = 4         # with a proposal in flight, another asks for at least buffer / this many
CRASH_LOG_TAIL = 2000      # characters of a crashed trial's log the proposer sees
EXHAUSTED_RETRY_S = 30.0   # an agent that proposed nothing new is asked again after this (with the evidence)
JOURNAL_OUTAGE_S = 600.0   # an unreachable journal is waited out this long (its event kept), then the campaign stops
JOURNAL_RETRY_S = 2.0      # between tries while the journal is unreachable
OWNER_LEASE_S = 90.0       # one coordinator per campaign: its lease in the journal lasts this long...
OWNER_RENEW_S = 20.0       # ...and is renewed this often


class CampaignError(RuntimeError):
    """The campaign cannot start or go on; the message says what to do."""


class FilesImplementer:
    """Writes the files an agent job produced (path -> text, None: deleted) into the scratch
    worktree, so the coordinator's thread commits them like any implementation."""

    def __init__(self, files: dict, name: str):
        self.files, self.name = files, name

    def implement(self, h, workspace: Path) -> None:
        for rel, text in self.files.items():
            p = Path(workspace) / rel
            if text is None:
                p.unlink(missing_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text, encoding="utf-8")


class CandidateRejected(ImplementationError):
    """A built candidate failed the worker's checks (it would not run): .diff is what was built."""

    def __init__(self, reason: str, diff: str):
        super().__init__(reason)
        self.diff = diff


class ConstantsImplementer:
    """A hypothesis that only sets constants (params) is applied by rewriting them, at once: a
    model call would cost seconds and tokens for a one-line edit. Anything it cannot set goes
    to the agent's implementer."""

    name = CONSTANTS_IMPLEMENTER

    def implement(self, h, workspace: Path) -> None:
        from agents.offline import OfflineImplementer
        OfflineImplementer().implement(h, workspace)


@dataclass
class WorkerSlot:
    name: str
    actor: object
    track: str | None = None
    ready: bool = False            # joined: repo loaded, info read, worker_joined written
    journaled: bool = False        # writes its own trial events to the journal
    trial: str | None = None       # trial id running now
    ref: object = None             # its run_trial ref
    dispatched: float = 0.0
    alive_at: float = 0.0          # last answer to a heartbeat() ping
    ping: object = None            # heartbeat() ref in flight
    aborts: int = 0                # aborted trials in a row
    info: dict = field(default_factory=dict)


def _log(msg: str):
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


class Campaign:
    def __init__(self, cfg: SwarmConfig, agent=None, resume_only: bool = False, log=_log, worker_class=None):
        """agent: (proposer, implementer) to use instead of cfg.agent. resume_only: refuse to start
        a new campaign (swarm resume). worker_class: a Ray actor class with worker/actor.py's API
        (default: the real worker; bench/scale.py passes a stand-in)."""
        self.cfg = cfg
        self.worker_class = worker_class
        self.log = log
        self.resume_only = resume_only
        self._agent = agent
        self.state: CampaignState | None = None
        self.journal = None
        self.mainline: MainlineRepo | None = None
        self.pos = None
        self.workers: dict[str, WorkerSlot] = {}
        self.joining: dict = {}            # ref -> (slot, stage) while a worker loads and reports
        self.own_ray = False
        self.interrupted = 0
        self.finished_here = 0             # counted trials that finished in this run
        self.exhausted: dict = {}          # (track, mainline) -> (judged count, time) when the agent had nothing
        self.waiting: str | None = None    # what the campaign waits for, as last said
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"   # this coordinator
        self.owned = False                 # holds the campaign's owner lease
        self.renewed = 0.0                 # when the lease was last renewed
        self.closing = False               # stopping: an unreachable journal is not waited out
        self.load_bytes: bytes | None = None  # the bundle every worker loads (the initial commit)
        self.files_cache: dict = {}
        self.next_discover = 0.0
        self.worker_problems: dict[str, str] = {}
        self.warned: set = set()
        self.opened = False                # campaign_started/resumed written by this run
        # the agent, ahead of the workers (see _fill)
        self.runner: AgentRunner | None = None
        self.agent_plan = None             # how the agent will run (_plan_agent), started after Ray
        self.analyst_new: list = []        # events for the analyst since its last call
        self.asked: dict = {}              # track -> hypotheses asked for by the proposals in flight
        self.in_impl: set = set()          # hypothesis ids being implemented
        self.backoff: dict = {}            # key -> (retry not before, failures so far)
        self.agent_backoff_s = AGENT_BACKOFF_S
        self.agent_fatal: str | None = None
        self.base_files: dict = {}         # {base commit: files} for implement jobs
        self.verdicts_new = 10**9          # verdicts since the analyst last looked (at start: look)
        self.initial: str | None = None    # the commit a new campaign starts from
        self.checker = None                # the repository as worker/validate.py reads it

    # ------------------------------------------------------------------ start
    def run(self) -> str:
        """Run until a stop condition; returns the reason. Raises CampaignError when it cannot start."""
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        reason, error = "stopped", False
        try:
            self._open()
            self._start_ray()
            self._start_agent()
            self._begin()
            self._discover(force=True)
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
        from journal import open_journal
        from worker import Target

        cfg = self.cfg
        self.mainline = MainlineRepo(cfg.repo_path, None, cfg.swarm_dir)   # a git repo, or a clear error
        self.mainline.head_commit()                                         # with a commit, or a clear error
        if not cfg.journal:
            cfg.swarm_dir.mkdir(parents=True, exist_ok=True)
        probe = open_journal(cfg.journal_url)
        try:
            have = probe.campaigns()
        finally:
            probe.close()
        tag = cfg.campaign
        if tag is None:
            if self.resume_only:
                if not have:
                    raise CampaignError(f"no campaign to resume in {cfg.journal_url}: start one with `swarm run`")
                tag = have[0]
            else:
                tag = default_campaign_tag()
        if self.resume_only and tag not in have:
            raise CampaignError(f"no campaign {tag!r} in {cfg.journal_url} (campaigns there: "
                                f"{', '.join(have) or 'none'}); start it with `swarm run --campaign {tag}`")
        cfg.campaign = tag
        self.journal = open_journal(cfg.journal_url, campaign=tag)
        self.mainline.tag = tag
        self.state = CampaignState(tag)
        self._sync(live=False)
        gc.freeze()     # the replayed state lives as long as the process: keep it out of GC passes
        self._claim()

        st = self.state
        if st.started is None:
            self.initial = initial = self.mainline.head_commit()
            toml = self.mainline.read(initial, "target.toml")
            self.target = Target.from_toml(toml.decode(), "target.toml") if toml is not None else Target()
        else:
            self._check_resumable()
        # everything that can refuse to start is checked before the campaign's first event
        require_budget(cfg.time_budget, self.target,    # coordinator/budget.py: a fork without one is refused
                       self.mainline.read(self.initial or st.initial_commit, "prepare.py"))
        self.policy = Policy.from_config(self.cfg, self.target.direction)
        self.agent_plan = self._plan_agent()
        self.patcher = PatchImplementer()
        self.constants = ConstantsImplementer()
        self.quick_constants = self.agent_plan[0] == "actor"   # a model call saved; objects given run as given

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
        self._emit("campaign_started", config=cfg.to_dict(), target=self.target.to_dict(),
                   initial_commit=initial, fixed_hashes=fixed, repo=str(cfg.repo_path),
                   initial_content=self._code(initial))
        self.log(f"campaign {cfg.campaign}: started from {initial[:12]} in {cfg.repo_path} "
                 f"(journal {self.journal.url})")
        if cfg.smoke is not False and not self.target.smoke:   # a fork: each trial's log says it again
            self.log("note: no smoke runs: target.toml says smoke = false (its evaluation cannot be shortened)")

    def _check_resumable(self):
        """The campaign's repository and settings, before anything is journaled."""
        from worker import Target

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

    def _resume(self):
        st = self.state
        self._emit("campaign_resumed", config=self.cfg.to_dict())
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

    def _plan_agent(self):
        """How the agent will run, checked before anything is journaled: ("local", AgentService,
        threads) for agents given as objects (a factory's, a test's) and the offline agent, which
        answers in milliseconds; ("actor", settings, threads) for a model backend."""
        from agents.actor import AgentService
        from agents.base import AgentError
        from agents.factory import AgentSet, choose_backend

        cfg = self.cfg
        threads = cfg.agent_threads
        made = self._agent
        if made is None and ":" in cfg.agent:
            made = self._agent_factory(cfg.agent)
        if made is not None:
            proposer, implementer = made
            offline = proposer.name == "offline" and implementer.name == "offline"
            threads = (0 if offline else AGENT_THREADS) if threads is None else threads
            agents = AgentSet(proposer.name, proposer, implementer, self._analyst(None), f"agents: {proposer.name}")
            return "local", AgentService({"editable": list(self.target.editable)}, agents=agents), threads
        program = self.mainline.read(self.state.initial_commit or self.initial, "program.md") or b""
        settings = {"offline": {"seed": cfg.seed}, **cfg.agents, "backend": cfg.agent,
                    "analyst": {"every": cfg.analyst_every or 1, "direction": self.target.direction},
                    "program_md": program.decode("utf-8", "replace")}
        settings.setdefault("editable", list(self.target.editable))
        try:
            backend, _ = choose_backend(settings)
            if backend == "offline" or threads == 0:
                return "local", AgentService(settings, announce=self.log), threads or 0
        except AgentError as e:
            raise CampaignError(f"agent: {e}") from None
        settings["backend"] = backend       # the actor must not fall back to another backend
        return "actor", settings, AGENT_THREADS if threads is None else threads

    def _analyst(self, client):
        from agents.analyst import Analyst
        return Analyst({"every": self.cfg.analyst_every or 1, "direction": self.target.direction}, None, client=client)

    def _agent_factory(self, name: str):
        import importlib
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise CampaignError(f"agent {name!r}: cannot load {attr} from {module} ({e})") from None
        made = factory(self.cfg, self.journal)
        if not (isinstance(made, tuple) and len(made) == 2):
            raise CampaignError(f"agent factory {name} must return (proposer, implementer)")
        return made

    def _start_agent(self):
        from agents.anthropic_agent import API_KEY_ENV
        mode, what, threads = self.agent_plan
        if mode == "actor" and what["backend"] == "anthropic":
            key = (what.get("anthropic") or {}).get("api_key_env") or API_KEY_ENV
            if not AgentRunner.node_has_env(key):
                # a head started by a service, or before the key was exported: still run, here
                from agents.actor import AgentService
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

    # ------------------------------------------------------------------ journal
    def _sync(self, live: bool = True):
        now = time.time() if live else None
        for pos, ev in self._journal_call("reading", lambda: list(self.journal.read(after=self.pos))):
            self.state.apply(ev, pos, now=now)
            self.pos = pos
            if self.cfg.analyst_every:
                self._for_analyst(ev)

    def _emit(self, type_, event_id: str | None = None, **data):
        from journal import Event
        ev = Event(campaign=self.journal.campaign, source=SOURCE, type=type_, data=data)
        if event_id:
            ev.id = event_id
        self._journal_call(f"its {type_} event", lambda: self.journal.append(ev))
        self._sync()
        return ev

    def _journal_call(self, what: str, fn):
        """A journal call that waits out an unreachable journal (a Redis restart, a network outage)
        for JOURNAL_OUTAGE_S, saying so; the event it writes is kept and sent again with the same
        id (appends are idempotent by id), so nothing is lost or stored twice. The workers keep
        training and keep their own events meanwhile."""
        from journal import JournalUnavailable
        since = None
        while True:
            try:
                out = fn()
                if since is not None:
                    self.log(f"the journal is back after {time.time() - since:.0f}s: going on")
                    self.waiting = None
                    now = time.time()           # the outage was the journal's silence, not the workers'
                    for slot in self.workers.values():
                        slot.alive_at = max(slot.alive_at, now)
                    if self.state is not None:
                        for lease in self.state.leases.values():
                            lease.last_seen = max(lease.last_seen, now)
                return out
            except JournalUnavailable as e:
                now = time.time()
                if since is None:
                    since = now
                    self.waiting = f"the journal: {e}"
                    self.log(f"waiting for the journal ({what} kept; trials go on; giving up after "
                             f"{JOURNAL_OUTAGE_S:g}s): {e}")
                if now - since > (STOP_WAIT_S if self.closing else JOURNAL_OUTAGE_S) or self.interrupted > 1:
                    raise
                time.sleep(JOURNAL_RETRY_S)

    # ------------------------------------------------------------------ owner lease
    def _claim(self):
        """One coordinator per campaign: claim the owner lease in the journal (state.owner folds
        the claims: the first one after the last holder's lease expired or was released wins), or
        refuse, naming the owner."""
        st = self.state
        holder = st.owner_now(time.time())
        takeover = None
        if holder is not None and holder["owner"] != self.owner:
            if holder.get("host") != socket.gethostname() or _pid_alive(holder.get("pid")):
                raise CampaignError(self._owned_by(holder))
            takeover = holder["owner"]        # a coordinator of this machine that died (killed, crashed)
            self.log(f"the campaign's previous coordinator {takeover} is gone (pid {holder.get('pid')} is not "
                     f"running): taking over its lease")
        self._emit("coordinator_lease", owner=self.owner, host=socket.gethostname(), pid=os.getpid(),
                   lease_s=OWNER_LEASE_S, release=False, takeover_of=takeover)
        holder = st.owner_now(time.time())
        if holder is None or holder["owner"] != self.owner:      # another coordinator claimed it first
            raise CampaignError(self._owned_by(holder))
        self.owned, self.renewed = True, time.time()

    def _owned_by(self, holder) -> str:
        left = max(0.0, holder["time"] + holder["lease_s"] - time.time())
        return (f"campaign {self.cfg.campaign} is driven by another coordinator: {holder['owner']} "
                f"(host {holder.get('host')}, pid {holder.get('pid')}), its lease renewed "
                f"{time.time() - holder['time']:.0f}s ago. Stop it with `swarm stop --campaign "
                f"{self.cfg.campaign}`, or, if it died, run this again after its lease expires (in {left:.0f}s)")

    def _renew(self):
        if not self.owned or time.time() - self.renewed < OWNER_RENEW_S:
            return
        self._emit("coordinator_lease", owner=self.owner, host=socket.gethostname(), pid=os.getpid(),
                   lease_s=OWNER_LEASE_S, release=False)
        self.renewed = time.time()
        holder = self.state.owner_now(time.time())
        if holder is None or holder["owner"] != self.owner:
            self.owned = False
            raise CampaignError(f"this coordinator lost campaign {self.cfg.campaign} to {holder and holder['owner']} "
                                f"(its lease expired while the journal was away); the other one goes on")

    def _release(self):
        if self.owned:
            self.owned = False
            try:
                self._emit("coordinator_lease", owner=self.owner, host=socket.gethostname(), pid=os.getpid(),
                           lease_s=OWNER_LEASE_S, release=True)
            except Exception as e:
                self.log(f"warning: could not release the campaign's lease ({type(e).__name__}: {e}); it "
                         f"expires in {OWNER_LEASE_S:g}s")

    def _abort_trial(self, trial_id: str, reason: str):
        """Journal a trial as aborted (counted once; a late result is ignored) unless it finished."""
        t = self.state.trials.get(trial_id)
        lease = self.state.leases.get(trial_id)
        if t is not None and t.status != "running":
            return
        src = lease or t
        if src is None:
            return
        self._emit("trial_finished", trial_id=trial_id, worker=src.worker, track=src.track,
                   commit=src.commit, seed=src.seed, kind=src.kind, candidate_id=src.candidate_id,
                   status="aborted", crash_class=None, reason=reason, val_bpb=None, metrics={},
                   log_tail="", log_path=None, timings={})

    # ------------------------------------------------------------------ Ray and workers
    def _start_ray(self):
        import os

        # under `uv run`, Ray would re-launch its workers through `uv run` in a packaged copy of
        # the current directory; the workers belong in this environment (as on every worker Mac).
        # Ray reads the flag when it is imported.
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        import ray
        if ray.is_initialized():
            return
        if self.cfg.address:
            ray.init(address=self.cfg.address, log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=1, resources={"mlx": self.cfg.workers or 1},
                     include_dashboard=False,
                     log_to_driver=False)
        self.own_ray = True

    def _wanted_workers(self) -> int:
        import ray
        if self.cfg.address is None and self.own_ray:
            return self.cfg.workers or 1
        total = int(ray.cluster_resources().get("mlx", 0))
        return min(total, self.cfg.workers) if self.cfg.workers else total

    def _worker_journal(self) -> str | None:
        """What the workers write their events to: the journal when they can reach it."""
        url = self.cfg.journal_url
        if "://" in url:
            return url
        import ray
        here = ray.util.get_node_ip_address()
        if all(n["NodeManagerAddress"] == here for n in ray.nodes() if n.get("Alive")):
            return url
        if "remote-sqlite" not in self.warned:
            self.warned.add("remote-sqlite")
            self.log("note: the embedded journal is a file on this machine; workers on other machines report "
                     "through the coordinator (no live progress). Use --journal redis://... for a cluster.")
        return None

    def _discover(self, force: bool = False):
        """Start a worker for every mlx resource without one (at start, and when nodes join)."""
        now = time.time()
        if not force and now < self.next_discover:
            return
        self.next_discover = now + (DISCOVER_S if self.workers else 1.0)
        import ray

        want = self._wanted_workers()
        have = len(self.workers)
        free = int(ray.available_resources().get("mlx", 0))
        if want == 0 and force:
            raise CampaignError("no `mlx` resource in the Ray cluster: start each worker machine with "
                                "`ray start --address=HEAD:PORT --resources='{\"mlx\": 1}'`")
        if have >= want or free < 1:
            return
        journal_url = self._worker_journal()
        if self.load_bytes is None:
            self.load_bytes = self.mainline.load_bundle(self.state.initial_commit)
        if self.worker_class is None:
            from worker.actor import remote_class
            self.worker_class = remote_class()
        cls = self.worker_class
        for _ in range(min(want - have, free)):
            name = next(f"w{i}" for i in range(1, 10**6) if f"w{i}" not in self.workers)
            workdir = (str(self.cfg.workdir_path / name) if self.cfg.address is None or self.cfg.workdir
                       else f"~/.autoresearch-swarm/workers/{self.cfg.campaign}/{name}")
            actor = cls.remote(name, workdir, journal_url, self.cfg.campaign, None,
                               self.state.fixed_hashes, dict(self.cfg.env), sandbox=self.cfg.sandbox)
            slot = WorkerSlot(name, actor, journaled=journal_url is not None)
            self.workers[name] = slot
            self.joining[actor.load_repo.remote(self.load_bytes)] = (slot, "load")

    def _on_joining(self, ref):
        import ray
        slot, stage = self.joining.pop(ref)
        try:
            got = ray.get(ref)
        except Exception as e:
            self._retire(slot, f"could not start: {type(e).__name__}: {e}", joined=False)
            return
        if stage == "load":
            self.joining[slot.actor.info.remote()] = (slot, "info")
            return
        info = got
        slot.info = info
        if info.get("problem"):
            self.worker_problems[slot.name] = info["problem"]
            self._retire(slot, f"cannot run trials: {info['problem']}", joined=False)
            return
        track = track_of(info, self.cfg.time_budget)       # coordinator/budget.py
        if track is None:
            self._retire(slot, "no time budget: give --time-budget or time_budget in target.toml", joined=False)
            return
        fp = self.state.fingerprints.get(track)
        if fp and info.get("data_fingerprint") != fp:
            self._retire(slot, f"its data fingerprint {info.get('data_fingerprint')} differs from track "
                               f"{track}'s {fp}: prepare the same data on it", joined=False)
            return
        slot.track, slot.ready, slot.alive_at = track, True, time.time()
        self._emit("worker_joined", worker=slot.name, track=track, hardware_class=info.get("hardware_class"),
                   hardware=info.get("hardware"), data_fingerprint=info.get("data_fingerprint"),
                   profile=info.get("profile"), time_budget=self.cfg.time_budget or info.get("time_budget"),
                   mlx_backend=info.get("mlx_backend"), mlx_version=info.get("mlx_version"))
        self.log(f"worker {slot.name} joined track {track}")
        self._check_track_mainline(track)

    def _check_track_mainline(self, track: str):
        ts = self.state.track_state(track)
        want = self.state.merges[ts.merge].commit if ts.merge else ts.trusted
        if self.mainline.branch_commit(track) != want:
            self.mainline.set_branch(track, want)

    def _retire(self, slot: WorkerSlot, reason: str, joined: bool = True):
        """Take a worker out: its trial (if any) is aborted and needed again."""
        import ray
        self.workers.pop(slot.name, None)
        if slot.trial is not None:
            self._abort_trial(slot.trial, f"worker {slot.name} lost: {reason}")
            slot.trial = slot.ref = None
        if joined or slot.ready:
            self._emit("worker_lost", worker=slot.name, reason=reason)
        self.log(f"worker {slot.name} out: {reason}")
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:
            pass

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> tuple[str, bool]:
        while True:
            self._sync()
            self._renew()
            stop = self._stop_condition()
            if stop:
                return stop
            self._reconcile()
            if self.state.fatal:
                continue
            self._check_leases()
            self._discover()
            self._fill()
            dispatched = self._dispatch()
            if not dispatched:
                self._say_waiting()
            if not self.workers and not self.joining:
                problems = "; ".join(f"{k}: {v}" for k, v in self.worker_problems.items())
                if self.own_ray or problems:
                    return f"no usable worker{(': ' + problems) if problems else ''}", True
            self._wait(self.cfg.poll_s)

    def _stop_condition(self) -> tuple[str, bool] | None:
        st = self.state
        if self.interrupted:
            return "interrupted (Ctrl-C)", False
        if st.stop_requested:
            return f"stop requested ({st.stop_requested})", False
        if st.fatal:
            return st.fatal, True
        if self.agent_fatal:
            return self.agent_fatal, True
        if self.cfg.until is not None and time.time() >= self.cfg.until:
            return "reached --until", False
        if self.cfg.max_trials is not None and self.finished_here >= self.cfg.max_trials \
                and not self._running():
            self._reconcile()
            return f"reached --max-trials {self.cfg.max_trials}", False
        return None

    def _running(self) -> list[WorkerSlot]:
        return [w for w in self.workers.values() if w.trial is not None]

    def _say_waiting(self):
        """Nothing to dispatch: say once what the campaign waits for (it never ends for want of
        ideas: an agent with nothing new is asked again, with the journal's evidence)."""
        if self._running():
            why = "the running trials"
        elif self.joining or not self.workers:
            why = "workers to join"
        elif self.runner.busy():
            why = "the agent's next hypotheses"
        elif any(until > time.time() for until, _ in self.backoff.values()):
            why = "the agent backend to answer again (backing off)"
        elif self.exhausted:
            why = f"the agent: it had nothing new; asking again every {EXHAUSTED_RETRY_S:g}s with the evidence"
        else:
            why = "work"
        if getattr(self.journal, "waiting", None):
            why = f"the journal ({self.journal.waiting})"
        if why != self.waiting:
            self.waiting = why
            self.log(f"waiting for {why}")

    # ------------------------------------------------------------------ decisions
    def _reconcile(self):
        """Make every decision the state is missing (scheduler.next_decision), then port wins."""
        st = self.state
        while True:
            step = next_decision(st, self.policy)
            if step is None:
                if not self._port_wins():
                    return
                continue
            kind = step[0]
            if kind == "verdict":
                self._emit("verdict", **step[1])
                self.verdicts_new += 1
                self._say_verdict(step[1])
                if step[1]["verdict"] in ("crash", "invalid"):
                    self._crash_fix(step[1])
            elif kind == "retested":
                d = step[1]
                self._emit("retested", **d)
                self.log(f"re-test of merge {d['commit'][:12]} on {d['track']}: {d['verdict']} "
                         f"after {d['trials']} trials (p={_fmt(d.get('p_value'))})")
            elif kind in ("promote", "revert"):
                self._finish_merge(step[1])
            elif kind == "merge":
                self._merge(step[1], step[2])
            elif kind == "heldout_result":
                d = step[1]
                self._emit("heldout_result", **d)
                self.log(f"held-out test of {d['commit'][:12]} on {d['track']}: "
                         f"{_fmt(d['test_bpb']) if d['test_bpb'] is not None else d['reason'] or d['status']}")

    def _say_verdict(self, d):
        h = self.state.hypothesis_of(d["candidate_id"])
        self.log(f"verdict {d['verdict']:<9} {h.get('title', d['candidate_id'])[:60]} "
                 f"(trials {d['trials']}, effect {_fmt(d.get('effect_bpb'), '+.4f')}, "
                 f"{_fmt(d.get('effect_sigma'), '+.1f')} sigma, p={_fmt(d.get('p_value'))})")

    def _merge(self, track: str, cid: str):
        st = self.state
        ts = st.swarm[track]
        c = st.candidates[cid]
        h = st.hyp.get(c.hypothesis_id, {})
        commit, why, conflict = self.mainline.merge(c.commit, ts.trusted, cid, h.get("title", cid))
        if commit is None:
            again = conflict and st.conflicts.get(c.hypothesis_id, 0) == 0
            action = "reimplement" if again else "drop"
            self._emit("merge_conflict", track=track, candidate_id=cid, hypothesis_id=c.hypothesis_id,
                       mainline=ts.trusted, reason=why, action=action)
            self.log(f"merge of {h.get('title', cid)[:60]} conflicts ({why}): "
                     f"{'re-implementing it on the new mainline' if again else 'dropped'}")
            return
        self._emit("merged", track=track, candidate_id=cid, commit=commit, previous=ts.trusted,
                   hypothesis_id=c.hypothesis_id, content=self._code(commit))
        self.mainline.set_branch(track, commit)
        self.log(f"merged {h.get('title', cid)[:60]} into {self.mainline.branch(track)} as {commit[:12]}; "
                 f"re-testing it")

    def _finish_merge(self, m):
        st = self.state
        r = m.retest
        if r["verdict"] == "confirmed":
            vals = st.commit_values(m.track, m.commit)
            self._emit("promoted", track=m.track, commit=m.commit, previous=m.previous,
                       val_bpb=sum(vals) / len(vals) if vals else None, candidate_id=m.candidate_id,
                       p_value=r.get("p_value"), effect_bpb=r.get("effect_bpb"))
            self.mainline.set_branch(m.track, m.commit)
            self.log(f"promoted {m.commit[:12]} on {m.track} (effect {_fmt(r.get('effect_bpb'), '+.4f')})")
        else:
            reason = r.get("reason") or (f"the merged mainline is not better than {m.previous[:12]} "
                                         f"with fresh seeds ({r.get('test')})")
            self._emit("reverted", track=m.track, commit=m.commit, restored=m.previous, reason=reason,
                       candidate_id=m.candidate_id)
            self.mainline.set_branch(m.track, m.previous)
            self.log(f"reverted {m.commit[:12]} on {m.track}: {reason[:120]}")

    def _port_wins(self) -> bool:
        """A promotion on one track becomes a hypothesis, with its patch, on every other track."""
        st = self.state
        tracks = {w.track for w in self.workers.values() if w.ready}
        made = False
        for track, cid, commit, previous in list(st.promotions):
            for other in tracks:
                if other == track or (cid, other) in st.ports:
                    continue
                src = st.hypothesis_of(cid)
                trusted = st.swarm[other].trusted
                hid = uuid.uuid4().hex
                self._emit("hypothesis_proposed", hypothesis_id=hid,
                           title=f"port: {src.get('title', cid)}",
                           rationale=f"Promoted on track {track} (merge {commit[:12]}); the same change on "
                                     f"this track. {src.get('rationale', '')}".strip(),
                           expected_effect=src.get("expected_effect"), risk=src.get("risk"), agent=PORT_AGENT,
                           track=other, mainline_commit=trusted, params=src.get("params"),
                           patch=self.mainline.diff(previous, commit), ported_from=cid)
                made = True
        return made

    # ------------------------------------------------------------------ the agent
    # The agent runs ahead of the workers: proposing, implementing and the analyst's notes are
    # jobs of the agent runner (a Ray actor for a model backend), so dispatching, results and
    # leases never wait on it. Only this thread touches the journal and git: a job answers with
    # plain data (hypotheses, the files an implementation changed, a note, usage records) and
    # _harvest turns it into events and commits.
    def _pending_impl(self, track):
        st = self.state
        return [(hid, base) for hid, base in st.pending_impl.items() if st.hyp.get(hid, {}).get("track") == track]

    def _agent_busy(self, track: str) -> bool:
        """The agent is working on this track's next candidates (a worker may wait for them)."""
        return bool(self.asked.get(track) or self._backing_off(("propose", track)) or any(
            hid in self.in_impl or self._backing_off(("impl", hid)) for hid, _ in self._pending_impl(track)))

    def _backing_off(self, key) -> bool:
        until, _ = self.backoff.get(key, (0.0, 0))
        return time.time() < until

    def _agent_failed(self, e, key, what: str):
        """An AgentError is the backend's failure, never the hypothesis's: a bad key, an unknown
        model or a bad setting stops the campaign; anything else (overload, rate limit, network,
        a restarted agent actor) is retried after a backoff."""
        if e.kind in FATAL_AGENT_ERRORS:
            self.agent_fatal = f"the agent backend cannot go on ({e.kind}): {e}"
            return
        _, tries = self.backoff.get(key, (0.0, 0))
        delay = min(AGENT_BACKOFF_MAX_S, self.agent_backoff_s * 2 ** tries)
        self.backoff[key] = (time.time() + delay, tries + 1)
        self.log(f"the agent failed {what} ({e.kind}: {str(e)[:200]}); trying again in {delay:.0f}s")

    def _fill(self):
        tracks = {}
        for w in self.workers.values():
            if w.ready:
                tracks[w.track] = tracks.get(w.track, 0) + 1
        for _ in range(3):            # in-loop jobs: propose -> hypotheses -> candidates in one pass
            self._harvest()
            if self.agent_fatal:
                return
            for track, n_workers in tracks.items():
                self._implement_pending(track)
                self._propose_more(track, n_workers)
        self._analyze()
        self._harvest()

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

    def _implement_pending(self, track: str):
        from agents.base import Hypothesis
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
                    self._commit_candidate(h, quick, base, cid, track)
                    continue
                except ImplementationError as e:
                    if h.patch and not h.params:
                        self._invalid(h, cid, track, base, e.reason)
                        continue              # no model can do better than the patch it was given
            self.in_impl.add(hid)
            self.runner.submit("implement", ("impl", hid), (h, base, cid, track), "implement",
                               h.to_dict(), self._base_files(base))

    def _base_files(self, base: str) -> dict:
        """The files an implementer sees: the editable ones, the fixed ones and the target's notes."""
        if base not in self.base_files:
            keep = lambda p: (self.target.is_editable(p) or p in self.target.fixed  # noqa: E731
                              or p in ("program.md", "target.toml"))
            self.base_files = {base: self.mainline.files(base, keep)}
        return self.base_files[base]

    def _commit_candidate(self, h, impl, base: str, cid: str, track: str):
        commit, diff = self.mainline.build_candidate(h, impl, base, cid, self.target.is_editable)
        problems = self._validate(commit, base)
        if problems:
            raise CandidateRejected("invalid before any trial: " + "; ".join(problems), diff)
        self._emit("candidate_created", candidate_id=cid, hypothesis_id=h.hypothesis_id, track=track,
                   commit=commit, base_commit=base, diff=diff, implementer=impl.name, content=self._code(commit))

    def _code(self, commit: str) -> str:
        """What a commit runs: a hash of its editable files. A merge whose train.py equals its
        candidate's is the same code, and the state books seeds by it (never a (code, seed) twice)."""
        files = self.mainline.files(commit, self.target.is_editable)
        return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:24]

    def _validate(self, commit: str, base: str) -> list:
        """The worker's own checks (worker/validate.py: editable files only, fixed files by hash,
        no path out of the repository, Python that compiles), here and now, so the buffer only
        holds candidates that can run and a worker never spends a dispatch on a broken one."""
        from worker.repo import WorkerRepo
        from worker.validate import validate
        if self.checker is None:
            self.checker = WorkerRepo(self.cfg.repo_path, None)
        if self.checker.repo is None:       # not a plain clone (a worktree): the worker checks it
            return []
        return validate(self.checker, self.target, commit, base, self.state.fixed_hashes)

    def _crash_fix(self, verdict: dict):
        """A code change that crashed or was invalid goes back to its implementer with the reason,
        the log's tail and its own diff, MAX_FIXES times: the swarm's smoke run is the
        implementer's (it runs on the worker, right before the trial, on the same accelerator)."""
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
        mainline = st.swarm[track].trusted
        self._emit("fix_requested", track=track, candidate_id=cid, hypothesis_id=hid, mainline=mainline,
                   attempt=attempt, reason=reason[:2000], crash_class=crash_class, diff=diff[:20_000],
                   log_tail=log_tail[-CRASH_LOG_TAIL:])
        self.log(f"asking the {implementer} implementer to fix {str(st.hyp[hid].get('title'))[:60]} "
                 f"({crash_class}; attempt {attempt + 1} of {MAX_FIXES + 1})")

    def _invalid(self, h, cid: str, track: str, base: str, why: str):
        self._emit("candidate_invalid", candidate_id=cid, hypothesis_id=h.hypothesis_id, track=track,
                   reason=why, base_commit=base)
        self.log(f"could not implement {h.title[:60]}: {why[:200]}")

    def _for_analyst(self, ev):
        """Keep what the analyst reads (its note is due after analyst_every verdicts)."""
        if ev.type not in ANALYST_EVENTS:
            return
        d = ev.data
        if ev.type == "trial_finished":
            if d.get("status") in (None, "ok"):
                return
            d = {k: d.get(k) for k in ("trial_id", "track", "status", "crash_class", "reason")}
        elif ev.type == "hypothesis_proposed" and d.get("patch"):
            d = {k: v for k, v in d.items() if k != "patch"}
        self.analyst_new.append({"type": ev.type, "source": ev.source, "data": d})

    def _analyze(self):
        """Every analyst_every verdicts, the analyst's lab note (it decides from the journal itself)."""
        if not self.cfg.analyst_every or self.runner.busy("analyst") or self.verdicts_new < self.cfg.analyst_every:
            return
        self.verdicts_new = 0
        new, self.analyst_new = self.analyst_new, []
        self.runner.submit("analyst", ("analyst",), None, "lab_note", new)

    def _harvest(self):
        """Turn the agent's answers into events (and candidates into commits)."""
        for job in self.runner.finished():
            answer = job.answer or {}
            if not answer.get("usage_emitted"):
                for rec in answer.get("usage") or []:
                    self._emit("agent_usage", **rec)
            if job.kind == "analyst":
                self._on_note(job)
            elif job.kind == "propose":
                self._on_proposals(job)
            else:
                self._on_implementation(job)

    def _job_error(self, job):
        """The AgentError of a job that failed, or None (answered, or failed in another way)."""
        from agents.base import AgentError
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
            self._emit("lab_note", author=note.get("author"), title=note.get("title"), text=note.get("text"))
            self.log(f"lab note: {str(note.get('title'))[:100]}")

    def _on_proposals(self, job):
        from agents.base import Hypothesis, hypothesis_key
        st = self.state
        track, asked_on, n = job.payload
        self.asked[track] = max(0, self.asked.get(track, 0) - n)
        err = self._job_error(job)
        if err is not None:
            self._agent_failed(err, job.key, f"to propose for {track}")
            return
        if job.error is not None:
            self._agent_failed(_transient(job.error), job.key, f"to propose for {track}")
            return
        self.backoff.pop(job.key, None)
        hs = [Hypothesis.from_dict(d) for d in job.answer.get("hypotheses") or []]
        ts = st.swarm[track]
        trusted = ts.trusted          # the mainline may have moved while the agent thought
        fresh = [h for h in hs if hypothesis_key(h) not in st.keys.get((track, trusted), set())]
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
            self._emit("hypothesis_proposed", **data)

    def _on_implementation(self, job):
        st = self.state
        h, base, cid, track = job.payload
        self.in_impl.discard(h.hypothesis_id)
        if st.pending_impl.get(h.hypothesis_id) != base:
            return                    # built meanwhile, or to be rebuilt on a new mainline
        err = self._job_error(job)
        if err is not None:
            self._agent_failed(err, job.key, f"to implement {h.title[:60]!r}")
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
            self._commit_candidate(h, impl, base, cid, track)
        except CandidateRejected as e:
            self._invalid(h, cid, track, base, e.reason)
            self._request_fix(h.hypothesis_id, cid, track, impl.name, e.reason, "invalid", e.diff, "")
        except ImplementationError as e:
            self._invalid(h, cid, track, base, e.reason)

    def _context(self, track, again: bool = False):
        from agents.base import ResearchContext
        st = self.state
        trusted = st.swarm[track].trusted
        if trusted not in self.files_cache:
            program = self.mainline.read(trusted, "program.md")
            self.files_cache[trusted] = (self.mainline.files(trusted, self.target.is_editable),
                                         program.decode("utf-8", "replace") if program else "")
        files, program = self.files_cache[trusted]
        history = []
        for hid, d in st.hyp.items():
            if d.get("track") != track:
                continue
            entry = {"title": d.get("title"), "params": d.get("params"), "mainline_commit": d.get("mainline_commit"),
                     "verdict": None, "effect_bpb": None, "effect_sigma": None, "trials": 0}
            vh = st.hypotheses.get(hid)
            if vh is not None and vh.candidates:
                c = st.candidates[vh.candidates[-1]]
                entry["mainline_commit"] = c.base_commit or entry["mainline_commit"]
                if c.invalid and not c.verdict:
                    entry["verdict"] = "invalid"
                elif c.verdict:
                    for k in ("verdict", "effect_bpb", "effect_sigma", "trials"):
                        entry[k] = c.verdict.get(k)
                if c.invalid and not c.verdict:
                    entry["reason"] = c.invalid if isinstance(c.invalid, str) else None
                crashed = [t for t in st.trials_of(candidate_id=c.candidate_id) if t.status in ("crash", "invalid")]
                if crashed:               # why it crashed: the proposer should not repeat it
                    t = crashed[-1]
                    entry.update(reason=t.reason, crash_class=t.crash_class,
                                 log_tail=(t.log_tail or "")[-CRASH_LOG_TAIL:])
            history.append(entry)
        sigma = st.noise(track)[0]
        notes = [str(n.data.get("text", "")) for n in st.notes[-20:]]
        if again:
            near = sorted((e for e in history if e.get("effect_sigma") is not None
                           and e.get("mainline_commit") == trusted), key=lambda e: e["effect_sigma"])[:5]
            notes.append("Your last answer proposed nothing new for this mainline, and the campaign goes on all "
                         f"night. {sum(1 for e in history if e.get('mainline_commit') == trusted)} hypotheses were "
                         "judged on it; the closest misses: "
                         + ("; ".join(f"{e.get('title')} ({e['effect_sigma']:+.1f} sigma, {e.get('verdict')})"
                                      for e in near) or "none yet")
                         + ". Propose finer steps around the best values, values rejected on older mainlines, "
                           "pairs of near-misses, or structural code changes.")
        return ResearchContext(track=track, mainline_commit=trusted, program_md=program, files=files,
                               history=history, noise_floor=sigma, notes=notes)

    # ------------------------------------------------------------------ trials
    def _dispatch(self) -> int:
        if self.cfg.max_trials is not None:
            room = self.cfg.max_trials - self.finished_here - len(self._running())
        else:
            room = None
        if self.cfg.until is not None and time.time() >= self.cfg.until:
            return 0
        idle = [(w.name, w.track) for w in self.workers.values() if w.ready and w.trial is None]
        if not idle or (room is not None and room <= 0):
            return 0
        if room is not None:
            idle = idle[:room]
        st = self.state
        initial = st.initial_commit
        n = 0
        spare = {track for _, track in idle
                 if self._agent_busy(track) or (track, st.swarm[track].trusted) in self.exhausted}
        for a in schedule(st, idle, self.policy, spare):
            slot = self.workers[a.worker]
            trial_id = uuid.uuid4().hex
            spec = {"trial_id": trial_id, "commit": a.commit, "seed": a.seed,
                    "bundle": self.mainline.bundle(a.commit, initial), "base_commit": a.base_commit,
                    "kind": a.kind, "candidate_id": a.candidate_id, "time_budget": self.cfg.time_budget,
                    "smoke": a.smoke, "track": a.track}
            now = time.time()
            st.mark_dispatched(trial_id, slot.name, a.track, a.commit, a.seed, a.kind, a.candidate_id, now)
            if not slot.journaled:
                self._emit("trial_started", trial_id=trial_id, worker=slot.name, track=a.track, commit=a.commit,
                           seed=a.seed, kind=a.kind, candidate_id=a.candidate_id)
            slot.trial, slot.dispatched = trial_id, now
            slot.ref = slot.actor.run_trial.remote(spec)
            n += 1
        return n

    def _wait(self, timeout: float):
        import ray
        refs = [w.ref for w in self.workers.values() if w.ref is not None]
        refs += list(self.joining)
        refs += [w.ping for w in self.workers.values() if w.ping is not None]
        if not refs:
            time.sleep(timeout)
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        by_ref = {w.ref: w for w in self.workers.values() if w.ref is not None}
        pings = {w.ping: w for w in self.workers.values() if w.ping is not None}
        for ref in ready:
            if ref in self.joining:
                self._on_joining(ref)
            elif ref in by_ref:
                self._on_result(by_ref[ref])
            elif ref in pings:
                self._on_ping(pings[ref])

    def _on_ping(self, slot: WorkerSlot):
        import ray
        ref, slot.ping = slot.ping, None
        try:
            ray.get(ref)
            slot.alive_at = time.time()
        except Exception:
            pass  # a dead actor shows in its run_trial ref; a slow one runs into its lease

    def _on_result(self, slot: WorkerSlot):
        import ray
        from ray.exceptions import RayActorError
        ref, trial_id = slot.ref, slot.trial
        slot.ref = slot.trial = None
        try:
            res = ray.get(ref)
        except RayActorError as e:
            slot.trial = trial_id
            self._retire(slot, f"actor died: {str(e).splitlines()[0][:200]}")
            return
        except Exception as e:
            res = None
            err = f"run_trial raised {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        self._sync()
        t = self.state.trials.get(trial_id)
        if res is None:
            self._abort_trial(trial_id, err)
            status, reason = "aborted", err
        else:
            status, reason = res.status, res.reason
            if t is None or t.status == "running":
                lease = self.state.leases.get(trial_id)
                data = res.to_dict()
                data.update(track=lease.track if lease else None, kind=lease.kind if lease else None,
                            candidate_id=lease.candidate_id if lease else None)
                from journal.events import result_event_id
                self._emit("trial_finished", event_id=result_event_id(trial_id), **data)   # the worker's id
            self.state.forget_dispatch(trial_id)  # no-op when the journal closed it
        t = self.state.trials.get(trial_id)
        if t is not None and t.status in ("ok", "crash", "invalid"):
            self.finished_here += 1
        if status == "aborted":
            slot.aborts += 1
            if slot.aborts >= MAX_WORKER_ABORTS:
                self._retire(slot, f"aborted {slot.aborts} trials in a row (last: {reason})")
                return
        else:
            slot.aborts = 0
        self._say_trial(t)

    def _say_trial(self, t):
        if t is None:
            return
        what = f"val_bpb {t.val_bpb:.6f}" if t.value is not None else f"{t.status} ({t.crash_class}: {t.reason})"[:160]
        self.log(f"trial {t.trial_id[:8]} {t.kind:<9} {t.commit[:10]} seed {t.seed} on {t.worker}: {what}")

    def _check_leases(self):
        now = time.time()
        lease_s = self.cfg.lease_s
        mine = set()
        for slot in list(self.workers.values()):
            if slot.trial is None:
                continue
            mine.add(slot.trial)
            lease = self.state.leases.get(slot.trial)
            last = max(slot.dispatched, slot.alive_at, lease.last_seen if lease else 0.0)
            silent = now - last
            if silent > lease_s:
                self._retire(slot, f"lease expired: silent for {silent:.0f}s during trial {slot.trial[:8]}")
            elif silent > lease_s / 3 and slot.ping is None:
                slot.ping = slot.actor.heartbeat.remote()
        # trials this coordinator did not dispatch (a previous one did): the journal is all we see
        for lease in list(self.state.leases.values()):
            if lease.trial_id not in mine and now - lease.last_seen > lease_s:
                self._abort_trial(lease.trial_id, f"lease expired: worker {lease.worker} silent for "
                                                  f"{now - lease.last_seen:.0f}s after the coordinator restarted; re-queued")

    # ------------------------------------------------------------------ stop
    def _shutdown(self, reason: str, error: bool):
        self.closing = True
        if not self.opened:             # failed before the campaign (re)started: nothing to close in it
            self._release()
            if self.runner is not None:
                self.runner.shutdown()
            if self.own_ray:
                import ray
                ray.shutdown()
            if self.journal is not None:
                self.journal.close()
            if self.mainline is not None:
                self.mainline.close()
            return
        import ray
        try:
            running = self._running() if ray.is_initialized() else []
            for slot in running:
                try:
                    slot.actor.abort.remote(slot.trial)
                except Exception:
                    pass
            deadline = time.time() + ABORT_WAIT_S
            while self._running() and time.time() < deadline:
                refs = [w.ref for w in self._running()]
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.time()))
                by_ref = {w.ref: w for w in self._running()}
                for ref in ready:
                    self._on_result(by_ref[ref])
                if not ready:
                    break
            for slot in self._running():
                self._abort_trial(slot.trial, f"campaign stopped: {reason}")
                slot.trial = slot.ref = None
            self._reconcile_quietly()
            self._last_agent_jobs()
            self._emit("campaign_stopped", reason=reason, error=error)
            self._release()
            self.log(f"campaign {self.cfg.campaign} stopped: {reason}")
            stops = []
            for slot in list(self.workers.values()):
                try:
                    stops.append(slot.actor.stop.remote(False, STOP_WAIT_S))
                except Exception:
                    pass
            if stops:
                ray.wait(stops, num_returns=len(stops), timeout=STOP_WAIT_S)
            for slot in list(self.workers.values()) + [s for s, _ in self.joining.values()]:
                try:
                    ray.kill(slot.actor, no_restart=True)
                except Exception:
                    pass
            self.workers.clear()
            self.joining.clear()
        finally:
            self.runner.shutdown()          # a model call in flight finishes on its own, unread
            if self.own_ray:
                ray.shutdown()
            self.journal.close()
            self.mainline.close()
            if self.checker is not None:
                self.checker.close()

    def _last_agent_jobs(self):
        """Agent jobs about to finish still land (a lab note, an answered call's usage)."""
        try:
            self.runner.wait(AGENT_STOP_WAIT_S)
            self._harvest()
        except Exception as e:
            self.log(f"warning: the agent's last answers were lost at stop: {type(e).__name__}: {e}")

    def _reconcile_quietly(self):
        try:
            self._reconcile()
        except Exception as e:  # a stop must still journal campaign_stopped
            self.log(f"warning: last decisions failed at stop: {type(e).__name__}: {e}")


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True                   # someone else's process, or no pid: assume it runs
    return True


def _transient(e: BaseException):
    """A proposer's unexpected exception, retried like an outage (it says so in the log)."""
    from agents.base import AgentError
    return AgentError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", kind="api")


def _fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)
