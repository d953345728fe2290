"""The coordinator's git (coordinator/mainline.py) on a real repository of the synthetic target:
candidates in a scratch worktree, refs, three-way merges and conflicts, patch ports, bundles a
real worker clone can read."""

from pathlib import Path

import pytest
from synthetic import git, make_repo

from agents.base import Hypothesis, ImplementationError, Implementer
from agents.offline import OfflineImplementer
from coordinator.mainline import MainlineError, MainlineRepo, PatchImplementer, track_slug
from core.target import Target
from worker.repo import WorkerRepo

TARGET = Target(name="synthetic", editable=("train.py",), fixed=("prepare.py",))


def hyp(hid, params=None, patch=None, title=None):
    return Hypothesis(hypothesis_id=hid, title=title or f"set {params}", rationale="because",
                      expected_effect="-0.01", risk="low", agent="test", params=params, patch=patch)


@pytest.fixture
def repo(tmp_path):
    path = make_repo(tmp_path / "repo")
    return MainlineRepo(path, "t1")


def build(m, base, hid, params):
    return m.build_candidate(hyp(hid, params), OfflineImplementer(), base, hid, TARGET.is_editable)


def show(m, commit, path="train.py"):
    return m.read(commit, path).decode()


def test_candidate_is_a_commit_on_the_base_under_its_own_ref(repo):
    head = repo.head_commit()
    commit, diff = build(repo, head, "c1", {"WARMDOWN_RATIO": 0.6})
    assert repo.rev(repo.exp_ref("c1")) == commit
    assert git(repo.path, "rev-parse", f"{commit}^") == head
    assert git(repo.path, "diff", "--name-only", head, commit) == "train.py"
    assert "WARMDOWN_RATIO = 0.6" in show(repo, commit) and "+WARMDOWN_RATIO = 0.6" in diff
    message = git(repo.path, "log", "-1", "--format=%B", commit)
    assert message.startswith("set {'WARMDOWN_RATIO': 0.6}") and "hypothesis: c1" in message
    # the user's checkout is untouched; .swarm/ stays out of `git status`
    assert repo.head_commit() == head and git(repo.path, "status", "--porcelain") == ""
    assert "/.swarm/" in (repo.path / ".git" / "info" / "exclude").read_text()


class Writes(Implementer):
    name = "writes"

    def __init__(self, edits):
        self.edits = edits

    def implement(self, h, workspace: Path):
        for path, text in self.edits.items():
            (workspace / path).write_text(text)


class Fails(Implementer):
    name = "fails"

    def implement(self, h, workspace):
        raise RuntimeError("model said no")


@pytest.mark.parametrize("impl, message", [
    (Writes({"prepare.py": "# changed\n"}), "outside the editable set: prepare.py"),
    (Writes({"notes.txt": "new file\n"}), "outside the editable set: notes.txt"),
    (Writes({}), "changed nothing"),
    (Fails(), "the fails implementer failed: RuntimeError: model said no"),
])
def test_bad_implementations_are_refused(repo, impl, message):
    head = repo.head_commit()
    with pytest.raises(ImplementationError, match=message):
        repo.build_candidate(hyp("x", {"A": 1}), impl, head, "x", TARGET.is_editable)
    assert repo.rev(repo.exp_ref("x")) is None
    # the next candidate starts from a clean checkout of its base
    commit, _ = build(repo, head, "ok", {"DEPTH": 3})
    assert git(repo.path, "diff", "--name-only", head, commit) == "train.py"


def test_three_way_merge_into_a_moved_mainline_and_conflicts(repo):
    base = repo.head_commit()
    a, _ = build(repo, base, "a", {"WARMDOWN_RATIO": 0.6})
    b, _ = build(repo, base, "b", {"DEPTH": 3})                # not adjacent to WARMDOWN_RATIO
    c, _ = build(repo, base, "c", {"WARMDOWN_RATIO": 0.7})
    m1, why, conflict = repo.merge(a, base, "a", "warmdown")
    assert why == "" and not conflict and repo.rev(repo.merge_ref("a")) == m1
    assert git(repo.path, "rev-list", "--parents", "-n1", m1).split()[1:] == [base, a]
    m2, why, _ = repo.merge(b, m1, "b", "depth")              # the mainline moved since b was built
    text = show(repo, m2)
    assert why == "" and "WARMDOWN_RATIO = 0.6" in text and "DEPTH = 3" in text
    m3, why, conflict = repo.merge(c, m2, "c", "warmdown again")     # the same line changed both ways
    assert m3 is None and conflict and "train.py" in why
    assert repo.rev(repo.merge_ref("c")) is None
    again, _ = build(repo, m1, "a2", {"DEPTH": 3})          # a change the mainline m2 has already
    m4, why, conflict = repo.merge(again, m2, "a2", "depth again")
    assert m4 is None and not conflict and "already" in why


def test_port_a_win_as_a_patch_onto_another_mainline(repo):
    base = repo.head_commit()
    a, _ = build(repo, base, "a", {"WARMDOWN_RATIO": 0.6})
    other, _ = build(repo, base, "o", {"DEPTH": 3})          # another track's mainline
    patch = repo.diff(base, a)
    commit, _ = repo.build_candidate(hyp("p", patch=patch), PatchImplementer(), other, "p", TARGET.is_editable)
    text = show(repo, commit)
    assert "WARMDOWN_RATIO = 0.6" in text and "DEPTH = 3" in text
    conflicting, _ = build(repo, base, "q", {"WARMDOWN_RATIO": 0.9})
    with pytest.raises(ImplementationError, match="does not apply"):
        repo.build_candidate(hyp("p2", patch=patch), PatchImplementer(), conflicting, "p2", TARGET.is_editable)


def test_bundles_load_into_a_worker_clone(repo, tmp_path):
    initial = repo.head_commit()
    a, _ = build(repo, initial, "a", {"WARMDOWN_RATIO": 0.6})
    m, _, _ = repo.merge(a, initial, "a", "warmdown")
    clone = WorkerRepo(tmp_path / "clone", "swarm/t1/w1")
    assert clone.load(repo.load_bundle(initial)) == initial
    assert repo.bundle(initial, initial) is None               # the worker has it already
    clone.import_bundle(repo.bundle(m, initial))
    assert clone.has_commit(m) and clone.has_commit(a)         # the merge brings its candidate
    assert repo.bundle(m, initial) is repo.bundle(m, initial)  # cached: seeds share one bundle


def test_branches_and_fixed_hashes(repo):
    head = repo.head_commit()
    track = "cpu-x/synthetic/1s/090f0c6cc722"
    assert repo.branch(track) == f"swarm/t1/{track_slug(track)}/mainline"
    assert "/" not in track_slug(track) and repo.branch_commit(track) is None
    repo.set_branch(track, head)
    assert repo.branch_commit(track) == head
    import hashlib
    want = hashlib.sha256((repo.path / "prepare.py").read_bytes()).hexdigest()
    assert repo.fixed_hashes(head, ["prepare.py", "missing.py"]) == {"prepare.py": want}
    assert set(repo.files(head, TARGET.is_editable)) == {"train.py"}


def test_unusable_repositories_say_what_to_do(tmp_path):
    with pytest.raises(MainlineError, match="not a git repository"):
        MainlineRepo(tmp_path, "t1")
    git(tmp_path, "init", "-q")
    with pytest.raises(MainlineError, match="no commit yet"):
        MainlineRepo(tmp_path, "t1").head_commit()
