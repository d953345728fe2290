"""Trial execution on one accelerator: see worker/worker.py (Worker) and CONTRACTS.md.

The names below are imported on first use: `python -m worker.launch` (a fork's trial, started in
its sandbox) then skips git and the journal (~0.5 s of start-up per trial)."""

import importlib

_WHERE = {"Worker": ".worker", "TrialSpec": ".worker", "TrialResult": ".worker",
          "CandidateError": ".repo", "make_bundle": ".repo", "make_full_bundle": ".repo"}

__all__ = list(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
