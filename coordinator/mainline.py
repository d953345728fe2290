"""
The coordinator's git: the user's research repository holds every mainline and
every experiment commit of a campaign.

    refs/swarm/<tag>/initial                 the commit the campaign started from
    swarm/<tag>/<track-slug>/mainline        one branch per track (moves on merge, promote, revert)
    refs/swarm/<tag>/exp/<candidate_id>      every candidate commit, discarded ones too
    refs/swarm/<tag>/merge/<candidate_id>    every merge commit, reverted ones too

Candidates are built in a scratch worktree (.swarm/<tag>/scratch) checked out
at the trusted mainline: the implementer edits the editable files there and the
coordinator commits what changed (editable files only) with plumbing
(write-tree, commit-tree), so the user's own checkout, branch, hooks and
signing settings are never touched, and no hook, fsmonitor or filter/merge driver runs
(safety/gitsafe.py: every call here goes through run_git). A confirmed candidate is merged with
`git merge-tree --write-tree` (a three-way merge without a working tree); a
conflict is reported, not resolved.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections import OrderedDict
from pathlib import Path

from agents.base import Hypothesis, ImplementationError, Implementer
from worker.repo import make_bundle
from safety.gitsafe import run_git

# Who the coordinator is when it commits (no user config needed, nothing signed).
IDENTITY = {"GIT_AUTHOR_NAME": "autoresearch-swarm", "GIT_AUTHOR_EMAIL": "swarm@autoresearch-swarm",
            "GIT_COMMITTER_NAME": "autoresearch-swarm", "GIT_COMMITTER_EMAIL": "swarm@autoresearch-swarm"}
# Worker bundles kept in memory (several seeds of one candidate share one bundle).
BUNDLE_CACHE = 256


class MainlineError(RuntimeError):
    """The research repository cannot be used as the campaign's git; the message says what to do."""


