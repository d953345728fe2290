"""What the fork launcher (worker/launch.py) adds to a trial's start-up.

A fork whose train.py only imports its prepare.py (MLX and numpy, like the public MLX port) is
started RUNS times as `python train.py` and as `python -m worker.launch --seed 1 --budget 60
train.py`, interleaved; the medians and their difference are printed.

    uv run python bench/launcher.py [--runs 15]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/statistics.py must not shadow the stdlib module
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]
import statistics  # noqa: E402

# Runs of each command (interleaved, so load changes hit both alike).
RUNS = 15
PREPARE = "import mlx.core as mx\nimport numpy as np\nTIME_BUDGET = 300\n"
TRAIN = "import mlx.core as mx\nfrom prepare import TIME_BUDGET\nmx.random.seed(42)\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=RUNS)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        fork = Path(d)
        (fork / "prepare.py").write_text(PREPARE)
        (fork / "train.py").write_text(TRAIN)
        cmds = {"python train.py": [sys.executable, "train.py"],
                "python -m worker.launch": [sys.executable, "-m", "worker.launch", "--seed", "1", "--budget", "60",
                                            "train.py"]}
        times = {k: [] for k in cmds}
        for _ in range(a.runs):
            for name, cmd in cmds.items():
                t = time.perf_counter()
                subprocess.run(cmd, cwd=fork, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<26} {v * 1000:7.0f} ms (median of {a.runs})")
    print(f"launcher adds {(med['python -m worker.launch'] - med['python train.py']) * 1000:.0f} ms per trial start")


if __name__ == "__main__":
    main()
