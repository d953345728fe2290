"""The worker's own clone of the research repository, and commits arriving as bytes.

Commits travel over Ray as git bundles (or format-patch mailboxes) and are
fetched into this clone; a trial checks its commit out on the worker's own
branch, swarm/<campaign>/<worker>. No shared filesystem, no SSH.

Every git call runs with hooks, fsmonitor and drivers off (safety/gitsafe.py), and
the clone is cleaned of what a trial may have planted in .git before the worker
uses it again (load, import, apply, checkout).
"""

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from safety.gitsafe import GitError, clean_clone, git, git_options

# First line of a git bundle (v2 or v3); anything else given as a bundle is read as a patch.
BUNDLE_SIGNATURE = re.compile(rb"^# v[23] git bundle\n")
# Where fetched bundle refs land (keeps their commits reachable until the next import).
INCOMING = "refs/swarm/incoming/"
# Where the worker's load_repo() keeps the source repository's refs.
SOURCE = "refs/swarm/source/"
# Who the worker is when it has to make a commit (applying a patch).
IDENTITY = {"user.name": "swarm worker", "user.email": "worker@autoresearch-swarm"}
# A plain ref component: campaign tags and worker names become branch names.
REF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Git's empty tree: the base when a commit is compared against "nothing".
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


class CandidateError(Exception):
    """The commit given to the worker cannot be used (bad bundle, missing base, bad patch)."""


def branch_name(campaign: str, worker: str) -> str:
    for what, part in (("campaign tag", campaign), ("worker name", worker)):
        if not REF_PART.match(part) or ".." in part or part.endswith(".lock"):
            raise ValueError(f"{what} {part!r} cannot be part of a git branch name: use letters, "
                             "digits, '.', '_' or '-' (e.g. 'night-1', 'mac-studio')")
    return f"swarm/{campaign}/{worker}"


def bundle_heads(data: bytes) -> tuple[list[str], list[tuple[str, str]]]:
    """(prerequisite shas, [(sha, refname)]) from a bundle's header; ValueError when not a bundle."""
    if not BUNDLE_SIGNATURE.match(data[:20]):
        raise ValueError("not a git bundle")
    header, sep, _ = data.partition(b"\n\n")
    if not sep:
        raise ValueError("truncated git bundle (no end of header)")
    prereqs, refs = [], []
    for line in header.decode("utf-8", "replace").splitlines()[1:]:
        if line.startswith("@"):       # v3 capability
            continue
        if line.startswith("-"):
            prereqs.append(line[1:].split(" ", 1)[0])
        elif line:
            sha, _, ref = line.partition(" ")
            refs.append((sha, ref))
    return prereqs, refs


def make_bundle(repo_dir, commit: str = "HEAD", base: str | None = None) -> bytes:
    """Bundle bytes holding `commit` (and its history after `base`, when given) -- what a worker
    receives. A temporary ref names the commit: git bundles only carry named refs."""
    opts = git_options(repo_dir)
    sha = git(repo_dir, "rev-parse", "--verify", f"{commit}^{{commit}}", options=opts).strip()
    ref = f"refs/swarm/bundle/{sha}"
    git(repo_dir, "update-ref", ref, sha, options=opts)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "c.bundle")
            git(repo_dir, "bundle", "create", "--quiet", path, ref, *([f"^{base}"] if base else []), options=opts)
            return Path(path).read_bytes()
    finally:
        git(repo_dir, "update-ref", "-d", ref, options=opts)


