"""Trial execution on one accelerator: see worker/worker.py (Worker) and CONTRACTS.md."""

from .repo import CandidateError, make_bundle, make_full_bundle
from .target import Target, TargetError
from .worker import TrialResult, TrialSpec, Worker

__all__ = ["Worker", "TrialSpec", "TrialResult", "Target", "TargetError", "CandidateError",
           "make_bundle", "make_full_bundle"]
