"""
Agents as a Ray actor, so proposing and implementing run ahead of the workers,
without an accelerator, while the coordinator's loop only dispatches and judges.

AgentService is a plain class (testable without Ray): built from a config dict
(agents/factory.py) or from ready-made agents, it answers with plain dicts only,
so nothing but JSON-like data crosses Ray. AgentActor is the same class as a
threaded Ray actor with num_cpus=0 and no custom resource, so it never takes a
worker's "mlx" slot; many calls run at once (max_concurrency), and lab notes run
in a concurrency group of their own, so a slow proposal never holds a note up:

    from agents.actor import AgentActor, ANALYST_GROUP
    a = AgentActor.options(max_concurrency=8).remote({"backend": "auto", "model": "claude-sonnet-5-5"})
    out = ray.get(a.propose.remote(ctx_dict, 4))        # {"hypotheses": [...], "usage": [...], ...}
    out = ray.get(a.implement.remote(h_dict, {"train.py": text}))   # {"ok", "files", ...}
    out = ray.get(a.lab_note.options(concurrency_group=ANALYST_GROUP).remote(new_events))

Usage records come back with every answer for the coordinator to emit as
agent_usage events, unless the service was given a journal_url (then it emitted
them itself: "usage_emitted": true).
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from agents.base import AgentError, Hypothesis, ImplementationError, ResearchContext
from agents.factory import AgentSet, make_agents
from agents.tools import editable_files, resolve_editable
from core.paths import inside
from safety.gitsafe import run_git

log = logging.getLogger(__name__)

NUM_CPUS = 0             # agents wait on the network or a subprocess; they need no reserved core
ANALYST_GROUP = "analyst"  # the concurrency group of lab_note: one note at a time, beside the research calls
MAX_RESTARTS = 3         # a crashed agent process is started again (its calls in flight fail, and are retried)


def _ctx(d: Mapping[str, Any]) -> ResearchContext:
    names = ResearchContext.__dataclass_fields__.keys()
    return ResearchContext(**{k: v for k, v in d.items() if k in names})


def _files_workspace(root: Path, files: Mapping[str, str]) -> Path:
    """A scratch git repository holding `files`, committed (the command backend diffs against it)."""
    for rel, text in files.items():
        p = root / rel
        if not inside(root, p) or p.resolve() == root.resolve():
            raise AgentError(f"file path {rel!r} leaves the workspace", kind="config")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    who = ["-c", "user.name=swarm-agent", "-c", "user.email=agent@swarm.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "--allow-empty", "-m", "mainline"]):
        run_git(who + args, root, check=True, capture_output=True)
    return root


class AgentService:
    """Proposer, implementer and analyst of one backend, answering with plain dicts.

    config: agents/factory.py settings ("editable" names the files an implementation may
    change). agents: ready-made agents instead of building them from config (an AgentSet).
    announce: where the line saying which backend was chosen goes (default: the log).
    """

    def __init__(self, config: Mapping[str, Any] | None = None, journal_url: str | None = None,
                 campaign: str | None = None, smoke: Callable | None = None, agents: AgentSet | None = None,
                 announce: Callable[[str], None] | None = None):
        self.config = dict(config or {})
        self.journal = None
        if journal_url:
            from journal import open_journal

            self.journal = open_journal(journal_url, campaign=campaign)
        self.agents = agents or make_agents(self.config, self.journal, smoke=smoke, announce=announce or log.warning)
        self.events: list = []            # what the analyst has seen, in journal order
        self._events_lock = threading.Lock()

    @property
    def backend(self) -> str:
        return self.agents.backend

    def ready(self) -> dict:
        """Which backend answers, and where. It builds the API clients (the SDK import takes
        seconds, better spent now than in the first proposal; a missing key is an AgentError)."""
        import os
        import socket

        for part in (self.agents.proposer, self.agents.implementer, self.agents.analyst):
            client = getattr(part, "client", None)
            if callable(getattr(client, "sdk", None)):
                client.sdk()

        return {"backend": self.agents.backend, "message": self.agents.message, "host": socket.gethostname(),
                "pid": os.getpid()}

    def _answer(self, **data: Any) -> dict:
        return {"backend": self.agents.backend, "usage": self.agents.drain_usage(),
                "usage_emitted": self.journal is not None, **data}

    def propose(self, ctx_dict: Mapping[str, Any], n: int) -> dict:
        """{"hypotheses": [Hypothesis dicts], "error": None | str, "error_kind", "usage": [...]}"""
        try:
            hyps = self.agents.proposer.propose(_ctx(ctx_dict), n)
        except AgentError as e:
            return self._answer(hypotheses=[], error=str(e), error_kind=e.kind)
        return self._answer(hypotheses=[h.to_dict() for h in hyps], error=None, error_kind=None)

    def implement(self, hypothesis_dict: Mapping[str, Any], workspace: str | Path | Mapping[str, str]) -> dict:
        """Implement in a workspace path (a checkout, edited in place) or in a scratch copy of a
        files dict {path: text}. {"ok", "reason", "agent_error", "error_kind", "files": {changed
        editable path: new text | None}, "report", "usage"}; changes to other files are discarded."""
        h = Hypothesis.from_dict(hypothesis_dict)
        if isinstance(workspace, Mapping):
            with tempfile.TemporaryDirectory(prefix="swarm-implement-") as tmp:
                return self._implement(h, _files_workspace(Path(tmp), workspace))
        return self._implement(h, Path(workspace))

    def _implement(self, h: Hypothesis, ws: Path) -> dict:
        editable = resolve_editable(self.config.get("editable"), ws)
        before = {p: (ws / p).read_text(encoding="utf-8") for p in editable_files(ws, editable)}
        try:
            report = self.agents.implementer.implement(h, ws)
        except ImplementationError as e:
            return self._answer(ok=False, reason=e.reason, agent_error=False, error_kind=None, files={}, report=None)
        except AgentError as e:
            return self._answer(ok=False, reason=str(e), agent_error=True, error_kind=e.kind, files={}, report=None)
        after = {p: (ws / p).read_text(encoding="utf-8") for p in editable_files(ws, editable)}
        files = {p: after.get(p) for p in sorted(set(before) | set(after)) if before.get(p) != after.get(p)}
        return self._answer(ok=True, reason=None, agent_error=False, error_kind=None, files=files,
                            report=report if isinstance(report, dict) else None,
                            implementer=self.agents.implementer.name)

    def lab_note(self, new_events: list) -> dict:
        """{"note": {author, title, text} | None, "usage": [...]}. new_events: the journal's events
        since the last call (the analyst decides from all of them whether a note is due)."""
        with self._events_lock:
            self.events += new_events
            events = list(self.events)
        return self._answer(note=self.agents.analyst.maybe_write(events))


def __getattr__(name: str):
    # AgentActor is built on first use: importing Ray costs seconds, and only the
    # coordinator's process needs it.
    if name == "AgentActor":
        import ray

        actor = ray.remote(num_cpus=NUM_CPUS, max_restarts=MAX_RESTARTS,
                           concurrency_groups={ANALYST_GROUP: 1})(AgentService)
        globals()["AgentActor"] = actor
        return actor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
