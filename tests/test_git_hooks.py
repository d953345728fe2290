"""No git call of the swarm runs a program a repository names (safety/gitsafe.py).

Traps are planted as a hostile trial would plant them: hooks in .git/hooks, a
core.hooksPath to a folder of hooks, core.fsmonitor, a filter and a merge driver
in .git/config named by .git/info/attributes and by a committed .gitattributes.
Each trap writes a marker file. The real WorkerRepo (load, import_bundle,
checkout, apply_patch) and the real MainlineRepo (scratch worktree, candidate
commit, merges, patch ports, bundles) run over them: no marker appears. Plain
git on the same planted repository does write markers, so the traps are live.
"""

import os
import stat
import subprocess
from pathlib import Path

import pytest
from synthetic import git as sgit
from synthetic import make_repo
from test_coordinator_mainline import TARGET, build, hyp
from test_worker import GOOD_TRAIN, commit_files, standin_repo

from agents.actor import _files_workspace
from coordinator.mainline import MainlineRepo, PatchImplementer
from worker import make_bundle, make_full_bundle
from worker.repo import CandidateError, WorkerRepo

HOOKS = ("post-checkout", "post-merge", "post-rewrite", "pre-commit", "post-commit", "commit-msg",
         "reference-transaction", "applypatch-msg", "pre-applypatch", "post-applypatch", "pre-auto-gc",
         "post-index-change", "fsmonitor-watchman")
ATTRIBUTES = "* filter=evil merge=evil\n"


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def plant(gitdir: Path, traps: Path, markers: Path):
    """Every trap a trial could leave in a clone's .git, each writing markers/<name> when run."""
    traps.mkdir(exist_ok=True)
    markers.mkdir(exist_ok=True)
    (gitdir / "hooks").mkdir(exist_ok=True)
    (traps / "hooks").mkdir(exist_ok=True)
    for name in HOOKS:
        script(gitdir / "hooks" / name, f'touch "{markers}/hook-{name}"\n')
        script(traps / "hooks" / name, f'touch "{markers}/hookspath-{name}"\n')
    settings = {
        "core.hooksPath": str(traps / "hooks"),
        "core.fsmonitor": script(traps / "fsmonitor", f'touch "{markers}/fsmonitor"\nexit 1\n'),
        "filter.evil.smudge": script(traps / "smudge", f'touch "{markers}/smudge"\ncat\n'),
        "filter.evil.clean": script(traps / "clean", f'touch "{markers}/clean"\ncat\n'),
        "filter.evil.required": "true",
        "merge.evil.driver": script(traps / "merge", f'touch "{markers}/merge"\nexit 1\n') + " %O %A %B",
    }
    for key, value in settings.items():
        subprocess.run(["git", "config", "--file", str(gitdir / "config"), key, value], check=True)
    (gitdir / "info").mkdir(exist_ok=True)
    (gitdir / "info" / "attributes").write_text(ATTRIBUTES)


def fired(markers: Path) -> set:
    return {p.name for p in markers.iterdir()} if markers.exists() else set()


def plain_git(cwd, *args):
    """git as it was called before: no safe options (the control that proves the traps are live)."""
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)


def test_worker_clone_runs_no_planted_hook_filter_or_fsmonitor(tmp_path):
    src, base = standin_repo(tmp_path / "src")
    clone = WorkerRepo(tmp_path / "clone", "swarm/hooks/w1")
    clone.load(make_full_bundle(src))
    gitdir, traps, markers = clone.path / ".git", tmp_path / "traps", tmp_path / "markers"

    # a candidate that names the evil drivers in a committed .gitattributes, as a bundle and as a patch
    plain_git(src, "checkout", "-q", "--detach", base)
    cand = commit_files(src, {"train.py": GOOD_TRAIN + "# candidate\n", ".gitattributes": ATTRIBUTES})
    plain_git(src, "checkout", "-q", "-")
    patch = subprocess.run(["git", "format-patch", "--stdout", f"{base}..{cand}"], cwd=src,
                           capture_output=True, check=True).stdout

    steps = [("import_bundle", lambda: clone.import_bundle(make_bundle(src, cand, base))),
             ("checkout", lambda: clone.checkout(cand)),
             ("checkout back", lambda: clone.checkout(base)),
             ("apply_patch", lambda: clone.apply_patch(patch, base)),
             ("checkout after patch", lambda: clone.checkout(cand)),
             ("load (update)", lambda: clone.load(make_full_bundle(src)))]
    for what, step in steps:
        plant(gitdir, traps, markers)
        step()
        assert fired(markers) == set(), f"{what} ran planted programs"
        # the clone is clean again: no hook, no setting that names a program
        assert list((gitdir / "hooks").iterdir()) == []
        config = (gitdir / "config").read_text()
        assert "hooksPath" not in config and "fsmonitor" not in config and "evil" not in config
        assert not (gitdir / "info" / "attributes").exists()
    assert clone.resolve("HEAD") == base and (clone.path / "train.py").read_text() == GOOD_TRAIN

    # control: plain git over the same traps runs them (the hooks folder of core.hooksPath,
    # the smudge filter, the fsmonitor), and without core.hooksPath the hooks in .git/hooks
    plant(gitdir, traps, markers)
    plain_git(clone.path, "checkout", "-q", "--force", "--detach", cand)
    plain_git(clone.path, "status", "--porcelain")
    assert {"hookspath-post-checkout", "hookspath-reference-transaction", "smudge", "fsmonitor"} <= fired(markers)
    subprocess.run(["git", "config", "--file", str(gitdir / "config"), "--unset", "core.hooksPath"], check=True)
    plain_git(clone.path, "checkout", "-q", "--force", "--detach", base)
    assert "hook-post-checkout" in fired(markers)


