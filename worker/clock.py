"""The worker's clock: how long a run may take before the worker ends it.

A run may take its budget + a start-up allowance of wall time. The allowance is
learned per track on this worker: ALLOWANCE_FACTOR x the slowest start-up (wall
time - budget) of the last STARTUPS_KEPT ok mainline (baseline) runs, +
ALLOWANCE_SLACK. Candidates never teach it (a candidate could slow its own
start-up to buy itself training time). Until a start-up is measured the target's
`grace` applies. The measurements live in the worker's clock.json, so a
restarted worker keeps them.
"""

import json
import os
from pathlib import Path

# Times the slowest measured start-up a run may take on top of its budget.
ALLOWANCE_FACTOR = 1.5
# Seconds added to that, for a machine a little busier than when it was measured.
ALLOWANCE_SLACK = 15.0
# Mainline start-ups remembered per track (the newest).
STARTUPS_KEPT = 8


class StartupClock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.startups = _read_json(self.path) or {}     # track -> start-up seconds of mainline runs

    def allowance(self, track, grace: float, given=None) -> tuple[float, str]:
        """Start-up seconds a run of this track may take on top of its budget, and where it comes from."""
        if given:
            return float(given), "given by the coordinator"
        measured = self.startups.get(track or "", [])
        if measured:
            return (ALLOWANCE_FACTOR * max(measured) + ALLOWANCE_SLACK,
                    f"{ALLOWANCE_FACTOR:g} x the slowest of {len(measured)} mainline start-ups + {ALLOWANCE_SLACK:g}s")
        return float(grace), "no mainline start-up measured yet: target grace"

    def measured(self, track, seconds: float):
        """A mainline run of the track started up in `seconds`."""
        kept = self.startups.setdefault(track or "", [])
        kept.append(round(max(0.0, seconds), 2))
        del kept[:-STARTUPS_KEPT]
        tmp = Path(str(self.path) + ".tmp")
        tmp.write_text(json.dumps(self.startups))
        os.replace(tmp, self.path)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
