"""
A stand-in for train.py with a known answer, for the coordinator's tests.

val_bpb = true_bpb(constants, seed) + Gaussian noise, so a test knows which
changes are real: the offline agent perturbs the constants below by name, the
swarm judges them, and the test checks the verdicts against the truth. A run
sleeps briefly instead of training and prints train.py's summary block.

    python train.py --seed 3 --time-budget 1
"""

# -- constants (the offline agent reads and rewrites these by name) -----------
MATRIX_LR = 0.04        # null: val_bpb does not depend on it
WARMDOWN_RATIO = 0.5    # real: every +0.1 lowers val_bpb by EFFECT (up to 1.0)
SCALAR_LR = 0.5         # lucky: a higher value looks EFFECT better on seeds < 1000 only (not real)
DEPTH = 4               # harmful: each layer away from 4 costs EFFECT; 6 and more run out of memory

import argparse
import hashlib
import json
import os
import random
import sys
import time

BASE_BPB = 2.0          # val_bpb of the initial constants, before noise
SIGMA = 0.01            # seed-to-seed noise (one standard deviation)
EFFECT = 4 * SIGMA      # size of every real (and of the lucky) effect
LUCKY_SEEDS = 1000      # the lucky effect shows on seeds below this: candidates', not a re-test's
SLEEP_ENV = "AUTORESEARCH_SYNTH_SLEEP"   # seconds a run "trains" (default 0.2)


def true_bpb(matrix_lr=MATRIX_LR, warmdown_ratio=WARMDOWN_RATIO, scalar_lr=SCALAR_LR, depth=DEPTH, seed=0):
    """The expected val_bpb of these constants on this seed (no noise)."""
    bpb = BASE_BPB
    bpb -= EFFECT * round((min(warmdown_ratio, 1.0) - 0.5) / 0.1)
    bpb += EFFECT * abs(depth - 4)
    if scalar_lr > 0.5 and seed < LUCKY_SEEDS:
        bpb -= EFFECT
    return bpb


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, default=1.0)
    args = parser.parse_args()

    if DEPTH >= 6:
        print("Traceback (most recent call last):\n  File \"train.py\", line 1, in <module>\n"
              "MemoryError: Unable to allocate the model", flush=True)
        sys.exit(1)
    sleep = float(os.environ.get(SLEEP_ENV, "0.2"))
    for step in range(3):
        time.sleep(sleep / 3)
        print(f"step {step:05d} ({100 * (step + 1) / 3:.1f}%) | loss: {3 - step * 0.1:.6f} | lrm: 1.00 | "
              f"dt: {sleep / 3 * 1000:.0f}ms | tok/sec: 1,000 | mfu: 1.0% | epoch: 1 | remaining: 0s", flush=True)

    split = os.environ.get("AUTORESEARCH_EVAL_SPLIT", "val")
    # the noise depends on the seed and on the code: two commits never share it
    key = f"{args.seed}:{MATRIX_LR!r}:{WARMDOWN_RATIO!r}:{SCALAR_LR!r}:{DEPTH!r}:{split}"
    rng = random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))
    val_bpb = true_bpb(seed=args.seed) + rng.gauss(0.0, SIGMA)
    trained = min(sleep, args.time_budget)
    summary = {"val_bpb": val_bpb, "training_seconds": trained, "total_seconds": sleep,
               "peak_vram_mb": 1.0, "mfu_percent": 1.0, "total_tokens_M": 0.1, "num_steps": 3,
               "num_params_M": 0.1, "depth": DEPTH, "profile": "synthetic", "seed": args.seed,
               "backend": "none", "dtype": "float32", "eval_split": split,
               "time_budget": args.time_budget}
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {trained:.1f}")
    print(f"total_seconds:    {sleep:.1f}")
    print(f"depth:            {DEPTH}")
    print(f"summary_json: {json.dumps(summary)}", flush=True)


if __name__ == "__main__":
    main()
