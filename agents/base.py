"""
The small interface every agent backend implements (offline mutation, Anthropic
API, external coding-agent command).

A Proposer reads a ResearchContext (mainline train.py, program.md, what the
journal already judged) and writes Hypotheses. An Implementer turns one
Hypothesis into edits of the editable files in a checkout of the mainline; the
coordinator commits whatever changed there as the candidate.

core/keys.py's hypothesis_key() gives a stable identity for near-duplicate
detection: two hypotheses that set the same constants to the same values (up to
float noise) have the same key, whatever their titles say.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

RISKS = ("low", "medium", "high")


@dataclass
class Hypothesis:
    hypothesis_id: str
    title: str
    rationale: str
    expected_effect: str
    risk: str  # one of RISKS
    agent: str
    track: str | None = None
    mainline_commit: str | None = None
    params: dict[str, Any] | None = None  # constant name -> new value (offline agent)
    patch: str | None = None  # unified diff of editable files (code-writing agents)
    # The previous implementation failed to run: {attempt, reason, crash_class, diff, log_tail}
    # (the swarm asks its implementer once more, with this).
    fix: dict[str, Any] | None = None

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready) of all fields, e.g. for a hypothesis_proposed event."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Hypothesis":
        """Inverse of to_dict; ignores keys that are not fields (event extras)."""
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ResearchContext:
    track: str | None
    mainline_commit: str | None
    program_md: str = ""
    files: dict[str, str] = field(default_factory=dict)  # mainline editable files: path -> text
    # Past hypotheses, one dict each: title, params, verdict, effect_bpb,
    # effect_sigma, mainline_commit, trials (missing keys read as None).
    history: list[dict] = field(default_factory=list)
    noise_floor: float | None = None
    notes: list[str] = field(default_factory=list)  # lab notes


class AgentError(RuntimeError):
    """The agent backend itself failed (bad key, unknown model, API overloaded, a
    misconfigured command): not the hypothesis's fault. kind: auth, model,
    overloaded, rate_limit, connection, bad_request, api, config, output."""

    def __init__(self, message: str, kind: str = "api", status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status


def settings_from_dict(cls, d, what: str):
    """A backend's settings dataclass from a config dict; unknown keys are an AgentError."""
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise AgentError(f"unknown {what} setting(s) {unknown}; known: {sorted(known)}", kind="config")
    return cls(**d)


class ImplementationError(Exception):
    """A hypothesis could not be turned into a candidate; .reason says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Proposer(ABC):
    name: str = "proposer"

    @abstractmethod
    def propose(self, ctx: ResearchContext, n: int) -> list[Hypothesis]:
        """Up to n new hypotheses for ctx's mainline (fewer when out of ideas)."""


class Implementer(ABC):
    name: str = "implementer"

    @abstractmethod
    def implement(self, h: Hypothesis, workspace: Path) -> None:
        """Edit the editable files in place in `workspace` (a checkout of
        h.mainline_commit). Raise ImplementationError(reason) when it cannot."""
