"""The synthetic research target (train.py / prepare.py / target.toml here) as a git repository.

    repo = make_repo(tmp_path / "repo")     # a fresh repo with one commit of the synthetic target
    truth(text_of_train_py)                 # the expected val_bpb of a version of train.py (no noise)
"""

import importlib.util
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ("train.py", "prepare.py", "target.toml")
GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo, *args) -> str:
    import os
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def make_repo(path, files=FILES, source=HERE) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(Path(source) / name, path / name)
    git(path, "init", "-q", "-b", "master")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "start")
    return path


def _module():
    spec = importlib.util.spec_from_file_location("synthetic_train", HERE / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def truth(train_py_text: str, seed: int = 10**6) -> float:
    """Expected val_bpb of a train.py version on a fresh seed (no lucky effect, no noise)."""
    from agents.constant_rewriter import constant_values
    c = constant_values(train_py_text)
    return _module().true_bpb(c["MATRIX_LR"], c["WARMDOWN_RATIO"], c["SCALAR_LR"], c["DEPTH"], seed=seed)
