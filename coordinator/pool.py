"""
The worker pool: one Ray actor per `mlx` resource of the cluster, and every trial they run.

    pool = WorkerPool(cfg, rec, mainline, log)
    pool.start_ray(); pool.discover(force=True)     # a worker per mlx resource, joining
    pool.dispatch(policy, spare)                      # scheduler assignments -> run_trial.remote
    pool.wait(poll_s)                                 # results, joins and heartbeats as they come
    pool.check_leases()                               # a silent worker loses its trial
    pool.stop(reason)                                 # abort what runs, let workers flush, kill

A worker joins in two steps (load the campaign's bundle, then report what it is: track,
hardware, data fingerprint), each a Ray call waited on with the rest, so a slow Mac never
holds up the loop. A trial is leased: journaled as dispatched, kept alive by the worker's
progress events (or a heartbeat ping when it is silent), and aborted (counted once, needed
again) when the worker stays silent past the lease or dies. The worker writes its own
events when it can reach the journal; otherwise the coordinator writes them from the
result Ray hands back, under the worker's own event id, so a result is never counted twice.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError

from coordinator.budget import track_of
from coordinator.config import CampaignError
from journal.events import result_event_id
from worker.actor import remote_class

DISCOVER_S = 10.0          # how often the cluster is checked for mlx resources without a worker
ABORT_WAIT_S = 15.0        # on stop: how long aborted trials get to report back
STOP_WAIT_S = 10.0         # on stop: how long workers get to flush their journal and exit
MAX_WORKER_ABORTS = 3      # a worker that aborts this many trials in a row is retired


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


class WorkerPool:
    def __init__(self, cfg, rec, mainline, log, worker_class=None):
        """worker_class: a Ray actor class with worker/actor.py's API (default: the real worker;
        bench/scale.py passes a stand-in)."""
        self.cfg, self.rec, self.mainline, self.log = cfg, rec, mainline, log
        self.worker_class = worker_class
        self.workers: dict[str, WorkerSlot] = {}
        self.joining: dict = {}            # ref -> (slot, stage) while a worker loads and reports
        self.own_ray = False
        self.finished_here = 0             # counted trials that finished in this run
        self.problems: dict[str, str] = {} # worker -> why it cannot run trials
        self.load_bytes: bytes | None = None  # the bundle every worker loads (the initial commit)
        self.next_discover = 0.0
        self.warned: set = set()

    @property
    def state(self):
        return self.rec.state

    # ------------------------------------------------------------------ Ray and joining
    def start_ray(self):
        if ray.is_initialized():
            return
        if self.cfg.address:
            ray.init(address=self.cfg.address, log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=1, resources={"mlx": self.cfg.workers or 1},
                     include_dashboard=False, log_to_driver=False)
        self.own_ray = True

    def shutdown_ray(self):
        if self.own_ray:
            ray.shutdown()

    def _wanted(self) -> int:
        if self.cfg.address is None and self.own_ray:
            return self.cfg.workers or 1
        total = int(ray.cluster_resources().get("mlx", 0))
        return min(total, self.cfg.workers) if self.cfg.workers else total

    def _worker_journal(self) -> str | None:
        """What the workers write their events to: the journal when they can reach it."""
        url = self.cfg.journal_url
        if "://" in url:
            return url
        here = ray.util.get_node_ip_address()
        if all(n["NodeManagerAddress"] == here for n in ray.nodes() if n.get("Alive")):
            return url
        if "remote-sqlite" not in self.warned:
            self.warned.add("remote-sqlite")
            self.log("note: the embedded journal is a file on this machine; workers on other machines report "
                     "through the coordinator (no live progress). Use --journal redis://... for a cluster.")
        return None

    def discover(self, force: bool = False):
        """Start a worker for every mlx resource without one (at start, and when nodes join)."""
        now = time.time()
        if not force and now < self.next_discover:
            return
        self.next_discover = now + (DISCOVER_S if self.workers else 1.0)

        want = self._wanted()
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
        slot, stage = self.joining.pop(ref)
        try:
            got = ray.get(ref)
        except Exception as e:
            self.retire(slot, f"could not start: {type(e).__name__}: {e}", joined=False)
            return
        if stage == "load":
            self.joining[slot.actor.info.remote()] = (slot, "info")
            return
        info = got
        slot.info = info
        if info.get("problem"):
            self.problems[slot.name] = info["problem"]
            self.retire(slot, f"cannot run trials: {info['problem']}", joined=False)
            return
        track = track_of(info, self.cfg.time_budget)
        if track is None:
            self.retire(slot, "no time budget: give --time-budget or time_budget in target.toml", joined=False)
            return
        fp = self.state.fingerprints.get(track)
        if fp and info.get("data_fingerprint") != fp:
            self.retire(slot, f"its data fingerprint {info.get('data_fingerprint')} differs from track "
                              f"{track}'s {fp}: prepare the same data on it", joined=False)
            return
        slot.track, slot.ready, slot.alive_at = track, True, time.time()
        self.rec.emit("worker_joined", worker=slot.name, track=track, hardware_class=info.get("hardware_class"),
                      hardware=info.get("hardware"), data_fingerprint=info.get("data_fingerprint"),
                      profile=info.get("profile"), time_budget=self.cfg.time_budget or info.get("time_budget"),
                      mlx_backend=info.get("mlx_backend"), mlx_version=info.get("mlx_version"))
        self.log(f"worker {slot.name} joined track {track}")
        ts = self.state.track_state(track)
        want = self.state.merges[ts.merge].commit if ts.merge else ts.trusted
        if self.mainline.branch_commit(track) != want:
            self.mainline.set_branch(track, want)

    def retire(self, slot: WorkerSlot, reason: str, joined: bool = True):
        """Take a worker out: its trial (if any) is aborted and needed again."""
        self.workers.pop(slot.name, None)
        if slot.trial is not None:
            self.abort_trial(slot.trial, f"worker {slot.name} lost: {reason}")
            slot.trial = slot.ref = None
        if joined or slot.ready:
            self.rec.emit("worker_lost", worker=slot.name, reason=reason)
        self.log(f"worker {slot.name} out: {reason}")
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:
            pass

    # ------------------------------------------------------------------ what the pool has
    def running(self) -> list[WorkerSlot]:
        return [w for w in self.workers.values() if w.trial is not None]

    def ready_tracks(self) -> dict[str, int]:
        """{track: ready workers on it}."""
        tracks: dict[str, int] = {}
        for w in self.workers.values():
            if w.ready:
                tracks[w.track] = tracks.get(w.track, 0) + 1
        return tracks

    def empty(self) -> bool:
        return not self.workers and not self.joining

    def touch(self, now: float):
        """Every worker counts as heard from now (the journal, not they, was silent)."""
        for slot in self.workers.values():
            slot.alive_at = max(slot.alive_at, now)

    # ------------------------------------------------------------------ trials
    def dispatch(self, schedule, spare) -> int:
        """Start the trials schedule(idle workers) assigns; spare(track): may a worker of the
        track run an extra baseline while it waits (the agent is busy or out of ideas)."""
        if self.cfg.max_trials is not None:
            room = self.cfg.max_trials - self.finished_here - len(self.running())
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
        n = 0
        for a in schedule(idle, {track for _, track in idle if spare(track)}):
            slot = self.workers[a.worker]
            trial_id = uuid.uuid4().hex
            spec = {"trial_id": trial_id, "commit": a.commit, "seed": a.seed,
                    "bundle": self.mainline.bundle(a.commit, st.initial_commit), "base_commit": a.base_commit,
                    "kind": a.kind, "candidate_id": a.candidate_id, "time_budget": self.cfg.time_budget,
                    "smoke": a.smoke, "track": a.track}
            now = time.time()
            st.mark_dispatched(trial_id, slot.name, a.track, a.commit, a.seed, a.kind, a.candidate_id, now)
            if not slot.journaled:
                self.rec.emit("trial_started", trial_id=trial_id, worker=slot.name, track=a.track,
                              commit=a.commit, seed=a.seed, kind=a.kind, candidate_id=a.candidate_id)
            slot.trial, slot.dispatched = trial_id, now
            slot.ref = slot.actor.run_trial.remote(spec)
            n += 1
        return n

    def wait(self, timeout: float):
        """Handle whatever finished within `timeout`: results, joins, heartbeat answers."""
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
        ref, slot.ping = slot.ping, None
        try:
            ray.get(ref)
            slot.alive_at = time.time()
        except Exception:
            pass  # a dead actor shows in its run_trial ref; a slow one runs into its lease

    def _on_result(self, slot: WorkerSlot):
        ref, trial_id = slot.ref, slot.trial
        slot.ref = slot.trial = None
        try:
            res = ray.get(ref)
        except RayActorError as e:
            slot.trial = trial_id
            self.retire(slot, f"actor died: {str(e).splitlines()[0][:200]}")
            return
        except Exception as e:
            res = None
            err = f"run_trial raised {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        self.rec.sync()
        t = self.state.trials.get(trial_id)
        if res is None:
            self.abort_trial(trial_id, err)
            status, reason = "aborted", err
        else:
            status, reason = res.status, res.reason
            if t is None or t.status == "running":
                lease = self.state.leases.get(trial_id)
                data = res.to_dict()
                data.update(track=lease.track if lease else None, kind=lease.kind if lease else None,
                            candidate_id=lease.candidate_id if lease else None)
                self.rec.emit("trial_finished", event_id=result_event_id(trial_id), **data)   # the worker's id
            self.state.forget_dispatch(trial_id)  # no-op when the journal closed it
        t = self.state.trials.get(trial_id)
        if t is not None and t.status in ("ok", "crash", "invalid"):
            self.finished_here += 1
        if status == "aborted":
            slot.aborts += 1
            if slot.aborts >= MAX_WORKER_ABORTS:
                self.retire(slot, f"aborted {slot.aborts} trials in a row (last: {reason})")
                return
        else:
            slot.aborts = 0
        if t is not None:
            what = (f"val_bpb {t.val_bpb:.6f}" if t.value is not None
                    else f"{t.status} ({t.crash_class}: {t.reason})"[:160])
            self.log(f"trial {t.trial_id[:8]} {t.kind:<9} {t.commit[:10]} seed {t.seed} on {t.worker}: {what}")

    def abort_trial(self, trial_id: str, reason: str):
        """Journal a trial as aborted (counted once; a late result is ignored) unless it finished."""
        t = self.state.trials.get(trial_id)
        lease = self.state.leases.get(trial_id)
        if t is not None and t.status != "running":
            return
        src = lease or t
        if src is None:
            return
        self.rec.emit("trial_finished", trial_id=trial_id, worker=src.worker, track=src.track,
                      commit=src.commit, seed=src.seed, kind=src.kind, candidate_id=src.candidate_id,
                      status="aborted", crash_class=None, reason=reason, val_bpb=None, metrics={},
                      log_tail="", log_path=None, timings={})

    def check_leases(self):
        """A worker silent for lease_s loses its trial (pinged at a third of it); a trial a
        previous coordinator dispatched is judged by the journal alone."""
        now = time.time()
        lease_s = self.cfg.lease_s
        mine = set()
        for slot in list(self.workers.values()):
            if slot.trial is None:
                continue
            mine.add(slot.trial)
            t = self.state.trials.get(slot.trial)
            if t is not None and t.status != "running":
                continue      # finished in the journal (the worker wrote it): its Ray result is on its way
            lease = self.state.leases.get(slot.trial)
            last = max(slot.dispatched, slot.alive_at, lease.last_seen if lease else 0.0)
            silent = now - last
            if silent > lease_s:
                self.retire(slot, f"lease expired: silent for {silent:.0f}s during trial {slot.trial[:8]}")
            elif silent > lease_s / 3 and slot.ping is None:
                slot.ping = slot.actor.heartbeat.remote()
        for lease in list(self.state.leases.values()):
            if lease.trial_id not in mine and now - lease.last_seen > lease_s:
                self.abort_trial(lease.trial_id, f"lease expired: worker {lease.worker} silent for "
                                                 f"{now - lease.last_seen:.0f}s after the coordinator restarted; "
                                                 f"re-queued")

    # ------------------------------------------------------------------ stop
    def abort_running(self, reason: str):
        """Ask every running trial to stop; take the results that come within ABORT_WAIT_S and
        journal the rest as aborted (re-run on resume)."""
        if not ray.is_initialized():
            return
        for slot in self.running():
            try:
                slot.actor.abort.remote(slot.trial)
            except Exception:
                pass
        deadline = time.time() + ABORT_WAIT_S
        while self.running() and time.time() < deadline:
            refs = [w.ref for w in self.running()]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.time()))
            by_ref = {w.ref: w for w in self.running()}
            for ref in ready:
                self._on_result(by_ref[ref])
            if not ready:
                break
        for slot in self.running():
            self.abort_trial(slot.trial, f"campaign stopped: {reason}")
            slot.trial = slot.ref = None

    def stop_workers(self):
        """Let every worker flush its journal and exit (STOP_WAIT_S), then kill what is left."""
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
