"""Your own autoresearch fork, unchanged: swarm init, the launcher, the budget, the default fingerprint.

The forks are written by the tests in upstream shape (tests/forks.py: a tiny MLX fork whose
train.py takes no flag, imports TIME_BUDGET from prepare.py and seeds with `mx.random.seed(42)`).
The end-to-end test runs the real CLI (`swarm init`, `swarm run`: real Ray, embedded journal,
offline agent, bubblewrap sandbox) and checks that no file of the fork changed.

PyTorch forks: PyPI's torch for Linux x86_64 is a 539 MB wheel plus several GB of CUDA
libraries (nvidia-*), and the CPU-only index is not reachable from CI; the torch seeding path
of the launcher is run here against a test-written `torch` package with torch's attribute
layout (torch.manual_seed, torch.random.manual_seed, torch.cuda.manual_seed[_all]).
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from forks import prepare_fork, write_mlx_fork
from synthetic import git

from coordinator.budget import BudgetError, require_budget, track_of
from journal import open_journal
from worker.fork import budget, constants, fingerprint, inspect
from worker.launch import offset_seeding
from core.target import Target

REPO_ROOT = Path(__file__).resolve().parent.parent
# The public MLX port's prepare.py constants, as it writes them.
UPSTREAM_CONSTANTS = '''
import os
MAX_SEQ_LEN = 2048
TIME_BUDGET = 300
EVAL_TOKENS = 3 * 524288
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
DATA_DIR = os.path.join(CACHE_DIR, "data")
TOKENIZER_DIR = os.path.join(CACHE_DIR, "tokenizer")
MAX_SHARD = 6542
VAL_SHARD = MAX_SHARD
VAL_FILENAME = f"shard_{VAL_SHARD:05d}.parquet"
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
'''


def swarm(args, env, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "swarm.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def fork_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTORESEARCH_", "SWARM_", "RAY_ADDRESS"))}
    env.update(HOME=str(home), RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    env.pop("ANTHROPIC_API_KEY", None)
    return env


def hashes(root: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir()) if p.is_file()}


# ---- reading a fork ---------------------------------------------------------------------------

def test_constants_of_upstream_prepare_are_read_without_running_it(tmp_path):
    c = constants(UPSTREAM_CONSTANTS, home="/h")
    assert c["TIME_BUDGET"] == 300 and c["EVAL_TOKENS"] == 3 * 524288
    assert c["CACHE_DIR"] == "/h/.cache/autoresearch" and c["DATA_DIR"] == "/h/.cache/autoresearch/data"
    assert c["VAL_FILENAME"] == "shard_06542.parquet"
    assert "SPECIAL_TOKENS" not in c                      # a comprehension is not a plain expression
    assert budget(UPSTREAM_CONSTANTS) == 300.0
    assert budget("TIME_BUDGET = 5 * 60\n") == 300.0
    assert budget("import os\nTIME_BUDGET = int(os.environ.get('B', 90))\n") == 90.0
    assert budget("TIME_BUDGET = compute()\n") is None and budget("MAX_SEQ_LEN = 8\n") is None
    assert budget("TIME_BUDGET = 0\n") is None


def test_inspect_finds_framework_seeding_cache_and_fixed_files(tmp_path):
    fork = write_mlx_fork(tmp_path / "fork")
    layout = inspect(fork, home=str(tmp_path / "home"))
    assert layout.framework == "mlx" and layout.editable == ["train.py"] and layout.fixed == ["prepare.py"]
    assert layout.constants_module == "prepare" and layout.budget == 300
    assert layout.seeds == ["mx.random.seed"]
    assert layout.cache_dir == str(tmp_path / "home" / ".cache" / "autoresearch")
    assert layout.val_file.endswith("/data/shard_00003.txt") and layout.eval_tokens_constant


def test_default_fingerprint_hashes_tokenizer_and_validation_shard(tmp_path):
    fork = write_mlx_fork(tmp_path / "fork")
    home = tmp_path / "home"
    with pytest.raises(ValueError, match="uv run prepare.py"):
        fingerprint(fork, home=str(home))                # not prepared: says the fork's own command
    prepare_fork(fork, fork_env(home))
    first = fingerprint(fork, home=str(home))
    data = home / ".cache" / "autoresearch" / "data"
    (data / "shard_00000.txt").write_text("a changed training shard")
    assert fingerprint(fork, home=str(home))["fingerprint"] == first["fingerprint"]   # train shards: no
    (data / "shard_00003.txt").write_text("another validation shard")
    assert fingerprint(fork, home=str(home))["fingerprint"] != first["fingerprint"]   # val shard: yes
    second = fingerprint(fork, home=str(home))["fingerprint"]
    (home / ".cache" / "autoresearch" / "tokenizer" / "vocab.json").write_text('{"vocab_size": 256} ')
    assert fingerprint(fork, home=str(home))["fingerprint"] != second                  # tokenizer: yes


# ---- the budget -------------------------------------------------------------------------------

def test_budget_is_known_before_start_or_refused_with_the_key():
    fork = Target.from_toml('editable = ["train.py"]\n')         # self-reported: no evaluator
    assert fork.self_reported
    assert require_budget(None, fork, b"TIME_BUDGET = 300\n") == 300.0
    assert require_budget(30, fork, None) == 30.0
    assert require_budget(None, Target.from_toml('time_budget = 45\n'), None) == 45.0
    assert require_budget(None, Target(), None) is None           # ours: prepare.py --fingerprint says
    for source in (None, b"MAX_SEQ_LEN = 8\n"):
        with pytest.raises(BudgetError, match=r"time_budget = 300.*--time-budget"):
            require_budget(None, fork, source)


def test_track_of_a_worker_always_names_a_budget():
    info = {"hardware_class": "cpu-x", "profile": None, "target": "fork", "data_fingerprint": "f" * 64,
            "time_budget": None, "track": None}
    assert track_of(info, 30) == "cpu-x/fork/30s/ffffffffffff"
    assert track_of(info, None) is None                           # the coordinator retires it, no crash
    assert track_of({**info, "track": "cpu-x/tiny/60s/ffffffffffff"}, 2.5) == "cpu-x/tiny/2.5s/ffffffffffff"


# ---- the launcher -----------------------------------------------------------------------------

def test_offset_seeding_keeps_other_arguments_and_wraps_once():
    got = []
    f = offset_seeding(lambda seed=None, *rest, **kw: got.append((seed, rest, kw)), 5)
    f(42), f(seed=7), f(None), f(3, "x", k=1)
    assert got == [(47, (), {}), (12, (), {}), (None, (), {}), (8, ("x",), {"k": 1})]
    assert offset_seeding(f, 5) is f                              # an alias wrapped again: still +5
    wrap = offset_seeding(lambda seed: got.append(seed), 10, modulo=2 ** 32)
    wrap(2 ** 32 - 3)
    assert got[-1] == 7                                           # numpy's range: wraps, never fails


def launch(fork: Path, seed: int, budget_s: float, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.launch", "--seed", str(seed), "--budget", str(budget_s),
                           "train.py"], cwd=fork, env=env, capture_output=True, text=True, timeout=120)


def test_launcher_offsets_numpy_random_and_torch_seeding(tmp_path):
    fork = tmp_path / "fork"
    fork.mkdir()
    (fork / "prepare.py").write_text("TIME_BUDGET = 300\n")
    # a test-written `torch` with torch's layout (see the module docstring: no torch wheel in CI)
    torch = fork / "torch"
    (torch / "cuda").mkdir(parents=True)
    (torch / "__init__.py").write_text("from . import cuda, random\nfrom .random import manual_seed\nSEEN = []\n")
    (torch / "random.py").write_text("def manual_seed(seed):\n    import torch\n    torch.SEEN.append(('cpu', seed))\n")
    (torch / "cuda" / "__init__.py").write_text(
        "def manual_seed(seed):\n    import torch\n    torch.SEEN.append(('cuda', seed))\n"
        "def manual_seed_all(seed):\n    import torch\n    torch.SEEN.append(('all', seed))\n")
    (fork / "train.py").write_text(textwrap.dedent('''
        import json, random
        import numpy as np
        import torch
        from prepare import TIME_BUDGET
        torch.manual_seed(42)
        torch.cuda.manual_seed(42)
        torch.cuda.manual_seed_all(42)
        np.random.seed(42)
        random.seed(a=42)
        print(json.dumps({"budget": TIME_BUDGET, "torch": torch.SEEN, "np": float(np.random.rand()),
                          "random": random.random()}))
    '''))
    env = fork_env(tmp_path)
    before = hashes(fork)
    runs = {}
    for seed in (0, 3):
        r = launch(fork, seed, 2.5, env)
        assert r.returncode == 0, r.stderr
        runs[seed] = json.loads(r.stdout.strip().splitlines()[-1])
        assert f"seeding call(s) offset by +{seed}" in r.stderr
    import random

    import numpy as np
    for seed, got in runs.items():
        assert got["budget"] == 2.5
        assert got["torch"] == [["cpu", 42 + seed], ["cuda", 42 + seed], ["all", 42 + seed]]
        np.random.seed(42 + seed)
        random.seed(42 + seed)
        assert got["np"] == float(np.random.rand()) and got["random"] == random.random()
    assert hashes(fork) == before


def test_launcher_trains_the_mlx_fork_with_the_trials_seed_and_budget(tmp_path):
    fork = write_mlx_fork(tmp_path / "fork")
    env = fork_env(tmp_path / "home")
    prepare_fork(fork, env)
    before = hashes(fork)
    first_loss = {}
    for seed in (0, 0, 1):
        r = launch(fork, seed, 1, env)
        assert r.returncode == 0, r.stderr
        summary = dict(line.split(":", 1) for line in r.stdout.split("---")[-1].strip().splitlines())
        assert 1.0 <= float(summary["training_seconds"]) < 30          # 1 s, not prepare.py's 300
        first_loss.setdefault(seed, set()).add(r.stdout.split("loss:")[1].split()[0])
    # the fork's own run (`python train.py`: seed 42, its 300 s budget), stopped after its first step
    own = subprocess.Popen([sys.executable, "train.py"], cwd=fork, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = own.stdout.readline()
    finally:
        own.kill()
        own.wait()
    assert first_loss[0] == {line.split("loss:")[1].split()[0]}       # seed 0 is the fork's own run
    assert first_loss[0] != first_loss[1]                                 # another seed: another initialisation
    assert hashes(fork) == before


# ---- swarm init -------------------------------------------------------------------------------

def test_swarm_init_writes_once_and_never_clobbers_an_edit(tmp_path):
    fork = write_mlx_fork(tmp_path / "fork")
    env = fork_env(tmp_path / "home")
    r = swarm(["init", "--repo", str(fork)], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "framework: mlx" in r.stdout and "mx.random.seed" in r.stdout and "NOT prepared yet" in r.stdout
    assert "commit it" in r.stdout                                   # a campaign starts from the last commit
    text = (fork / "target.toml").read_text()
    t = Target.from_toml(text)
    assert t.self_reported and not t.smoke and t.fixed == ("prepare.py",) and t.data == ("~/.cache/autoresearch",)
    assert "worker.launch" in t.run and t.time_budget is None         # the budget stays prepare.py's
    git(fork, "add", "target.toml")
    git(fork, "commit", "-q", "-m", "swarm target")
    r = swarm(["init", "--repo", str(fork)], env, tmp_path)
    assert r.returncode == 0 and "already up to date" in r.stdout and "commit it" not in r.stdout
    edited = text.replace('direction = "minimize"', 'direction = "minimize"\ntime_budget = 60')
    (fork / "target.toml").write_text(edited)
    r = swarm(["init", "--repo", str(fork)], env, tmp_path)
    assert r.returncode == 1 and "left as it is" in r.stdout and "-time_budget = 60" in r.stdout
    assert (fork / "target.toml").read_text() == edited
    r = swarm(["init", "--repo", str(fork), "--force"], env, tmp_path)
    assert r.returncode == 0 and (fork / "target.toml").read_text() == text
    r = swarm(["init", "--repo", str(tmp_path)], env, tmp_path)
    assert r.returncode == 2 and "no train.py" in r.stderr


def test_doctor_gives_the_forks_own_commands(tmp_path):
    fork = write_mlx_fork(tmp_path / "fork")
    env = fork_env(tmp_path / "home")
    assert swarm(["init", "--repo", str(fork)], env, tmp_path).returncode == 0
    r = swarm(["doctor", "--repo", str(fork), "--node"], env, tmp_path)
    assert r.returncode == 1
    assert f"cd {fork} && uv run prepare.py" in r.stdout and "~/.cache/autoresearch" in r.stdout
    assert "AUTORESEARCH_PROFILE" not in r.stdout


# ---- the whole path -----------------------------------------------------------------------------

def test_fork_without_a_budget_is_refused_before_ray_starts(tmp_path):
    fork = write_mlx_fork(tmp_path / "fork", budget_line="TIME_BUDGET = budget_from_somewhere()")
    env = fork_env(tmp_path / "home")
    r = swarm(["init", "--repo", str(fork)], env, tmp_path)
    assert r.returncode == 0 and "set time_budget in target.toml" in r.stdout
    text = (fork / "target.toml").read_text()
    assert "\ntime_budget = 300" in text                 # init writes the key, to be set by the user
    (fork / "target.toml").write_text(text.replace("\ntime_budget = 300", "\n# time_budget = 300"))
    git(fork, "add", "-A")
    git(fork, "commit", "-q", "-m", "target")
    db = tmp_path / "journal.db"
    r = swarm(["run", "--repo", str(fork), "--journal", str(db), "--workdir", str(tmp_path / "wd"),
               "--agent", "offline", "--campaign", "nobudget", "--max-trials", "1"], env, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no time budget for target 'fork'" in r.stderr and "time_budget = 300" in r.stderr
    assert "--time-budget" in r.stderr
    assert "Ray" not in r.stdout + r.stderr                  # refused before Ray started
    with open_journal(str(db), campaign="nobudget") as j:
        assert not [ev for _, ev in j.read() if ev.type == "campaign_started"]


def test_swarm_init_then_run_trains_the_fork_unchanged(tmp_path):
    fork = write_mlx_fork(tmp_path / "fork")
    home = tmp_path / "home"
    env = fork_env(home)
    prepare_fork(fork, env)
    cache = home / ".cache" / "autoresearch"
    cache_before = {str(p): p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    original = hashes(fork)
    r = swarm(["init", "--repo", str(fork)], env, tmp_path)
    assert r.returncode == 0, r.stderr
    git(fork, "add", "target.toml")
    git(fork, "commit", "-q", "-m", "swarm target")
    db = tmp_path / "journal.db"
    r = swarm(["run", "--repo", str(fork), "--journal", str(db), "--workdir", str(tmp_path / "wd"),
               "--campaign", "fork", "--agent", "offline", "--time-budget", "2", "--baseline-trials", "2",
               "--max-trials", "4", "--sandbox", "bwrap"], env, tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "no smoke runs: target.toml says smoke = false" in r.stdout + r.stderr

    with open_journal(str(db), campaign="fork") as j:
        events = [ev for _, ev in j.read()]
    finished = [ev.data for ev in events if ev.type == "trial_finished"]
    assert len(finished) == 4 and all(d["status"] == "ok" for d in finished), finished
    base = [d for d in finished if d["kind"] == "baseline"]
    assert sorted(d["seed"] for d in base) == [0, 1]
    assert base[0]["val_bpb"] != base[1]["val_bpb"]                  # two seeds, two values
    assert [d for d in finished if d["kind"] == "candidate"]
    for d in finished:
        assert d["sandbox"] == "bwrap" and d["metric_source"] == "self-reported"
        assert d["track"].split("/")[1:3] == ["fork", "2s"]
        assert 2.0 <= d["metrics"]["training_seconds"] < 30            # the trial's 2 s, not prepare.py's 300
        log = Path(d["log_path"]).read_text()
        assert "launch: prepare.TIME_BUDGET = 2" in log and f"offset by +{d['seed']}" in log
    # a candidate's first trial is where its smoke run would be: skipped (a further seed asks for none)
    logs = {}
    for d in finished:
        if d["kind"] == "candidate":
            logs.setdefault(d["candidate_id"], []).append(Path(d["log_path"]).read_text())
    assert logs and all(any("# smoke run skipped" in log for log in its) for its in logs.values())
    candidates = [ev.data for ev in events if ev.type == "candidate_created"]
    assert candidates and all(c.get("track") == finished[0]["track"] for c in candidates)

    assert {k: v for k, v in hashes(fork).items() if k != "target.toml"} == original   # the fork unchanged
    assert {str(p): p.read_bytes() for p in cache.rglob("*") if p.is_file()} == cache_before


def test_a_machine_with_an_nvidia_gpu_is_a_class_of_its_own(tmp_path, monkeypatch):
    """A CUDA fork trains on the GPU, which MLX's CPU build does not see: the class names it, so a
    CUDA fork's results never share a track with another GPU's (nvidia-smi answered by a script)."""
    from worker.hardware import detect
    plain, _ = detect()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 143771'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cls, details = detect()
    if details["mlx_backend"] == "cpu":
        assert cls == f"{plain}-cuda-h200-140gb" and details["gpu"] == "NVIDIA H200"


def test_the_forks_data_cache_is_read_only_in_the_sandbox(tmp_path):
    """target.toml's `data` is bound read-only: a trial reads the cache and cannot change it."""
    from worker import trial
    from worker.sandbox import resolve_mode, wrap
    cache = tmp_path / "home" / ".cache" / "autoresearch"
    cache.mkdir(parents=True)
    (cache / "shard.txt").write_text("data")
    repo, scratch = tmp_path / "repo", tmp_path / "scratch"
    repo.mkdir(), scratch.mkdir()
    target = Target.from_toml(f'data = ["{cache}"]\ntime_budget = 1\n')
    setup = trial.Setup(target, sys.executable, repo, {}, resolve_mode("bwrap"))
    policy = trial._policy(setup, hidden=(), writable=(scratch,))
    code = (f"print(open({str(cache / 'shard.txt')!r}).read())\n"
            f"open({str(cache / 'shard.txt')!r}, 'a').write('x')\n")
    argv, env = wrap([sys.executable, "-c", code], policy, "bwrap", {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home")})
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "data" and r.returncode != 0 and "Read-only file system" in r.stderr
    assert (cache / "shard.txt").read_text() == "data"


def test_a_worker_takes_the_forks_budget_from_prepare_py(tmp_path, monkeypatch):
    """The default fingerprint prints no budget: the worker's track names prepare.py's TIME_BUDGET,
    and target.toml's time_budget wins over it."""
    from worker import Worker, make_full_bundle
    home = tmp_path / "home"
    fork = write_mlx_fork(tmp_path / "fork", budget_line="TIME_BUDGET = 4 * 60")
    prepare_fork(fork, fork_env(home))
    monkeypatch.setenv("HOME", str(home))
    assert swarm(["init", "--repo", str(fork)], fork_env(home), tmp_path).returncode == 0
    git(fork, "add", "target.toml")
    git(fork, "commit", "-q", "-m", "swarm target")
    w = Worker("w1", tmp_path / "w1", campaign="fork", heartbeat_s=0, sandbox="off")
    try:
        w.load_repo(make_full_bundle(fork))
        info = w.info()
        assert info["problem"] is None and info["time_budget"] == 240
        assert info["track"] == f"{w.hardware_class}/fork/240s/{fingerprint(fork, str(home))['fingerprint'][:12]}"
        text = (fork / "target.toml").read_text().replace("# time_budget = 240", "time_budget = 90")
        (fork / "target.toml").write_text(text)
        git(fork, "commit", "-q", "-am", "90 s")
        w.load_repo(make_full_bundle(fork))
        assert w.info()["time_budget"] == 90 and "/90s/" in w.info()["track"]
    finally:
        w.stop()


def test_init_reads_a_pytorch_fork_without_torch(tmp_path):
    """karpathy's original shape: prepare.py imports torch at the top, train.py seeds CPU and CUDA.
    Nothing is imported, so `swarm init` reads it on a machine without torch."""
    from swarm.init import assumptions, render
    fork = tmp_path / "autoresearch"
    fork.mkdir()
    (fork / "prepare.py").write_text("import torch\nimport rustbpe\n" + UPSTREAM_CONSTANTS)
    (fork / "train.py").write_text(textwrap.dedent('''
        import torch
        from kernels import get_kernel
        from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb
        torch.manual_seed(42)
        torch.cuda.manual_seed(42)
    '''))
    layout = inspect(fork, home="/h")
    assert layout.framework == "pytorch" and layout.seeds == ["torch.cuda.manual_seed", "torch.manual_seed"]
    assert layout.budget == 300 and layout.cache_dir == "/h/.cache/autoresearch"
    assert layout.val_file == "/h/.cache/autoresearch/data/shard_06542.parquet"
    t = Target.from_toml(render(layout))
    assert t.fixed == ("prepare.py",) and "--constants prepare" in t.run and t.data == ("/h/.cache/autoresearch",)
    assert any("NVIDIA GPU" in line for line in assumptions(layout))
