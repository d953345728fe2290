"""
Candidates: a hypothesis built into a commit on its mainline, checked, and journaled.

    cands = Candidates(cfg, rec, mainline, target)
    cands.commit(h, implementer, base, cid, track)   # candidate_created, or CandidateRejected
    cands.code(commit)                               # what a commit runs: its editable files' hash

An implementer edits a scratch worktree of the base commit (coordinator/mainline.py);
only editable files may change. The worker's own checks (worker/validate.py: editable
files only, fixed files by hash, no path out of the repository, Python that compiles)
run here too, at once, so the buffer holds only candidates that can run and a worker
never spends a dispatch on a broken one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from agents.base import ImplementationError
from agents.offline import OfflineImplementer
from worker.repo import WorkerRepo
from worker.validate import validate

CONSTANTS_IMPLEMENTER = "constants"  # hypotheses that only set constants are applied here, no model call


class CandidateRejected(ImplementationError):
    """A built candidate failed the worker's checks (it would not run): .diff is what was built."""

    def __init__(self, reason: str, diff: str):
        super().__init__(reason)
        self.diff = diff


class FilesImplementer:
    """Writes the files an agent job produced (path -> text, None: deleted) into the scratch
    worktree, so the coordinator's thread commits them like any implementation."""

    def __init__(self, files: dict, name: str):
        self.files, self.name = files, name

    def implement(self, h, workspace: Path) -> None:
        for rel, text in self.files.items():
            p = Path(workspace) / rel
            if text is None:
                p.unlink(missing_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text, encoding="utf-8")


class ConstantsImplementer(OfflineImplementer):
    """A hypothesis that only sets constants (params) is applied by rewriting them, at once: a
    model call would cost seconds and tokens for a one-line edit. Anything it cannot set goes
    to the agent's implementer."""

    name = CONSTANTS_IMPLEMENTER


class Candidates:
    def __init__(self, cfg, rec, mainline, target):
        self.cfg, self.rec, self.mainline, self.target = cfg, rec, mainline, target
        self.checker = None                # the repository as worker/validate.py reads it
        self._base_files: dict = {}        # {base commit: files}, the last one asked for

    def base_files(self, base: str) -> dict:
        """The files an implementer sees: the editable ones, the fixed ones and the target's notes."""
        if base not in self._base_files:
            keep = lambda p: (self.target.is_editable(p) or p in self.target.fixed  # noqa: E731
                              or p in ("program.md", "target.toml"))
            self._base_files = {base: self.mainline.files(base, keep)}
        return self._base_files[base]

    def commit(self, h, impl, base: str, cid: str, track: str):
        """Build, check and journal a candidate; CandidateRejected when it would not run."""
        commit, diff = self.mainline.build_candidate(h, impl, base, cid, self.target.is_editable)
        problems = self._validate(commit, base)
        if problems:
            raise CandidateRejected("invalid before any trial: " + "; ".join(problems), diff)
        self.rec.emit("candidate_created", candidate_id=cid, hypothesis_id=h.hypothesis_id, track=track,
                      commit=commit, base_commit=base, diff=diff, implementer=impl.name, content=self.code(commit))

    def code(self, commit: str) -> str:
        """What a commit runs: a hash of its editable files. A merge whose train.py equals its
        candidate's is the same code, and the state books seeds by it (never a (code, seed) twice)."""
        files = self.mainline.files(commit, self.target.is_editable)
        return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:24]

    def _validate(self, commit: str, base: str) -> list:
        if self.checker is None:
            self.checker = WorkerRepo(self.cfg.repo_path, None)
        if not self.checker.is_repo:        # not a plain clone (a worktree): the worker checks it
            return []
        return validate(self.checker, self.target, commit, base, self.rec.state.fixed_hashes)
