"""
Training and eval throughput (tokens/s) and MFU of train.py's model on this machine.

Builds the model and optimizer from train.py (its GPT, setup_optimizer and hyperparameters) for a
profile's MAX_SEQ_LEN / VOCAB_SIZE and feeds it random tokens: no data cache is needed. Measures the
matmul peak (fp32; bf16 too on a GPU) in the same run, then prints training tokens/s, MFU against
that peak, a per-step breakdown (forward+backward vs optimizer), and forward-only eval tokens/s, so
"an eval token is no slower than a training token" can be checked.

Usage (on Linux, MLX's CPU matmuls need OpenBLAS; the script re-executes itself with it if needed):
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        uv run python bench/throughput.py --profile tiny
    uv run python bench/throughput.py --profile default --depth 8 --device-batch-size 16 --steps 5
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
CPU_TINY_MFU_TARGET = 20.0  # percent of the measured fp32 matmul peak, train.py defaults, tiny profile


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default=os.environ.get("AUTORESEARCH_PROFILE") or "tiny",
                   help="prepare.py profile for MAX_SEQ_LEN/VOCAB_SIZE (default: $AUTORESEARCH_PROFILE or tiny)")
    p.add_argument("--depth", type=int, default=None, help="model depth (default: train.DEPTH)")
    p.add_argument("--device-batch-size", type=int, default=None, help="rows per forward/backward (default: train.DEVICE_BATCH_SIZE)")
    p.add_argument("--total-batch-size", type=int, default=None, help="tokens per optimizer step (default: train.TOTAL_BATCH_SIZE)")
    p.add_argument("--steps", type=int, default=1, help="timed optimizer steps per repeat (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the timed steps; median and best are reported (default 3)")
    p.add_argument("--eval-batches", type=int, default=8, help="forward-only batches per eval repeat (default 8)")
    p.add_argument("--no-reexec", action="store_true", help="do not re-execute with LD_PRELOAD=OpenBLAS on Linux")
    p.add_argument("--json", action="store_true", help="also print one JSON line with all figures")
    return p.parse_args()


def maybe_reexec(args):
    """MLX's CPU backend on Linux runs fp32 matmuls ~30x faster with OpenBLAS preloaded."""
    if platform.system() != "Linux" or args.no_reexec or "openblas" in os.environ.get("LD_PRELOAD", ""):
        return
    if not os.path.exists(OPENBLAS):
        print(f"bench: WARNING: {OPENBLAS} not found; MLX CPU matmuls will be slow (apt-get install libopenblas0-pthread)")
        return
    print(f"bench: LD_PRELOAD was not set: re-executing with LD_PRELOAD={OPENBLAS} "
          f"(what training subprocesses get; pass --no-reexec to measure without it)", flush=True)
    env = {**os.environ, "LD_PRELOAD": OPENBLAS}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def median(xs):
    # (not the statistics module: bench/statistics.py shadows it when this script runs)
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def measure_matmul_peak(mx, dtype, seconds=1.0):
    """Best square-matmul FLOP/s over sizes 512..2048 (the best size is what BLAS/GPU can reach)."""
    best, best_n = 0.0, 0
    for n in (512, 1024, 2048):
        a = mx.random.normal((n, n)).astype(dtype)
        b = mx.random.normal((n, n)).astype(dtype)
        mx.eval(a, b)
        mx.eval(a @ b)  # warm up
        t_end = time.perf_counter() + seconds / 3
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            mx.eval(a @ b)
            flops = 2 * n**3 / (time.perf_counter() - t0)
            if flops > best:
                best, best_n = flops, n
    return best, best_n