def make_full_bundle(repo_dir) -> bytes:
    """Every branch and tag of a repository, plus HEAD: what load_repo() takes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "all.bundle")
        git(repo_dir, "bundle", "create", "--quiet", path, "HEAD", "--branches", "--tags")
        return Path(path).read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class WorkerRepo:
    """The clone at `path`, trials checked out on `branch`. Only the methods that change the clone
    (load, import_bundle, apply_patch, checkout) clean it: the coordinator also reads the user's
    own repository through this class, and that one is never rewritten."""

    def __init__(self, path, branch: str):
        self.path = Path(path)
        self.branch = branch
        self.is_repo = (self.path / ".git").is_dir()    # False: not a plain clone (or not yet made)
        self._options = git_options(self.path) if self.is_repo else None   # computed once, as clean
        self._config = None      # the clone's own config values, once read (safety.gitsafe.clean_clone)

    def _git(self, *args, **kwargs):
        return git(self.path, *args, options=self._options, **kwargs)

    def _clean(self):
        """Before the worker uses its clone: nothing a trial planted in .git can run or redirect git."""
        try:
            self._config = clean_clone(self.path, IDENTITY, self._config)
        except ValueError as e:
            raise CandidateError(f"the worker's clone was tampered with: {e}; delete {self.path} "
                                 "and load the repository again") from None
        self._options = git_options(self.path)

    @property
    def loaded(self) -> bool:
        return self.head() is not None

    def head(self) -> str | None:
        """The commit checked out, None before the first load."""
        return self.resolve("HEAD")

    # ---- getting commits in --------------------------------------------------------------

    def load(self, bundle: bytes) -> str:
        """Clone (first time) or update from a bundle of the research repository; check out its
        HEAD (or its first ref) on the worker's branch. Returns that commit."""
        try:
            _, refs = bundle_heads(bundle)
        except ValueError as e:
            raise CandidateError(f"load_repo needs a git bundle of the research repository "
                                 f"(git bundle create - HEAD --branches): {e}") from None
        if not refs:
            raise CandidateError("the repository bundle names no refs")
        gd = self.path / ".git"
        if gd.is_symlink() or (gd.exists() and not gd.is_dir()):
            shutil.rmtree(self.path)     # a trial replaced .git: the clone is rebuilt from the bundle
            self.is_repo, self._config = False, None
        if not self.is_repo:
            self.path.mkdir(parents=True, exist_ok=True)
            git(self.path, "init", "--quiet")
            self.is_repo = True
        self._clean()
        self._fetch(bundle, [(ref, SOURCE + _strip_refs(ref)) for _, ref in refs])
        head = dict((ref, sha) for sha, ref in refs).get("HEAD", refs[0][0])
        self.checkout(head)
        return head

    def import_bundle(self, bundle: bytes):
        """Fetch every ref of a candidate bundle (its commits become available here)."""
        try:
            prereqs, refs = bundle_heads(bundle)
        except ValueError as e:
            raise CandidateError(f"the candidate's bytes are not a usable git bundle: {e}") from None
        self._clean()
        missing = [p for p in prereqs if not self.has_commit(p)]
        if missing:
            raise CandidateError(f"the bundle is based on commit(s) {', '.join(m[:12] for m in missing)} "
                                 "that this worker does not have; send a bundle based on a commit "
                                 "from the repository given to load_repo (or a full bundle)")
        self._fetch(bundle, [(ref, INCOMING + _strip_refs(ref)) for _, ref in refs])

    def _fetch(self, bundle: bytes, mapping: list[tuple[str, str]]):
        with tempfile.NamedTemporaryFile(suffix=".bundle", dir=self.path / ".git", delete=False) as f:
            f.write(bundle)
        try:
            self._git("fetch", "--no-tags", "--quiet", "--force", f.name, *[f"+{src}:{dst}" for src, dst in mapping])
        except GitError as e:
            raise CandidateError(f"git could not read the bundle: {e}") from None
        finally:
            os.unlink(f.name)

    def apply_patch(self, patch: bytes, base: str) -> str:
        """Apply a `git format-patch --stdout base..commit` mailbox on `base`; return the new commit.
        The committer is taken from the author, so a commit made in one go gets its original id back."""
        if not base or not self.has_commit(base):
            raise CandidateError(f"a patch needs a base commit this worker has; got {base!r}")
        author = re.search(rb"^From: (.*?) <([^>]*)>$", patch, re.MULTILINE)
        if not patch.startswith(b"From ") or not author:
            raise CandidateError("the candidate's bytes are neither a git bundle nor a "
                                 "`git format-patch --stdout` mailbox")
        self._clean()
        self._git("checkout", "--quiet", "--force", "--detach", base)
        env = {**os.environ, "GIT_COMMITTER_NAME": author.group(1).decode("utf-8", "replace").strip('"'),
               "GIT_COMMITTER_EMAIL": author.group(2).decode("utf-8", "replace")}
        with tempfile.NamedTemporaryFile(suffix=".patch", dir=self.path / ".git", delete=False) as f:
            f.write(patch)
        try:
            self._git("am", "--quiet", "--keep-non-patch", "--committer-date-is-author-date", f.name, env=env)
        except GitError as e:
            try:
                self._git("am", "--abort")
            except GitError:
                pass
            raise CandidateError(f"the patch does not apply on {base[:12]}: {e}") from None
        finally:
            os.unlink(f.name)
        return self.head()

    # ---- reading -------------------------------------------------------------------------

    def has_commit(self, rev: str) -> bool:
        return self.resolve(rev) is not None

    def resolve(self, rev: str) -> str | None:
        """Full sha of a commit, None when this clone does not have it."""
        if not rev or not self.is_repo:
            return None
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip() or None
        except GitError:
            return None

    def changes(self, base: str | None, commit: str) -> list[tuple[str, list[str]]]:
        """[(status letter, paths)] between two commits, renames detected (R: [old, new])."""
        out = self._git("diff-tree", "-r", "-z", "-M", "--name-status", "--no-commit-id", base or EMPTY_TREE, commit)
        words = out.split("\0")
        changes, i = [], 0
        while i < len(words) and words[i]:
            status = words[i][0]
            n = 2 if status in "RC" else 1
            changes.append((status, words[i + 1:i + 1 + n]))
            i += 1 + n
        return changes

    def entry(self, commit: str, path: str) -> tuple[int, bytes] | None:
        """(mode, content) of a path in a commit; None when absent or not a file."""
        try:
            listed = self._git("ls-tree", "-z", "--full-tree", commit, "--", path)
        except GitError as e:
            raise CandidateError(f"cannot read {path} in commit {commit[:12]}: {e}") from None
        meta, _, name = listed.rstrip("\0").partition("\t")
        parts = meta.split()
        if name != path or len(parts) != 3 or parts[1] != "blob":
            return None
        return int(parts[0], 8), self._git("cat-file", "blob", parts[2], text=False)

    def file_hashes(self, commit: str, paths) -> dict[str, str | None]:
        out = {}
        for p in paths:
            e = self.entry(commit, p)
            out[p] = sha256(e[1]) if e else None
        return out

    # ---- the working tree ----------------------------------------------------------------

    def checkout(self, commit: str):
        """The worker's branch at `commit`, working tree exactly that commit (nothing left over)."""
        self._clean()
        self._git("checkout", "--force", "--quiet", "-B", self.branch, commit)
        self._git("clean", "-ffdxq")

    def current_branch(self) -> str | None:
        try:
            return self._git("symbolic-ref", "--quiet", "--short", "HEAD").strip()
        except GitError:
            return None


def _strip_refs(ref: str) -> str:
    return ref[len("refs/"):] if ref.startswith("refs/") else ref
