"""Read a finished run: its summary figures, or what kind of failure it was and why.

The coordinator treats failure classes differently (an OOM says "too big for
this machine", NaN says "unstable", time says "ran past the worker's clock", a timeout says "hung"),
so every run ends in exactly one class with a one-line reason and the log's tail.
"""

import json
import math
import re
import signal
from dataclasses import dataclass, field

from .runner import Outcome
from core.target import Target

# Lines of the log kept in a result (the full log stays on disk).
TAIL_LINES = 40
# Characters of the log kept in a result, at most.
TAIL_CHARS = 4000
# Exit code train.py uses for divergence, and the line it prints.
DIVERGENCE_EXIT = 3
DIVERGENCE_RE = re.compile(r"^error: divergence:.*$", re.MULTILINE)
# Out-of-memory as Python, MLX (Metal/CPU allocators) and C++ report it.
OOM_RE = re.compile(r"MemoryError|std::bad_alloc|bad_alloc|Unable to allocate|[Oo]ut of memory|"
                    r"OutOfMemory|Insufficient Memory|Cannot allocate memory")
TRACEBACK = "Traceback (most recent call last):"
SUMMARY_JSON = "summary_json:"


@dataclass
class Classified:
    status: str                  # ok | crash | invalid | aborted
    crash_class: str | None      # None | exception | oom | nan | timeout | no_summary | invalid | time
    reason: str
    value: float | None = None   # the target's metric (val_bpb)
    metrics: dict = field(default_factory=dict)
    log_tail: str = ""


def tail(text: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    out = "\n".join(text.rstrip().splitlines()[-lines:])
    return out[-chars:]


def _number(v: str):
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def parse_summary(text: str) -> dict:
    """Summary figures: train.py's summary_json line, else the `key: value` block after the last `---`."""
    for line in reversed(text.splitlines()):
        if line.startswith(SUMMARY_JSON):
            try:
                d = json.loads(line[len(SUMMARY_JSON):])
                if isinstance(d, dict):
                    return d
            except ValueError:
                pass
            break
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return {}
    out = {}
    for line in lines[starts[-1] + 1:]:
        key, sep, value = line.partition(":")
        if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()) and value.strip():
            out[key.strip()] = _number(value.strip())
    return out


def last_traceback(text: str) -> tuple[str, str]:
    """(exception line with the failing frame, the traceback's last lines) of the last traceback."""
    at = text.rfind(TRACEBACK)
    if at < 0:
        return "", ""
    lines = text[at:].splitlines()
    frame, exc = "", ""
    for i, line in enumerate(lines[1:], 1):
        if line.startswith("  File "):
            frame = line.strip()
        elif line and not line.startswith(" ") and not line.startswith("#"):
            exc = line.strip()
            lines = lines[:i + 1]
            break
    reason = exc or "traceback without an exception line"
    if frame:
        reason += f" ({frame})"
    return reason, "\n".join(lines[-15:])


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def classify(outcome: Outcome, target: Target, budget: float, needs_metric: bool = True,
             over_time: str | None = None) -> Classified:
    """needs_metric=False when the metric comes from elsewhere (the fixed evaluator). over_time: the
    reason when the hard timeout was the worker's clock (the run is then invalid, not a crash)."""
    text = outcome.text
    log_tail = tail(text)
    rc = outcome.returncode

    def crash(cls, reason, value=None, metrics=None):
        return Classified("crash", cls, reason, value, metrics or {}, log_tail)

    if outcome.aborted:
        return Classified("aborted", None, "aborted by request", log_tail=log_tail)
    if outcome.timed_out and over_time:
        return Classified("invalid", "time", over_time, log_tail=log_tail)
    if outcome.timed_out:
        return crash("timeout", f"no result within the hard timeout ({outcome.seconds:.0f}s for a "
                                f"{budget:g}s budget); the process group was killed")
    divergence = DIVERGENCE_RE.findall(text)
    if divergence or rc == DIVERGENCE_EXIT:
        return crash("nan", divergence[-1].strip() if divergence else f"exit code {DIVERGENCE_EXIT} (divergence)")
    if rc != 0:
        oom = OOM_RE.search(text)
        if oom:
            line = text[:oom.end()].rsplit("\n", 1)[-1] + text[oom.end():].split("\n", 1)[0]
            return crash("oom", f"out of memory: {line.strip()[:300]}")
        if rc == -signal.SIGKILL:
            return crash("oom", "killed by SIGKILL from outside the worker (most likely the OS "
                                "out-of-memory killer)")
        reason, excerpt = last_traceback(text)
        if reason:
            # the last traceback lines belong in the tail even when more output followed them
            shown = log_tail if excerpt in log_tail else excerpt + "\n...\n" + tail(text, 15)
            return Classified("crash", "exception", reason[:500], None, {}, shown)
        how = f"killed by {_signal_name(rc)}" if rc < 0 else f"exit code {rc}"
        said = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip() and not ln.startswith("#")), "")
        return crash("exception", f"{how} without a traceback" + (f": {said[:300]}" if said else ""))

    metrics = parse_summary(text)
    if not needs_metric:
        return Classified("ok", None, "", None, metrics, log_tail)
    value = target.metric_value(text)
    if value is None:
        return crash("no_summary", f"exited 0 but printed no metric line (regex {target.metric!r})",
                     metrics=metrics)
    if not math.isfinite(value):
        return crash("nan", f"the metric is {value}", value, metrics)
    return Classified("ok", None, "", value, metrics, log_tail)