def main():
    args = parse_args()
    maybe_reexec(args)
    os.environ["AUTORESEARCH_PROFILE"] = args.profile  # prepare.py (imported by train.py) reads it at import
    sys.path.insert(0, str(REPO_ROOT))

    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map

    import prepare
    import train

    depth = args.depth or train.DEPTH
    total_batch_size = args.total_batch_size or train.TOTAL_BATCH_SIZE
    T, V = prepare.MAX_SEQ_LEN, prepare.VOCAB_SIZE
    # the same derivation as train.py: rows per forward/backward, accumulation to the step's tokens
    device_batch_size = min(args.device_batch_size or train.DEVICE_BATCH_SIZE, max(1, total_batch_size // T))
    grad_accum_steps = max(1, total_batch_size // (device_batch_size * T))
    tokens_per_fwdbwd = device_batch_size * T
    tokens_per_step = grad_accum_steps * tokens_per_fwdbwd
    eval_batch_size = min(device_batch_size, prepare.EVAL_BATCH_SIZE)  # as evaluate_bpb caps it

    backend = ("metal" if mx.metal.is_available() else "cuda") if train.ON_GPU else "cpu"
    print(f"bench: profile {args.profile} (MAX_SEQ_LEN {T}, VOCAB_SIZE {V}) | backend {backend} | "
          f"dtype {train.COMPUTE_DTYPE} | mlx {mx.__version__} | LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}")

    # Peak matmul throughput, measured now and again after the timed work: the best of the two, so a
    # burst of other load on the machine during one measurement does not inflate the MFU
    def measure_peaks():
        peaks = {"float32": measure_matmul_peak(mx, mx.float32)}
        if train.ON_GPU:
            peaks["bfloat16"] = measure_matmul_peak(mx, mx.bfloat16)
        return peaks
    peaks_before = measure_peaks()
    table_peak, table_how = prepare.get_peak_flops(train.COMPUTE_DTYPE)
    print(f"prepare.get_peak_flops (train.py's MFU denominator): {table_peak / 1e9:,.1f} GFLOP/s ({table_how})")

    # Model and optimizer exactly as train.py builds them
    mx.random.seed(0)
    config = train.build_model_config(depth, V, T)
    model = train.GPT(config)
    model.init_weights()
    mx.eval(model.parameters())
    optimizer = model.setup_optimizer(unembedding_lr=train.UNEMBEDDING_LR, embedding_lr=train.EMBEDDING_LR,
                                      scalar_lr=train.SCALAR_LR, adam_betas=train.ADAM_BETAS,
                                      matrix_lr=train.MATRIX_LR, weight_decay=train.WEIGHT_DECAY)
    flops_per_token = model.estimate_flops()
    num_params = model.num_scaling_params()["total"]
    print(f"model: depth {depth}, n_embd {config.n_embd}, {num_params / 1e6:.2f}M params, "
          f"{flops_per_token / 1e6:.1f} MFLOP/token (train.py's estimate_flops)")
    print(f"batch: {tokens_per_step:,} tokens/step = {device_batch_size} rows x {T} x {grad_accum_steps} accumulation steps")

    loss_grad_fn = nn.value_and_grad(model, lambda m, x, y: m(x, y) / grad_accum_steps)
    batches = [(mx.random.randint(0, V, (device_batch_size, T)), mx.random.randint(0, V, (device_batch_size, T)))
               for _ in range(min(grad_accum_steps, 4))]
    mx.eval(batches)

    def forward_backward():
        grads, loss = None, mx.array(0.0)
        for i in range(grad_accum_steps):
            x, y = batches[i % len(batches)]
            l, g = loss_grad_fn(model, x, y)
            grads = g if grads is None else tree_map(mx.add, grads, g)
            loss = loss + l
            mx.eval(loss, grads)
        return grads

    def optimizer_step(grads):
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)

    # warm-up step (allocations, kernel compilation on a GPU), then timed repeats
    mx.reset_peak_memory()
    optimizer_step(forward_backward())
    train_tok_s, fb_s, opt_s = [], [], []
    for _ in range(args.repeats):
        t_fb = t_opt = 0.0
        for _ in range(args.steps):
            t0 = time.perf_counter()
            grads = forward_backward()
            t1 = time.perf_counter()
            optimizer_step(grads)
            t2 = time.perf_counter()
            t_fb += t1 - t0
            t_opt += t2 - t1
        train_tok_s.append(args.steps * tokens_per_step / (t_fb + t_opt))
        fb_s.append(t_fb / args.steps)
        opt_s.append(t_opt / args.steps)
    train_peak_mb = mx.get_peak_memory() / 2**20

    # forward-only eval, as evaluate_bpb calls the model
    xe = mx.random.randint(0, V, (eval_batch_size, T))
    ye = mx.random.randint(0, V, (eval_batch_size, T))
    mx.eval(xe, ye)
    model.eval()
    mx.eval(model(xe, ye, reduction="none").sum())  # warm-up
    mx.reset_peak_memory()
    eval_tok_s = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.eval_batches):
            mx.eval(model(xe, ye, reduction="none").sum())
        eval_tok_s.append(args.eval_batches * eval_batch_size * T / (time.perf_counter() - t0))
    eval_peak_mb = mx.get_peak_memory() / 2**20
    model.train()

    peaks_after = measure_peaks()
    peaks = {}
    for name in peaks_before:
        (before, n_before), (after, n_after) = peaks_before[name], peaks_after[name]
        peaks[name] = max(before, after)
        print(f"peak {name} matmul: {peaks[name] / 1e9:,.1f} GFLOP/s (before the run {before / 1e9:,.1f} at "
              f"{n_before}x{n_before}, after {after / 1e9:,.1f} at {n_after}x{n_after})")
    peak = peaks["bfloat16" if train.COMPUTE_DTYPE == mx.bfloat16 else "float32"]

    med, best = median(train_tok_s), max(train_tok_s)
    mfu_med, mfu_best = 100 * flops_per_token * med / peak, 100 * flops_per_token * best / peak
    fb, op = median(fb_s), median(opt_s)
    eval_med = median(eval_tok_s)
    print()
    print(f"train tok/s:       {med:,.0f} (median of {args.repeats} x {args.steps} steps; best {best:,.0f})")
    print(f"train MFU:         {mfu_med:.1f}% of the measured {'bf16' if train.COMPUTE_DTYPE == mx.bfloat16 else 'fp32'} "
          f"matmul peak (best {mfu_best:.1f}%); {100 * flops_per_token * med / table_peak:.1f}% of get_peak_flops")
    print(f"step breakdown:    forward+backward {fb * 1000:,.0f} ms ({grad_accum_steps} x {tokens_per_fwdbwd:,} tokens), "
          f"optimizer {op * 1000:,.0f} ms ({100 * op / (fb + op):.0f}% of the step)")
    print(f"eval tok/s:        {eval_med:,.0f} (forward only, batch {eval_batch_size}; "
          f"{eval_med / med:.2f}x the training tok/s: {'OK' if eval_med >= med else 'SLOWER than training'})")
    print(f"peak memory:       training {train_peak_mb:,.1f} MB, eval {eval_peak_mb:,.1f} MB "
          f"({'OK, eval below training' if eval_peak_mb <= train_peak_mb else 'eval ABOVE training'})")
    if backend == "cpu" and args.profile == "tiny":
        print(f"target (CPU, tiny): train MFU >= {CPU_TINY_MFU_TARGET:.0f}% of the measured fp32 peak: "
              f"{'met' if mfu_med >= CPU_TINY_MFU_TARGET else 'NOT met'} (median {mfu_med:.1f}%, best {mfu_best:.1f}%; "
              f"the machine's other load lowers both: run it a few times)")
    if args.json:
        print("bench_json: " + json.dumps(dict(
            profile=args.profile, backend=backend, dtype=str(train.COMPUTE_DTYPE), depth=depth,
            device_batch_size=device_batch_size, grad_accum_steps=grad_accum_steps, tokens_per_step=tokens_per_step,
            peak_flops=peaks, get_peak_flops=table_peak, flops_per_token=flops_per_token,
            train_tok_s=train_tok_s, mfu_percent=mfu_med, eval_tok_s=eval_tok_s,
            fwd_bwd_s=fb, optimizer_s=op, train_peak_mb=train_peak_mb, eval_peak_mb=eval_peak_mb)))


if __name__ == "__main__":
    main()
