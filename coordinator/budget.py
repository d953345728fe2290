"""The time budget of a campaign and the track it names: known before Ray starts, or refused.

A track is `hardware/profile/budget/fingerprint`: results are compared only within one. The
budget comes from, in order: --time-budget (swarm.toml), the target's `time_budget`, the
fingerprint command (this project's prepare.py prints its profile's), the TIME_BUDGET constant of
the target's prepare.py (upstream-shaped forks, read without running it). A self-reported target
(a fork) with none of these is refused before anything starts, with the key to set.
"""

from worker.fork import BUDGET_CONSTANT, CONSTANTS_FILE, budget
from core.target import TARGET_FILE, fmt_seconds, track_name


class BudgetError(ValueError):
    """No time budget anywhere: the message names the key to set."""


def require_budget(given: float | None, target, prepare_source: bytes | None) -> float | None:
    """The campaign's budget where it is known here (None: the workers' fingerprint says it)."""
    if given:
        return float(given)
    if target.time_budget:
        return float(target.time_budget)
    if not target.self_reported:        # this project's target: `prepare.py --fingerprint` prints it
        return None
    found = budget(prepare_source.decode(errors="replace")) if prepare_source is not None else None
    if found:
        return found
    where = (f"its {CONSTANTS_FILE} sets no {BUDGET_CONSTANT} constant" if prepare_source is not None
             else f"it has no {CONSTANTS_FILE}")
    raise BudgetError(f"no time budget for target {target.name!r}: {TARGET_FILE} names none and {where}. "
                      f"Add `time_budget = 300` (seconds of training per trial) to {TARGET_FILE}, "
                      "or pass --time-budget 300")


def track_of(info: dict, given: float | None) -> str | None:
    """The track a joining worker trains on: its own, with the campaign's budget when one was given.
    None when neither knows a budget (such a worker cannot join)."""
    track = info.get("track")
    if not given:
        return track
    if track:
        parts = track.split("/")
        parts[-2] = f"{fmt_seconds(given)}s"
        return "/".join(parts)
    if info.get("hardware_class") and info.get("data_fingerprint"):
        return track_name(info["hardware_class"], info.get("profile") or info.get("target") or "target",
                          given, info["data_fingerprint"])
    return None
