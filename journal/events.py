"""Journal events: one dataclass, its JSON form, and the known event types.

An event is immutable history: once appended it is never edited. Readers must
cope with events they do not understand (a newer writer, a typo, a new type):
they keep them and show them as unknown instead of crashing.
"""

import json
import math
import uuid
import time as _time
from dataclasses import dataclass, field

# Version of the event schema this code writes. An event with a higher `v` was
# written by newer code: views keep it as "unknown" rather than misread it.
SCHEMA_VERSION = 1

# Known event types (CONTRACTS.md lists each one's data fields). Views key on these names;
# an event of another type is kept and shown as unknown.
EVENT_TYPES = frozenset({
    "campaign_started", "campaign_stopped", "campaign_resumed", "stop_requested", "coordinator_lease",
    "worker_joined", "worker_lost", "worker_heartbeat",
    "trial_started", "trial_progress", "trial_finished",
    "hypothesis_proposed", "candidate_created", "candidate_invalid", "fix_requested",
    "verdict", "merged", "merge_conflict", "retested", "promoted", "reverted", "heldout_result",
    "lab_note", "agent_usage",
})
# Namespace of event ids that are derived rather than random (result_event_id).
RESULT_ID_NAMESPACE = uuid.UUID("5a0e6f1c-3b7d-4c59-9f0e-2f3c1d7a8b90")


def result_event_id(trial_id: str) -> str:
    """The id of a trial's trial_finished event, the same whoever writes it (the worker, or the
    coordinator from the worker's Ray reply): appends are idempotent by id, so a result that
    both send after a journal outage is stored once."""
    return uuid.uuid5(RESULT_ID_NAMESPACE, f"trial_finished:{trial_id}").hex


def _json_default(obj):
    # numpy scalars (a worker's metrics) and Paths are common in data dicts
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def dumps(obj) -> str:
    """Compact one-line JSON. NaN stays NaN (a crashed trial's val_bpb); Python reads it back.
    Raises ValueError only for circular data."""
    return json.dumps(obj, separators=(",", ":"), default=_json_default)


@dataclass
class Event:
    """One journal entry. Build with keywords: Event(type="lab_note", source="me", data={...})."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    campaign: str = ""
    time: float = field(default_factory=_time.time)
    source: str = ""
    type: str = ""
    data: dict = field(default_factory=dict)
    v: int = SCHEMA_VERSION

    def __post_init__(self):
        if not isinstance(self.type, str) or not self.type:
            raise ValueError(f"Event needs a type (a non-empty string), got {self.type!r}")
        if not isinstance(self.data, dict):
            raise ValueError(f"Event data must be a dict, got {type(self.data).__name__}")

    @property
    def known(self) -> bool:
        """True when this code understands the event (known type, schema not newer)."""
        return self.type in EVENT_TYPES and self.v <= SCHEMA_VERSION

    def to_dict(self) -> dict:
        return {"id": self.id, "campaign": self.campaign, "time": self.time,
                "source": self.source, "type": self.type, "v": self.v, "data": self.data}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "Event":
        """Tolerant: missing or odd fields get neutral values, so an odd record still replays."""
        if not isinstance(d, dict):
            raise ValueError(f"an event must be a JSON object, got {type(d).__name__}")
        id_, campaign, t = d.get("id"), d.get("campaign"), d.get("time")
        source, type_, v, data = d.get("source"), d.get("type"), d.get("v"), d.get("data")
        return cls._make(id_ if isinstance(id_, str) and id_ else str(id_ or uuid.uuid4().hex),
                         campaign if isinstance(campaign, str) else str(campaign or ""),
                         float(t) if isinstance(t, (int, float)) and math.isfinite(t) else 0.0,
                         source if isinstance(source, str) else str(source or ""),
                         type_ if isinstance(type_, str) and type_ else str(type_ or "untyped"),
                         data if isinstance(data, dict) else {"value": data},
                         v if isinstance(v, int) else SCHEMA_VERSION)

    @classmethod
    def _make(cls, id, campaign, time, source, type, data, v) -> "Event":
        """Build from fields already checked, skipping __init__: replay builds 100k of these."""
        ev = cls.__new__(cls)
        ev.id, ev.campaign, ev.time, ev.source, ev.type, ev.data, ev.v = id, campaign, time, source, type, data, v
        return ev

    @classmethod
    def from_json(cls, text) -> "Event":
        """Parse one JSON line (str or bytes). Raises ValueError when it is not an event."""
        return cls.from_dict(json.loads(text))


def malformed(raw, why: str, pos: str) -> Event:
    """What a reader yields for a stored record it cannot parse: kept and shown, never a crash."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return Event(id=f"malformed-{pos}", type="malformed", source="journal",
                 data={"raw": str(raw)[:2000], "error": why})
