"""Checks on a candidate commit before it gets any accelerator time.

Everything is read from git objects, before checkout: a commit that tries to
escape the repository never reaches the working tree. A candidate may change
only the target's editable files; fixed files must hash exactly to the
campaign's; paths stay inside the repository (no '..', no absolute paths, no
symlink pointing out); editable Python files must compile.
"""

import stat

from core.paths import compile_error, escapes, symlink_escapes
from core.target import Target

from .repo import WorkerRepo, sha256

# Problems listed in one reason, at most (the rest are counted).
MAX_PROBLEMS = 5


def validate(repo: WorkerRepo, target: Target, commit: str, base: str | None,
             fixed_hashes: dict[str, str]) -> list[str]:
    """Problems with `commit` (empty list: valid). With no base, every file of the commit is
    checked for escapes and compiled, and the editable-only rule is skipped (a mainline commit)."""
    problems = []
    changed = []
    for _status, paths in repo.changes(base, commit):
        changed.extend(paths)

    for path in changed:
        if escapes(path):
            problems.append(f"path {path!r} escapes the repository")
        elif base is not None and not target.is_editable(path):
            kind = "the fixed file" if path in target.fixed else "a file outside the editable set"
            problems.append(f"changes {kind} {path} (editable: {', '.join(target.editable)})")

    if any(escapes(p) for p in changed):
        return problems       # a tree like that is not read any further (git would refuse it too)

    for path in changed:
        entry = repo.entry(commit, path)
        if entry is None:
            continue          # deleted in this commit
        mode, content = entry
        if stat.S_ISLNK(mode):
            if symlink_escapes(path, content):
                problems.append(f"{path} is a symlink pointing outside the repository "
                                f"({content.decode('utf-8', 'replace')})")
        elif target.is_editable(path) and (err := compile_error(path, content)):
            problems.append(f"{path} does not compile: {err}")

    for path in target.fixed:
        entry = repo.entry(commit, path)
        want = fixed_hashes.get(path)
        if entry is None:
            if want is not None:
                problems.append(f"the fixed file {path} is missing")
            continue
        got = sha256(entry[1])
        if want is not None and got != want:
            problems.append(f"the fixed file {path} differs from the campaign's "
                            f"(sha256 {got[:12]}, campaign {want[:12]})")

    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more"]
    return problems
