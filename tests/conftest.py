"""
Shared test fixtures.

- blas_env(): {"LD_PRELOAD": <OpenBLAS>} when the library exists (else {}): MLX's CPU matmuls
  go from ~6 to ~195 GFLOP/s with it. Add it to the env of every MLX *training* subprocess.
- tiny_data (session): a synthetic corpus (tests/datagen.py) prepared once per run with
  `prepare.py --profile tiny --source ...` into a tmp AUTORESEARCH_CACHE (shared by pytest-xdist's
  workers under a file lock; tests only read it).
  .env = {AUTORESEARCH_CACHE, AUTORESEARCH_PROFILE="tiny", + blas_env()} to merge into a
  subprocess env; .cache_dir = the profile's cache dir; .cache_root; .corpus_dir.
- prepare_module(tiny_data): the prepare module imported in-process with that environment.
- The longest files are collected first (LONGEST_FIRST), so pytest-xdist starts them first.
"""

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CORPUS_DOCS = 12000  # ~6 MB of text: val/test hold ~600 documents each (> tiny EVAL_TOKENS)
# The files that take longest (measured: summed test time, parallel run on a loaded machine), in
# that order, run first: pytest-xdist (`--dist loadfile --no-loadscope-reorder`) hands files to its
# workers in collection order, and the suite ends when its last long file does. Others follow.
LONGEST_FIRST = ("test_train.py", "test_deploy.py", "test_attacks.py", "test_coordinator_campaign.py",
                 "test_prepare.py", "test_agents_actor.py", "test_forks.py", "test_coordinator_e2e.py",
                 "test_coordinator_overnight.py", "test_agents_ahead.py", "test_journal.py",
                 "test_coordinator_cluster.py", "test_worker_real.py", "test_secrets.py")

sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Ray 2.60 under `uv run` re-launches its workers through `uv run` in a fresh, empty
# environment unless told not to; tests (and the swarm) run workers in this venv.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# The default agent is "auto": a developer's real key must never make a test call the API.
# The Anthropic tests set their own key and point the SDK at a local stand-in.
os.environ.pop("ANTHROPIC_API_KEY", None)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: a file's own order stays


def blas_env():
    """LD_PRELOAD of OpenBLAS for MLX training subprocesses; empty when the library is missing."""
    from worker.runner import openblas_path

    path = openblas_path()
    return {"LD_PRELOAD": path} if path else {}


@dataclass
class TinyData:
    cache_root: Path
    cache_dir: Path
    corpus_dir: Path
    env: dict = field(default_factory=dict)
    prepare_output: str = ""


def run_prepare(args, env_extra, timeout=300):
    """Run prepare.py as a subprocess from the repo root; returns CompletedProcess (text)."""
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "prepare.py", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Prepared once per run. Under pytest-xdist every worker process runs session fixtures, so
    the first to take the lock prepares into the run's shared temp dir and the others wait and
    read it (trials only read the cache; prepare.py writes each file with os.replace)."""
    from datagen import write_corpus
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):       # .../pytest-N/popen-gwK: share pytest-N
        shared = shared.parent
    base = shared / "tiny_data"
    cache_root = base / "cache"
    env = {"AUTORESEARCH_CACHE": str(cache_root), "AUTORESEARCH_PROFILE": "tiny", **blas_env()}
    done = base / "prepare.out"     # written last: the cache is complete
    with FileLock(str(shared / "tiny_data.lock")):
        if not done.exists():
            corpus = write_corpus(base / "corpus", n_docs=TINY_CORPUS_DOCS, seed=0)
            r = run_prepare(["--profile", "tiny", "--source", str(corpus)],
                            {k: v for k, v in env.items() if k != "LD_PRELOAD"})
            if r.returncode != 0:
                pytest.fail(f"prepare.py failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
            done.write_text(r.stdout)
    return TinyData(cache_root=cache_root, cache_dir=cache_root / "tiny", corpus_dir=base / "corpus",
                    env=env, prepare_output=done.read_text())


@pytest.fixture(scope="session")
def prepare_module(tiny_data):
    """prepare imported in this process against tiny_data's cache. prepare reads its environment
    at import, so it is (re)loaded with the tiny env set, and os.environ is restored afterwards.
    Note: this reloads the shared `prepare` module object in sys.modules."""
    saved = {k: os.environ.get(k) for k in ("AUTORESEARCH_CACHE", "AUTORESEARCH_PROFILE", "AUTORESEARCH_EVAL_TOKENS")}
    os.environ["AUTORESEARCH_CACHE"] = str(tiny_data.cache_root)
    os.environ["AUTORESEARCH_PROFILE"] = "tiny"
    os.environ.pop("AUTORESEARCH_EVAL_TOKENS", None)
    try:
        import prepare
        prepare = importlib.reload(prepare)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert prepare.PROFILE == "tiny" and prepare.CACHE_DIR == str(tiny_data.cache_dir)
    return prepare
