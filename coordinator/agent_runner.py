"""
Where the agent runs, and how its answers come back to the campaign loop.

The campaign hands out jobs (propose, implement, lab_note) and collects their
answers, the plain dicts of agents/actor.py's AgentService, without ever
waiting on a language model:

    runner = AgentRunner.actor(settings, threads=8)      # a model backend: a Ray actor
    runner = AgentRunner.local(service, threads=0)       # the offline agent: in the loop
    runner.submit("propose", key, payload, "propose", ctx_dict, n)
    for job in runner.finished(): ... job.answer or job.error ...

- actor: an AgentActor on the coordinator's own node (where the API key, the
  agent CLI and its login are), num_cpus=0, `threads` calls at once; lab notes
  in their own concurrency group. A crashed actor is restarted by Ray; the calls
  it had in flight come back as errors and the campaign tries them again. The
  actor sees its Ray node's environment, not the coordinator's: node_has_env
  tells whether the key is there.
- local: the service in this process (agents given as objects, the offline
  agent); on a thread pool, or with threads=0 at once in the loop (deterministic).
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agents.actor import AgentActor
from agents.base import AgentError

READY_TIMEOUT_S = 600.0     # the actor's process starts and imports the backend (seconds; minutes on a loaded machine)


class AgentStartError(RuntimeError):
    """The agent actor could not start; the message says what to do."""


@dataclass
class Job:
    kind: str               # propose | implement | analyst
    key: Any                # backoff key
    payload: Any            # what the campaign needs to use the answer
    handle: Any             # a concurrent Future or a Ray ObjectRef
    answer: dict | None = None
    error: BaseException | None = None


class AgentRunner:
    def __init__(self, service=None, actor=None, threads: int = 0, backend: str = "", message: str = ""):
        self.service, self.actor = service, actor
        self.backend, self.message = backend, message
        self.pool = self.analyst_pool = None
        if service is not None and threads:
            self.pool = ThreadPoolExecutor(threads, thread_name_prefix="swarm-agent")
            self.analyst_pool = ThreadPoolExecutor(1, thread_name_prefix="swarm-analyst")
        self.jobs: list[Job] = []
        self.info: dict = {}        # the actor's ready() answer: backend, host, pid

    @classmethod
    def local(cls, service, threads: int = 0) -> AgentRunner:
        return cls(service=service, threads=threads, backend=service.backend, message=service.agents.message)

    @staticmethod
    def node_has_env(name: str) -> bool:
        """Whether processes Ray starts on this machine's node see the environment variable (a
        node started before it was exported, or by a service, does not)."""
        def has(n):
            return bool(os.environ.get(n, "").strip())

        here = ray.get_runtime_context().get_node_id()
        probe = ray.remote(num_cpus=0)(has).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False))
        return ray.get(probe.remote(name), timeout=READY_TIMEOUT_S)

    @classmethod
    def actor(cls, settings: dict, threads: int) -> AgentRunner:
        """An AgentActor built from settings on this node; raises AgentStartError with the
        backend's own message (a missing key, a bad setting) when it cannot start."""


        here = ray.get_runtime_context().get_node_id()
        handle = AgentActor.options(
            max_concurrency=max(1, threads),
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
        ).remote(settings)
        try:
            info = ray.get(handle.ready.remote(), timeout=READY_TIMEOUT_S)
        except Exception as e:
            ray.kill(handle, no_restart=True)
            cause = getattr(e, "cause", None) or e
            raise AgentStartError(
                f"the agent actor could not start: {_first_line(cause)} (it runs on this machine's Ray node "
                f"and sees that node's environment: with `ray start --head`, export the API key before "
                f"starting the head)") from None
        runner = cls(actor=handle, threads=threads, backend=info["backend"], message=info["message"])
        runner.info = info
        return runner

    # -- jobs ------------------------------------------------------------------
    def submit(self, kind: str, key, payload, method: str, *args) -> None:
        if self.actor is not None:
            call = getattr(self.actor, method)
            if kind == "analyst":
                from agents.actor import ANALYST_GROUP
                call = call.options(concurrency_group=ANALYST_GROUP)
            handle = call.remote(*args)
        elif self.pool is None:
            handle = Future()
            try:
                handle.set_result(getattr(self.service, method)(*args))
            except Exception as e:
                handle.set_exception(e)
        else:
            pool = self.analyst_pool if kind == "analyst" else self.pool
            handle = pool.submit(getattr(self.service, method), *args)
        self.jobs.append(Job(kind, key, payload, handle))

    def busy(self, kind: str | None = None) -> int:
        return sum(1 for j in self.jobs if kind is None or j.kind == kind)

    def wait(self, timeout: float) -> None:
        """Until every job has answered, or timeout seconds."""
        if not self.jobs:
            return
        if self.actor is not None:
            ray.wait([j.handle for j in self.jobs], num_returns=len(self.jobs), timeout=timeout)
        else:
            wait([j.handle for j in self.jobs], timeout=timeout)

    def finished(self) -> list[Job]:
        """The jobs that have answered (answer or error set), in submission order."""
        if not self.jobs:
            return []
        if self.actor is not None:
            refs = [j.handle for j in self.jobs]
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
            done = [j for j in self.jobs if j.handle in ready]
        else:
            done = [j for j in self.jobs if j.handle.done()]
        if not done:
            return []
        ids = {id(j) for j in done}
        self.jobs = [j for j in self.jobs if id(j) not in ids]
        for j in done:
            try:
                j.answer = self._result(j.handle)
            except Exception as e:
                j.error = e
        return done

    def _result(self, handle):
        if self.actor is None:
            return handle.result()
        try:
            return ray.get(handle)
        except RayActorError as e:     # died or restarting: the call is lost, not the hypothesis
            raise AgentError(f"the agent actor stopped answering: {_first_line(e)}", kind="connection") from None
        except RayTaskError as e:      # the method raised: the original exception
            raise e.cause if isinstance(e.cause, Exception) else e from None

    def shutdown(self) -> None:
        """Calls in flight are dropped (a model call finishes on its own; nothing waits for it)."""
        for pool in (self.pool, self.analyst_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        if self.actor is not None:
            try:
                ray.kill(self.actor, no_restart=True)
            except Exception:
                pass
        self.jobs = []


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:500]
