"""
Agents as a Ray actor, so proposing and implementing run ahead of the workers
on any machine of the cluster, without an accelerator.

AgentService is a plain class (testable without Ray): built from a config dict
(agents/factory.py), it answers with plain dicts only, so nothing but JSON-like
data crosses Ray. AgentActor is the same class as a Ray actor with num_cpus=0
and no custom resource, so it never takes a worker's "mlx" slot:

    from agents.actor import AgentActor
    a = AgentActor.remote({"backend": "auto", "model": "claude-sonnet-5-5"})
    out = ray.get(a.propose.remote(ctx_dict, 4))        # {"hypotheses": [...], "usage": [...], ...}
    out = ray.get(a.implement.remote(h_dict, {"train.py": text}))   # {"ok", "files", ...}

Usage records come back with every answer for the coordinator to emit as
agent_usage events, unless the actor was given a journal_url (then it emitted
them itself: "usage_emitted": true).
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from agents.base import AgentError
from agents.base import Hypothesis, ImplementationError, ResearchContext
from agents.factory import make_agents
from agents.tools import editable_files, resolve_editable

log = logging.getLogger(__name__)

NUM_CPUS = 0  # agents wait on the network or a subprocess; they need no reserved core


def _ctx(d: Mapping[str, Any]) -> ResearchContext:
    names = ResearchContext.__dataclass_fields__.keys()
    return ResearchContext(**{k: v for k, v in d.items() if k in names})


def _files_workspace(root: Path, files: Mapping[str, str]) -> Path:
    """A scratch git repository holding `files`, committed (the command backend diffs against it)."""
    for rel, text in files.items():
        p = root / rel
        if root.resolve() not in p.resolve().parents:
            raise AgentError(f"file path {rel!r} leaves the workspace", kind="config")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    git = ["git", "-c", "user.name=swarm-agent", "-c", "user.email=agent@swarm.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "--allow-empty", "-m", "mainline"]):
        subprocess.run(git + args, cwd=root, check=True, capture_output=True)
    return root


class AgentService:
    """Proposer, implementer and analyst of one backend, answering with plain dicts."""

    def __init__(self, config: Mapping[str, Any] | None = None, journal_url: str | None = None,
                 campaign: str | None = None, smoke: Callable | None = None):
        self.config = dict(config or {})
        self.journal = None
        if journal_url:
            from journal import open_journal

            self.journal = open_journal(journal_url, campaign=campaign)
        self.agents = make_agents(self.config, self.journal, smoke=smoke, announce=log.warning)

    @property
    def backend(self) -> str:
        return self.agents.backend

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
        files dict {path: text}. {"ok", "reason", "agent_error", "files": {changed editable
        path: new text | None}, "report", "usage"}."""
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
            return self._answer(ok=False, reason=e.reason, agent_error=False, files={}, report=None)
        except AgentError as e:
            return self._answer(ok=False, reason=str(e), agent_error=True, files={}, report=None)
        after = {p: (ws / p).read_text(encoding="utf-8") for p in editable_files(ws, editable)}
        files = {p: after.get(p) for p in sorted(set(before) | set(after)) if before.get(p) != after.get(p)}
        return self._answer(ok=True, reason=None, agent_error=False, files=files,
                            report=report if isinstance(report, dict) else None)

    def lab_note(self, events: list) -> dict:
        """{"note": {author, title, text} | None, "usage": [...]}: a note when one is due."""
        return self._answer(note=self.agents.analyst.maybe_write(events))


def __getattr__(name: str):
    # AgentActor is built on first use: importing Ray costs seconds, and only the
    # coordinator's process needs it.
    if name == "AgentActor":
        import ray

        actor = ray.remote(num_cpus=NUM_CPUS)(AgentService)
        globals()["AgentActor"] = actor
        return actor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