def track_slug(track: str) -> str:
    """A track name as one git ref component: apple-m3/default/300s/ab12 -> apple-m3-default-300s-ab12."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", track).strip("-.") or "track"


class MainlineRepo:
    def __init__(self, repo_path, campaign: str | None, swarm_dir=None):
        self.path = Path(repo_path).resolve()
        p = run_git(["rev-parse", "--is-bare-repository", "--show-toplevel"], self.path, capture_output=True,
                    text=True) if self.path.is_dir() else None
        said = p.stdout.split("\n") if p is not None and p.returncode == 0 else []
        if said and said[0] == "true":
            raise MainlineError(f"{self.path} is a bare repository; point --repo at a checkout")
        if len(said) < 2 or Path(said[1]).resolve() != self.path:
            raise MainlineError(f"{self.path} is not a git repository: the swarm keeps every experiment as "
                                f"a commit there. Run `git init && git add -A && git commit -m start` "
                                f"in it first.")
        self.tag = campaign            # may be set later, once the campaign is chosen
        self.swarm_dir = Path(swarm_dir) if swarm_dir else self.path / ".swarm"
        self._bundles: OrderedDict[str, bytes | None] = OrderedDict()
        self._exclude_swarm_dir()

    # -- names -------------------------------------------------------------------
    @property
    def scratch_path(self) -> Path:
        return self.swarm_dir / self.tag / "scratch"

    def branch(self, track: str) -> str:
        return f"swarm/{self.tag}/{track_slug(track)}/mainline"

    @property
    def initial_ref(self) -> str:
        return f"refs/swarm/{self.tag}/initial"

    def exp_ref(self, candidate_id: str) -> str:
        return f"refs/swarm/{self.tag}/exp/{candidate_id}"

    def merge_ref(self, candidate_id: str) -> str:
        return f"refs/swarm/{self.tag}/merge/{candidate_id}"

    # -- plain git -----------------------------------------------------------------
    def git(self, *args, cwd=None, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, **IDENTITY, "LC_ALL": "C"}
        p = run_git(args, cwd or self.path, env=env, input=input, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise MainlineError(f"git {' '.join(args)} failed in {cwd or self.path}: "
                                f"{(p.stderr or p.stdout).strip()[:800]}")
        return p

    def rev(self, rev: str) -> str | None:
        p = self.git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
        return p.stdout.strip() if p.returncode == 0 else None

    def _exclude_swarm_dir(self):
        """.swarm/ (journal, scratch worktree, worker clones) stays out of `git status`."""
        try:
            rel = self.swarm_dir.resolve().relative_to(self.path)
        except ValueError:
            return
        exclude = Path(self.git("rev-parse", "--git-path", "info/exclude").stdout.strip())
        if not exclude.is_absolute():
            exclude = self.path / exclude
        line = f"/{rel.as_posix()}/"
        text = exclude.read_text() if exclude.exists() else ""
        if line not in text.splitlines():
            exclude.parent.mkdir(parents=True, exist_ok=True)
            exclude.write_text(text + ("" if not text or text.endswith("\n") else "\n") + line + "\n")

    # -- the campaign's start ----------------------------------------------------------
    def head_commit(self) -> str:
        sha = self.rev("HEAD")
        if sha is None:
            raise MainlineError(f"{self.path} has no commit yet: commit train.py, prepare.py (and "
                                f"target.toml) first, e.g. `git add -A && git commit -m start`")
        return sha

    def uncommitted(self, paths) -> list[str]:
        """Which of these paths differ between the working tree and HEAD (not part of the campaign)."""
        if not paths:
            return []
        p = self.git("status", "--porcelain", "--untracked-files=no", "--", *paths, check=False)
        return [line[3:] for line in p.stdout.splitlines() if line.strip()]

    def pin_initial(self, commit: str):
        self.git("update-ref", self.initial_ref, commit)

    def read(self, commit: str, path: str) -> bytes | None:
        p = run_git(["cat-file", "blob", f"{commit}:{path}"], self.path, capture_output=True)
        return p.stdout if p.returncode == 0 else None

    def fixed_hashes(self, commit: str, fixed) -> dict[str, str]:
        """sha256 of each fixed file at a commit (what every worker checks candidates against)."""
        out = {}
        for path in fixed:
            data = self.read(commit, path)
            if data is not None:
                out[path] = hashlib.sha256(data).hexdigest()
        return out

    def files(self, commit: str, is_editable) -> dict[str, str]:
        """Text of the editable files at a commit: path -> text."""
        names = self.git("ls-tree", "-r", "--name-only", "-z", commit).stdout.split("\0")
        out = {}
        for name in names:
            if name and is_editable(name):
                data = self.read(commit, name)
                if data is not None:
                    out[name] = data.decode("utf-8", "replace")
        return out

    # -- mainline branches ---------------------------------------------------------------
    def branch_commit(self, track: str) -> str | None:
        return self.rev(f"refs/heads/{self.branch(track)}")

    def set_branch(self, track: str, commit: str):
        self.git("update-ref", f"refs/heads/{self.branch(track)}", commit)

    # -- candidates ----------------------------------------------------------------------
    def _scratch(self, base: str) -> Path:
        """The scratch worktree, checked out (detached, clean) at base."""
        ws = self.scratch_path
        if not (ws / ".git").exists():
            self.git("worktree", "prune")
            if ws.exists():
                shutil.rmtree(ws)
            ws.parent.mkdir(parents=True, exist_ok=True)
            self.git("worktree", "add", "--detach", "--force", str(ws), base)
        self.git("checkout", "--force", "--detach", "--quiet", base, cwd=ws)
        self.git("clean", "-ffdxq", cwd=ws)
        return ws

    def build_candidate(self, h: Hypothesis, implementer: Implementer, base: str, candidate_id: str,
                        is_editable) -> tuple[str, str]:
        """Implement h on base in the scratch worktree and commit it under its exp ref.
        Returns (commit, diff). Raises ImplementationError when it cannot be built."""
        ws = self._scratch(base)
        try:
            implementer.implement(h, ws)
        except ImplementationError:
            raise
        except Exception as e:  # an agent's failure is the hypothesis's, not the campaign's
            raise ImplementationError(f"the {implementer.name} implementer failed: "
                                      f"{type(e).__name__}: {e}") from e
        self.git("add", "-A", cwd=ws)
        changed = [p for p in self.git("diff", "--cached", "--name-only", "-z", base, cwd=ws)
                   .stdout.split("\0") if p]
        if not changed:
            raise ImplementationError(f"implementing {h.title!r} changed nothing in the editable files")
        outside = [p for p in changed if not is_editable(p)]
        if outside:
            raise ImplementationError(f"the implementation changed files outside the editable set: "
                                      f"{', '.join(outside[:5])}")
        tree = self.git("write-tree", cwd=ws).stdout.strip()
        message = (f"{h.title}\n\n{h.rationale}\n\nhypothesis: {h.hypothesis_id}\n"
                   f"candidate: {candidate_id}\nagent: {h.agent}\ncampaign: {self.tag}\n")
        commit = self.git("commit-tree", tree, "-p", base, input=message).stdout.strip()
        self.git("update-ref", self.exp_ref(candidate_id), commit)
        return commit, self.diff(base, commit)

    def diff(self, a: str, b: str) -> str:
        return self.git("diff", "--no-ext-diff", "--no-textconv", "--full-index", "--binary", a, b).stdout

    def merge(self, candidate_commit: str, onto: str, candidate_id: str, title: str) -> tuple[str | None, str, bool]:
        """Three-way merge of a candidate into the mainline commit `onto` (a merge commit even when
        onto is the candidate's base). Returns (merge commit, "", False), or (None, why, conflict):
        conflict True when the changes overlap, False when the mainline has the change already."""
        p = self.git("merge-tree", "--write-tree", "--name-only", "--no-messages", onto, candidate_commit,
                     check=False)
        lines = p.stdout.splitlines()
        if p.returncode == 1:
            files = [x for x in lines[1:] if x.strip()]
            return None, f"merge conflict with mainline {onto[:12]} in {', '.join(files) or 'some files'}", True
        if p.returncode != 0 or not lines:
            raise MainlineError(f"git merge-tree {onto[:12]} {candidate_commit[:12]} failed: "
                                f"{p.stderr.strip()[:500]} (git >= 2.38 is needed)")
        tree = lines[0].strip()
        if tree == self.git("rev-parse", f"{onto}^{{tree}}").stdout.strip():
            return None, f"the mainline {onto[:12]} has its change already (the merge changes nothing)", False
        message = f"Merge candidate {candidate_id}: {title}\n\ncampaign: {self.tag}\n"
        commit = self.git("commit-tree", tree, "-p", onto, "-p", candidate_commit, input=message).stdout.strip()
        self.git("update-ref", self.merge_ref(candidate_id), commit)
        return commit, "", False

    # -- bundles for workers -----------------------------------------------------------------
    def load_bundle(self, initial: str) -> bytes:
        """What every worker's load_repo() gets: the initial commit with its history."""
        return make_bundle(self.path, initial)

    def bundle(self, commit: str, initial: str) -> bytes | None:
        """The commits a worker needs beyond the initial one to run `commit` (None: nothing)."""
        if commit == initial:
            return None
        if commit in self._bundles:
            self._bundles.move_to_end(commit)
            return self._bundles[commit]
        data = make_bundle(self.path, commit, base=initial)
        self._bundles[commit] = data
        while len(self._bundles) > BUNDLE_CACHE:
            self._bundles.popitem(last=False)
        return data


class PatchImplementer(Implementer):
    """Implements a hypothesis that carries a patch (a win ported from another track, a
    code-writing agent's diff) with `git apply --3way` on the workspace's mainline."""

    name = "patch"

    def implement(self, h: Hypothesis, workspace: Path) -> None:
        if not h.patch:
            raise ImplementationError(f"hypothesis {h.hypothesis_id} carries no patch")
        p = run_git(["apply", "--3way", "--whitespace=nowarn", "-"], workspace, input=h.patch,
                    capture_output=True, text=True, env={**os.environ, **IDENTITY, "LC_ALL": "C"})
        if p.returncode != 0:
            raise ImplementationError(f"the patch does not apply on mainline: "
                                      f"{(p.stderr or p.stdout).strip()[:500]}")
