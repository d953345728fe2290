"""The path policy: which files a change may touch. One set of rules for every place that
checks a path: the worker's validation of a candidate commit (worker/validate.py, read from
git objects), the coordinator's same check before a candidate is queued, the model's file
tools (agents/tools.py) and the agent workspaces (agents/actor.py, agents/command_agent.py).

- editable: a repository-relative posix path equal to, or matching (fnmatch), one of the
  target's editable patterns; everything else is out of bounds (the fixed files included);
- escape: an absolute path, a backslash, an empty, "." or ".." part, or any part named .git;
- symlink: a link whose target leaves the repository;
- a resolved path must stay under its root (a link in a parent folder counts);
- editable Python must compile.
"""

from __future__ import annotations

import fnmatch
import posixpath
from pathlib import Path
from typing import Iterable


def is_editable(path: str, patterns: Iterable[str]) -> bool:
    """True when the relative posix `path` is one of the editable paths or matches a glob."""
    return any(path == p or fnmatch.fnmatchcase(path, p) for p in patterns)


def escapes(path: str) -> bool:
    """True for a path that is absolute, climbs with '..', or touches .git."""
    parts = path.split("/")
    return (path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts)
            or any(p.lower() == ".git" for p in parts))


def symlink_escapes(path: str, link: bytes) -> bool:
    """True when a symlink at `path` with target `link` points outside the repository."""
    target = link.decode("utf-8", "replace")
    if target.startswith("/") or "\\" in target:
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved == ".." or resolved.startswith("../")


def inside(root: Path, path: Path) -> bool:
    """True when `path`, links resolved, is `root` or under it."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def compile_error(path: str, source: str | bytes) -> str | None:
    """For a .py file, why it does not compile ('line N: msg'), else None."""
    if not path.endswith(".py"):
        return None
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as e:
        return f"line {e.lineno}: {e.msg}"
    except ValueError as e:  # e.g. null bytes
        return str(e)
    return None
