"""Trial execution on one accelerator: see worker/worker.py (Worker) and CONTRACTS.md."""

from .repo import CandidateError, make_bundle, make_full_bundle
from .worker import TrialResult, TrialSpec, Worker

__all__ = ["Worker", "TrialSpec", "TrialResult", "CandidateError",
           "make_bundle", "make_full_bundle"]
