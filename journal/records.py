"""The records a campaign's view is made of (journal/views.py folds events into them), and
how a field's value is read whatever a writer put there: a replay never crashes on data."""

import json
import math
from dataclasses import dataclass, field
from typing import Optional

# Trial kinds whose val_bpb measures the validation metric (heldout runs measure test).
VAL_KINDS = ("baseline", "candidate", "retest")


@dataclass
class Trial:
    trial_id: str
    worker: Optional[str] = None
    track: Optional[str] = None
    commit: Optional[str] = None
    seed: Optional[int] = None
    kind: Optional[str] = None
    candidate_id: Optional[str] = None
    started: Optional[float] = None
    finished: Optional[float] = None
    status: str = "running"          # until trial_finished says ok/crash/invalid/aborted
    crash_class: Optional[str] = None
    reason: Optional[str] = None
    val_bpb: Optional[float] = None
    metrics: dict = field(default_factory=dict)
    log_tail: Optional[str] = None
    log_path: Optional[str] = None
    timings: dict = field(default_factory=dict)
    progress: Optional[dict] = None  # the last trial_progress data
    sandbox: Optional[str] = None    # bwrap | sandbox-exec | off (debugging only: unconfined)
    metric_source: Optional[str] = None  # evaluator | self-reported (the trial's own output)

    @property
    def value(self) -> Optional[float]:
        """val_bpb when the trial finished ok with a finite figure, else None."""
        v = self.val_bpb
        if self.status == "ok" and isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
        return None


@dataclass
class Hypothesis:
    hypothesis_id: str
    title: str = ""
    rationale: str = ""
    expected_effect: object = None
    risk: object = None
    agent: Optional[str] = None
    track: Optional[str] = None
    mainline_commit: Optional[str] = None
    time: Optional[float] = None
    candidates: list = field(default_factory=list)   # candidate ids, in order


@dataclass
class Candidate:
    candidate_id: str
    hypothesis_id: Optional[str] = None
    track: Optional[str] = None
    commit: Optional[str] = None
    base_commit: Optional[str] = None
    time: Optional[float] = None
    invalid: Optional[str] = None     # why, from candidate_invalid
    implementer: Optional[str] = None  # who built it (an agent, "constants", "port")
    verdicts: list = field(default_factory=list)     # verdict data dicts, in order
    merged_commit: Optional[str] = None
    outcome: Optional[str] = None     # merged / promoted / reverted

    @property
    def verdict(self) -> Optional[dict]:
        return self.verdicts[-1] if self.verdicts else None


@dataclass
class MainlineStep:
    time: float
    action: str                       # baseline / merged / retested / promoted / reverted / heldout
    commit: Optional[str]
    previous: Optional[str] = None
    candidate_id: Optional[str] = None
    val_bpb: Optional[float] = None
    effect_bpb: Optional[float] = None
    p_value: Optional[float] = None
    verdict: Optional[str] = None
    reason: Optional[str] = None
    test_bpb: Optional[float] = None


@dataclass
class Track:
    name: str
    head: Optional[str] = None        # the mainline commit now
    history: list = field(default_factory=list)      # MainlineStep, in order


@dataclass
class WorkerStatus:
    worker: str
    track: Optional[str] = None
    hardware_class: Optional[str] = None
    hardware: object = None
    profile: Optional[str] = None
    joined: Optional[float] = None
    last_seen: Optional[float] = None
    state: str = "idle"               # idle / busy / lost
    trial_id: Optional[str] = None
    trials: int = 0
    crashes: int = 0
    lost_reason: Optional[str] = None


@dataclass
class Usage:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0


def ident(x, required=False):
    """An id-like field (trial, worker, track, commit...) as a string; junk is unusable data."""
    if x is None or x == "":
        if required:
            raise ValueError("missing id")
        return None
    if isinstance(x, str):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    raise ValueError(f"not an id: {x!r:.40}")


def text(x) -> str:
    """A free-text field as a string, whatever a writer put there."""
    if x is None:
        return ""
    return x if isinstance(x, str) else json.dumps(x, default=str)


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0.0


def mean(values):
    return sum(values) / len(values) if values else None