def test_worker_clone_with_gitdir_replaced_is_refused_then_rebuilt(tmp_path):
    src, base = standin_repo(tmp_path / "src")
    clone = WorkerRepo(tmp_path / "clone", "swarm/hooks/w1")
    clone.load(make_full_bundle(src))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plain_git(elsewhere, "init", "-q")
    import shutil
    shutil.rmtree(clone.path / ".git")
    (clone.path / ".git").write_text(f"gitdir: {elsewhere / '.git'}\n")   # a trial points git elsewhere
    with pytest.raises(CandidateError, match=r"tampered with: .*\.git is not a plain folder"):
        clone.checkout(base)
    assert clone.load(make_full_bundle(src)) == base      # a reload rebuilds the clone from the bundle
    assert (clone.path / ".git").is_dir() and (clone.path / "train.py").read_text() == GOOD_TRAIN
    assert plain_git(elsewhere, "rev-parse", "--verify", "-q", "HEAD").stdout == ""   # untouched


def test_coordinator_mainline_runs_no_hook_filter_or_merge_driver(tmp_path):
    path = make_repo(tmp_path / "repo")
    (path / ".gitattributes").write_text("*.py filter=evil merge=evil\n")
    sgit(path, "add", "-A")
    sgit(path, "commit", "-q", "-m", "attributes")
    traps, markers = tmp_path / "traps", tmp_path / "markers"
    plant(path / ".git", traps, markers)

    m = MainlineRepo(path, "hk")
    head = m.head_commit()
    m.pin_initial(head)
    c1, diff1 = build(m, head, "c1", {"WARMDOWN_RATIO": 0.6})       # worktree add, add -A, commit-tree
    c2, _ = build(m, head, "c2", {"WARMDOWN_RATIO": 0.7})
    merged, why, conflict = m.merge(c1, head, "c1", "first")
    assert merged and not conflict, why
    # the same line changed on both sides: a content merge, where a merge driver would run
    none, why, conflict = m.merge(c2, merged, "c2", "second")
    assert none is None and conflict, why
    ported, _ = m.build_candidate(hyp("p1", patch=diff1, title="port"), PatchImplementer(), head, "p1",
                                  TARGET.is_editable)                   # git apply --3way
    assert m.read(ported, "train.py") == m.read(c1, "train.py")
    m.set_branch("track/a", merged)
    assert m.load_bundle(head) and m.bundle(c1, head)                  # update-ref in make_bundle
    assert fired(markers) == set()

    # control: plain git in the same repository runs the planted programs
    plain_git(path, "update-ref", "refs/control", head)
    plain_git(path, "status", "--porcelain")
    assert {"hookspath-reference-transaction", "fsmonitor"} <= fired(markers)


def test_agent_scratch_repository_runs_no_template_hook(tmp_path, monkeypatch):
    """The agent actor's scratch repository (git init, add, commit) under an init template whose
    hooks would run on commit; the agent command's git gets hooks off through its environment."""
    template, markers = tmp_path / "template", tmp_path / "markers"
    (template / "hooks").mkdir(parents=True)
    markers.mkdir()
    for name in ("pre-commit", "post-commit", "commit-msg", "reference-transaction"):
        script(template / "hooks" / name, f'touch "{markers}/{name}"\n')
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(template))
    root = tmp_path / "ws"
    root.mkdir()
    _files_workspace(root, {"train.py": "X = 1\n"})
    assert fired(markers) == set()
    assert (root / ".git" / "hooks" / "post-commit").exists()       # the template was copied: a live trap

    from agents.command_agent import command_env
    env = {**os.environ, **command_env({})}
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
                    "-m", "agent"], cwd=root, env=env, check=True, stdin=subprocess.DEVNULL)
    assert fired(markers) == set()
    plain_git(root, "commit", "-q", "--allow-empty", "-m", "control")
    assert "post-commit" in fired(markers)
