"""
The fixed evaluator (DO NOT CHANGE — like prepare.py, this file is the metric; the swarm hashes it).

train.py trains and saves its final model (--checkpoint DIR: weights + the config that rebuilds
it). This script, run as a process of its own after training, rebuilds that model from the
candidate's code, asks it for logits only, and computes the cross-entropy and val_bpb itself
(prepare.bpb_of_rows) with the fixed token-bytes table, on the fixed rows of the split.
Everything the metric depends on is loaded before the candidate's code is imported.

Before scoring, a causality probe: on a few rows the tokens after a position p are replaced;
the logits at positions <= p must not change. A model that sees the future is refused.

Usage:
    uv run evaluate.py --checkpoint DIR                   # prints val_bpb
    uv run evaluate.py --checkpoint DIR --split test      # the held-out split
The swarm's worker adds --result FILE: one JSON record, written once, in a folder that the
training process never had. The rows are the ones prepare.py tokenized once (eval/<split>.npy):
nothing is tokenized here, and the batch grows (up to EVAL_BATCH_SIZE) while the evaluator's memory
stays under training's peak (eval_batch_size). Its smoke run scores fewer tokens (AUTORESEARCH_EVAL_TOKENS, as in prepare.py).
"""

import argparse
import importlib
import json
import os
import sys
import time

import numpy as np
import mlx.core as mx

import prepare

# Rows of the causality probe (taken from the evaluation rows); each is scored beside its changed copy.
PROBE_ROWS = 1
# Largest change of a logit at positions <= p allowed by the probe, relative to the largest
# logit magnitude there (float noise of a different batch layout is far below it; a model that
# attends to the future changes logits by O(0.1-1)).
PROBE_RTOL = 1e-3
# Exit code when the probe fails (distinct from a crash: the model is wrong, not broken).
NOT_CAUSAL_EXIT = 4
# Share of training's peak memory (the checkpoint's peak_memory_mb) the evaluator's batch may fill:
# the batch is the largest up to EVAL_BATCH_SIZE whose memory, extrapolated from the probe's, stays under it.
MEMORY_MARGIN = 0.8
# Files a checkpoint folder holds (written by train.py's save_checkpoint).
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def causality_probe(forward, rows, vocab_size, seed=0):
    """Largest |change| of the logits at positions <= p when every token after p is replaced,
    over PROBE_ROWS rows, and the tolerance it must stay under. p is drawn in the middle half.
    One forward pass: the rows and their changed copies in one batch."""
    rng = np.random.default_rng(seed)
    x = rows[:PROBE_ROWS, :-1]
    T = x.shape[1]
    p = int(rng.integers(T // 4, max(T // 4 + 1, 3 * T // 4)))
    changed = x.copy()
    # a different token at every later position (never the same one by chance)
    changed[:, p + 1:] = (x[:, p + 1:] + rng.integers(1, vocab_size, size=x[:, p + 1:].shape)) % vocab_size
    logits = np.array(forward(mx.array(np.concatenate([x, changed]))).astype(mx.float32))[:, :p + 1]
    a, b = logits[:len(x)], logits[len(x):]
    diff = float(np.max(np.abs(a - b)))
    tol = PROBE_RTOL * max(1.0, float(np.max(np.abs(a))))
    return diff, tol, p


def eval_batch_size(min_batch, cap, train_peak, base, per_row):
    """Rows per forward pass: as many as fit in MEMORY_MARGIN of training's peak memory (train_peak
    bytes; base = the model's own memory, per_row = the probe's memory per row), at most cap, and
    never fewer than training's micro-batch (a forward pass of it always fits where its training
    step did). Bigger batches keep the CPU's matmuls busier."""
    if train_peak <= 0 or per_row <= 0:
        return min_batch
    fits = int((MEMORY_MARGIN * train_peak - base) // per_row)
    return max(min_batch, min(cap, fits))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Score a saved model: val_bpb computed here, not by the model.")
    parser.add_argument("--checkpoint", required=True, help="folder train.py --checkpoint wrote")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="split to score (default val)")
    parser.add_argument("--result", default=None, help="write the result record here (JSON, created once)")
    parser.add_argument("--module", default="train", help="module that defines GPT and GPTConfig (default train)")
    args = parser.parse_args(argv)
    t0 = time.time()
    # the record's file is created now, before any candidate code runs ("x": one that exists fails)
    out = open(args.result, "x") if args.result else None

    # -- the metric's inputs, before any candidate code runs
    with open(os.path.join(args.checkpoint, META_FILE)) as f:
        meta = json.load(f)
    token_bytes = prepare.get_token_bytes()
    rows = prepare.eval_rows(None, args.split)    # tokenized once by prepare.py: no tokenizer here
    score = prepare.bpb_of_rows          # bound now: candidate code may rebind prepare's names later
    cap = prepare.EVAL_BATCH_SIZE
    min_batch = max(1, min(int(meta.get("eval_batch_size") or cap), cap))   # training's own micro-batch
    train_peak = float(meta.get("peak_memory_mb") or 0) * 2**20
    t_data = time.time()

    # -- the candidate's model: its code, its weights, asked for logits only
    sys.path.insert(0, os.getcwd())
    train = importlib.import_module(args.module)
    model = train.GPT(train.GPTConfig(**meta["config"]))
    model.load_weights(os.path.join(args.checkpoint, WEIGHTS_FILE))   # strict: every weight, right shapes
    model.eval()
    mx.eval(model.parameters())

    def forward(x):
        return model(x)

    t_model = time.time()

    base = mx.get_active_memory()
    mx.reset_peak_memory()
    diff, tol, p = causality_probe(forward, rows, token_bytes.shape[0])
    batch_size = eval_batch_size(min_batch, cap, train_peak, base, (mx.get_peak_memory() - base) / (2 * PROBE_ROWS))
    t_probe = time.time()
    record = {"split": args.split, "tokens": int(rows.shape[0] * (rows.shape[1] - 1)), "rows": int(rows.shape[0]),
              "probe": {"position": p, "max_change": diff, "tolerance": tol}}
    if not diff <= tol:
        record["error"] = (f"not causal: the logits at positions <= {p} changed by up to {diff:.3g} (tolerance "
                           f"{tol:.3g}) when only the tokens after {p} changed; the model sees the future "
                           f"(a broken causal mask?)")
        print(f"error: {record['error']}", flush=True)
        code = NOT_CAUSAL_EXIT
    else:
        record["bpb"] = score(forward, rows, token_bytes, batch_size)
        print(f"{args.split}_bpb: {record['bpb']:.6f}", flush=True)
        code = 0
    t_end = time.time()
    record["seconds"] = {"data": round(t_data - t0, 3), "model": round(t_model - t_data, 3),
                         "probe": round(t_probe - t_model, 3), "eval": round(t_end - t_probe, 3),
                         "total": round(t_end - t0, 3)}
    record["batch_size"] = batch_size
    record["tokens_per_second"] = round(record["tokens"] / max(t_end - t_probe, 1e-9), 1) if code == 0 else None
    record["peak_memory_mb"] = round(mx.get_peak_memory() / 2**20, 1)
    record["train_peak_memory_mb"] = round(train_peak / 2**20, 1) or None
    if out is not None:
        json.dump(record, out)
        out.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
