"""
Autoresearch pretraining script. Single-device, single-file.
MLX port of karpathy/autoresearch train.py (cherry-picked and simplified from nanochat):
Metal on Apple Silicon, the CPU backend on Linux (tests, CI), CUDA where MLX has it.
Usage: uv run train.py [--seed N] [--time-budget SECONDS]
"""

import argparse
import gc
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from prepare import (EVAL_BATCH_SIZE, EVAL_TOKENS, MAX_SEQ_LEN, PROFILE, TIME_BUDGET, Tokenizer, data_fingerprint,
                     evaluate_bpb, get_peak_flops, make_dataloader)

# bf16 weights/activations on an accelerator (Metal, CUDA); fp32 on the CPU backend,
# where bf16 matmuls are emulated and several times slower.
ON_GPU = mx.default_device().type == mx.gpu
COMPUTE_DTYPE = mx.bfloat16 if ON_GPU else mx.float32

# ---------------------------------------------------------------------------
# GPT Model
# ---------------------------------------------------------------------------

@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "SSSL"


def norm(x):
    # parameter-free RMSNorm (upstream: F.rms_norm without a weight)
    return mx.fast.rms_norm(x, None, 1e-6)


def has_ve(layer_idx, n_layer):
    """Returns True if layer should have Value Embedding (alternating, last always included)."""
    return layer_idx % 2 == (n_layer - 1) % 2


def attention_mask(seq_len, window, dtype):
    """Additive mask: query i sees keys j with i - window <= j <= i (flash-attn window_size=(window, 0)).
    Built in the q/k/v dtype: a float32 mask would promote bf16 attention to float32."""
    i = mx.arange(seq_len)[:, None]
    j = mx.arange(seq_len)[None, :]
    blocked = (j > i) | (i - j > window)
    return mx.where(blocked, mx.array(-float("inf"), dtype), mx.array(0, dtype))


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.n_embd = config.n_embd
        self.head_dim = self.n_embd // self.n_head
        assert self.n_embd % self.n_head == 0
        assert self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0
        self.c_q = nn.Linear(self.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_embd, self.n_embd, bias=False)
        self.ve_gate_channels = 32
        self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_kv_head, bias=False) if has_ve(layer_idx, config.n_layer) else None

    def __call__(self, x, ve, mask):
        B, T, C = x.shape
        q = self.c_q(x).reshape(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).reshape(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).reshape(B, T, self.n_kv_head, self.head_dim)

        # Value residual (ResFormer): mix in value embedding with input-dependent gate per head
        if ve is not None:
            ve = ve.reshape(B, T, self.n_kv_head, self.head_dim)
            gate = 2 * mx.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))
            v = v + gate[..., None] * ve

        # (B, H, T, D) for rope and attention; rotary (split halves, base 10000) then QK-norm
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        q = norm(mx.fast.rope(q, self.head_dim, traditional=False, base=10000, scale=1.0, offset=0))
        k = norm(mx.fast.rope(k, self.head_dim, traditional=False, base=10000, scale=1.0, offset=0))
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim ** -0.5, mask=mask)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def __call__(self, x):
        x = self.c_fc(x)
        x = mx.square(nn.relu(x))  # ReLU²
        return self.c_proj(x)


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def __call__(self, x, ve, mask):
        x = x + self.attn(norm(x), ve, mask)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.window_sizes = self._compute_window_sizes(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = [Block(config, i) for i in range(config.n_layer)]
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.resid_lambdas = mx.ones((config.n_layer,))
        self.x0_lambdas = mx.zeros((config.n_layer,))
        # Value embeddings
        head_dim = config.n_embd // config.n_head
        kv_dim = config.n_kv_head * head_dim
        # (keys are not bare digits: mlx tree utilities would turn "1" into a list index)
        self.value_embeds = {f"layer{i}": nn.Embedding(config.vocab_size, kv_dim)
                             for i in range(config.n_layer) if has_ve(i, config.n_layer)}
        self._mask_cache = {}  # (seq_len, window, dtype) -> additive mask (underscore: not a parameter)

    def init_weights(self, dtype=None):
        dtype = COMPUTE_DTYPE if dtype is None else dtype
        n_embd = self.config.n_embd
        s = 3**0.5 * n_embd**-0.5  # uniform(-s, s) has the std of normal(0, 1/sqrt(n_embd))
        uniform = lambda w: mx.random.uniform(-s, s, w.shape)
        # Embedding and unembedding
        self.wte.weight = mx.random.normal(self.wte.weight.shape)
        self.lm_head.weight = 0.001 * mx.random.normal(self.lm_head.weight.shape)
        # Transformer blocks: zero-init output projections, so every block starts as the identity
        for block in self.blocks:
            block.attn.c_q.weight = uniform(block.attn.c_q.weight)
            block.attn.c_k.weight = uniform(block.attn.c_k.weight)
            block.attn.c_v.weight = uniform(block.attn.c_v.weight)
            block.attn.c_proj.weight = mx.zeros_like(block.attn.c_proj.weight)
            block.mlp.c_fc.weight = uniform(block.mlp.c_fc.weight)
            block.mlp.c_proj.weight = mx.zeros_like(block.mlp.c_proj.weight)
            # Gate weights init to zero (sigmoid(0)=0.5, scaled by 2 -> 1.0 = neutral)
            if block.attn.ve_gate is not None:
                block.attn.ve_gate.weight = mx.zeros_like(block.attn.ve_gate.weight)
        # Value embeddings
        for ve in self.value_embeds.values():
            ve.weight = uniform(ve.weight)
        # Cast matrices to the compute dtype; the per-layer scalars stay float32
        self.update(tree_map(lambda p: p.astype(dtype), self.parameters()))
        self.resid_lambdas = mx.ones((self.config.n_layer,), dtype=mx.float32)
        self.x0_lambdas = mx.full((self.config.n_layer,), 0.1, dtype=mx.float32)

    def _compute_window_sizes(self, config):
        pattern = config.window_pattern.upper()
        assert all(c in "SL" for c in pattern), f"WINDOW_PATTERN {config.window_pattern!r}: use only S and L"
        long_window = config.sequence_len
        short_window = long_window // 2
        char_to_window = {"L": long_window, "S": short_window}
        window_sizes = [char_to_window[pattern[i % len(pattern)]] for i in range(config.n_layer)]
        window_sizes[-1] = long_window  # the last layer always sees the whole context
        return window_sizes

    def _get_masks(self, seq_len, dtype):
        masks = []
        for window in self.window_sizes:
            key = (seq_len, min(window, seq_len), dtype)
            if key not in self._mask_cache:
                self._mask_cache[key] = attention_mask(seq_len, min(window, seq_len), dtype)
            masks.append(self._mask_cache[key])
        return masks

    def estimate_flops(self):
        """Estimated FLOPs per token (forward + backward), as upstream: 6 per matmul weight + attention."""
        nparams = sum(p.size for _, p in tree_flatten(self.parameters()))
        value_embeds_numel = sum(ve.weight.size for ve in self.value_embeds.values())
        nparams_exclude = (self.wte.weight.size + value_embeds_numel +
                           self.resid_lambdas.size + self.x0_lambdas.size)
        h = self.config.n_head
        q = self.config.n_embd // self.config.n_head
        t = self.config.sequence_len
        attn_flops = sum(12 * h * q * min(window, t) for window in self.window_sizes)
        return 6 * (nparams - nparams_exclude) + attn_flops

    def num_scaling_params(self):
        count = lambda tree: sum(p.size for _, p in tree_flatten(tree))
        counts = {
            'wte': count(self.wte.parameters()), 'value_embeds': count(self.value_embeds),
            'lm_head': count(self.lm_head.parameters()),
            'transformer_matrices': count([b.parameters() for b in self.blocks]),
            'scalars': self.resid_lambdas.size + self.x0_lambdas.size,
        }
        counts['total'] = sum(counts.values())
        return counts

    def setup_optimizer(self, unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02,
                        weight_decay=0.0, adam_betas=(0.8, 0.95), scalar_lr=0.5):
        """Muon for the 2-D matrices of the blocks, AdamW (one per group) for the rest.
        Returns an mlx MultiOptimizer; each sub-optimizer carries .name and .initial_lr."""
        model_dim = self.config.n_embd
        # Scale LR ∝ 1/√dmodel (tuned at 768 dim)
        dmodel_lr_scale = (model_dim / 768) ** -0.5
        print(f"Scaling AdamW LRs by 1/sqrt({model_dim}/768) = {dmodel_lr_scale:.6f}")
        adamw = lambda lr, betas=adam_betas: optim.AdamW(learning_rate=lr, betas=list(betas), eps=1e-10,
                                                         weight_decay=0.0, bias_correction=True)
        groups = [  # (name, predicate on the parameter's path and value, optimizer, initial lr)
            ("muon", lambda path, p: path.startswith("blocks.") and p.ndim == 2,
             CautiousMuon(matrix_lr, momentum=0.95, weight_decay=weight_decay, nesterov=True, ns_steps=5), matrix_lr),
            ("lm_head", lambda path, p: path.startswith("lm_head."), adamw(unembedding_lr * dmodel_lr_scale), unembedding_lr * dmodel_lr_scale),
            ("wte", lambda path, p: path.startswith("wte."), adamw(embedding_lr * dmodel_lr_scale), embedding_lr * dmodel_lr_scale),
            ("value_embeds", lambda path, p: path.startswith("value_embeds."), adamw(embedding_lr * dmodel_lr_scale), embedding_lr * dmodel_lr_scale),
            ("resid_lambdas", lambda path, p: path == "resid_lambdas", adamw(scalar_lr * 0.01), scalar_lr * 0.01),
            ("x0_lambdas", lambda path, p: path == "x0_lambdas", adamw(scalar_lr, betas=(0.96, 0.95)), scalar_lr),
        ]
        # Every parameter must belong to exactly one group (a new parameter needs a group here)
        for path, p in tree_flatten(self.trainable_parameters()):
            owners = [name for name, pred, _, _ in groups if pred(path, p)]
            assert len(owners) == 1, f"parameter {path} {p.shape} matches optimizer groups {owners}; fix setup_optimizer"
        for name, _, opt, lr in groups:
            opt.name, opt.initial_lr = name, lr
        # MultiOptimizer: the first matching filter wins; the last optimizer is the fallback (no filter)
        return optim.MultiOptimizer([opt for _, _, opt, _ in groups], [pred for _, pred, _, _ in groups[:-1]])

    def __call__(self, idx, targets=None, reduction="mean"):
        B, T = idx.shape
        assert T <= self.config.sequence_len
        masks = self._get_masks(T, self.wte.weight.dtype)

        x = self.wte(idx)
        x = norm(x)
        x0 = x
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i].astype(x.dtype) * x + self.x0_lambdas[i].astype(x.dtype) * x0
            ve = self.value_embeds[f"layer{i}"](idx) if f"layer{i}" in self.value_embeds else None
            x = block(x, ve, masks[i])
        x = norm(x)

        softcap = 15
        logits = self.lm_head(x).astype(mx.float32)
        logits = softcap * mx.tanh(logits / softcap)
        if targets is None:
            return logits

        # per-token cross entropy in nats; targets == -1 are ignored (upstream ignore_index=-1)
        valid = targets != -1
        loss = nn.losses.cross_entropy(logits, mx.where(valid, targets, 0), reduction="none") * valid
        if reduction == "none":
            return loss  # (B, T) nats per token
        assert reduction == "mean", f"reduction must be 'mean' or 'none', got {reduction!r}"
        return loss.sum() / mx.maximum(valid.sum(), 1)

# ---------------------------------------------------------------------------
# Optimizer: mlx.optimizers Muon + AdamW, combined by MultiOptimizer
# ---------------------------------------------------------------------------

class CautiousMuon(optim.Muon):
    """mlx Muon with upstream's decoupled, cautious weight decay.
    mlx's own weight_decay adds wd * W to the gradient *before* orthogonalization, where it would
    swamp the direction; upstream shrinks W after the update, and only where the update already
    pushes W toward zero. cautious_weight_decay (like momentum) is a plain attribute: the training
    loop's schedule sets it every step."""

    def __init__(self, learning_rate, momentum=0.95, weight_decay=0.0, nesterov=True, ns_steps=5):
        super().__init__(learning_rate, momentum=momentum, weight_decay=0.0, nesterov=nesterov, ns_steps=ns_steps)
        self.cautious_weight_decay = weight_decay

    def apply_single(self, gradient, parameter, state):
        new = super().apply_single(gradient, parameter, state)
        if self.cautious_weight_decay == 0:
            return new
        # the learning rate Muon applied (scaled up for tall matrices), as upstream
        lr = self.learning_rate.astype(parameter.dtype) * max(1, parameter.shape[-2] / parameter.shape[-1]) ** 0.5
        mask = ((parameter - new) * parameter) >= 0  # update and weight have the same sign
        return new - (lr * self.cautious_weight_decay) * parameter * mask

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly, no CLI flags needed)
# ---------------------------------------------------------------------------

# Model architecture
ASPECT_RATIO = 64       # model_dim = depth * ASPECT_RATIO (rounded up to a multiple of HEAD_DIM)
HEAD_DIM = 128          # target head dimension for attention
WINDOW_PATTERN = "SSSL" # sliding window pattern: L=full, S=half context (last layer always L)

# Optimization
TOTAL_BATCH_SIZE = 2**14 # tokens per optimizer step, by gradient accumulation (small batches win on Macs)
EMBEDDING_LR = 0.6      # learning rate for token and value embeddings (AdamW)
UNEMBEDDING_LR = 0.004  # learning rate for lm_head (AdamW)
MATRIX_LR = 0.04        # learning rate for matrix parameters (Muon)
SCALAR_LR = 0.5         # learning rate for per-layer scalars (AdamW)
WEIGHT_DECAY = 0.2      # cautious weight decay for Muon, decays linearly to 0 over the budget
ADAM_BETAS = (0.8, 0.95) # Adam beta1, beta2
WARMUP_RATIO = 0.0      # fraction of time budget for LR warmup
WARMDOWN_RATIO = 0.5    # fraction of time budget for LR warmdown
FINAL_LR_FRAC = 0.0     # final LR as fraction of initial

# Model size (a Mac: few layers, many steps)
DEPTH = 4               # number of transformer layers
DEVICE_BATCH_SIZE = 8   # rows of MAX_SEQ_LEN tokens per forward/backward (lower it if memory is short)

# Fast fail: a train loss above this many times ln(vocab) (uniform guessing) means divergence
DIVERGENCE_FACTOR = 2.0


def build_model_config(depth, vocab_size, sequence_len=MAX_SEQ_LEN):
    base_dim = depth * ASPECT_RATIO
    model_dim = ((base_dim + HEAD_DIM - 1) // HEAD_DIM) * HEAD_DIM
    num_heads = model_dim // HEAD_DIM
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth,
                     n_head=num_heads, n_kv_head=num_heads, n_embd=model_dim, window_pattern=WINDOW_PATTERN)

# Schedules (all based on progress = training_time / time_budget)

def get_lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO if WARMUP_RATIO > 0 else 1.0
    elif progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    else:
        cooldown = (1.0 - progress) / WARMDOWN_RATIO
        return cooldown * 1.0 + (1 - cooldown) * FINAL_LR_FRAC

def get_muon_momentum(step):
    frac = min(step / 300, 1)
    return (1 - frac) * 0.85 + frac * 0.95

def get_weight_decay(progress):
    return WEIGHT_DECAY * (1 - progress)

def save_checkpoint(model, config, path, **meta):
    """The final model for the fixed evaluator (evaluate.py): weights plus the config that rebuilds
    it (GPT(GPTConfig(**config))). The evaluator asks the model for logits only."""
    os.makedirs(path, exist_ok=True)
    model.save_weights(os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "model.json"), "w") as f:
        json.dump({"config": asdict(config), **meta}, f)

# ---------------------------------------------------------------------------
# Setup: tokenizer, model, optimizer, dataloader
# ---------------------------------------------------------------------------

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train the GPT for a fixed wall-clock budget, then report val_bpb.")
    parser.add_argument("--seed", type=int, default=0, help="model init and data order (default 0)")
    parser.add_argument("--time-budget", type=float, default=TIME_BUDGET,
                        help=f"seconds of training, excluding startup, the first step and eval (default {TIME_BUDGET})")
    parser.add_argument("--checkpoint", default=None, metavar="DIR",
                        help="save the final model here for evaluate.py and skip the evaluation (the swarm's worker does this)")
    args = parser.parse_args()
    time_budget = args.time_budget
    # SIGTERM (the worker's clock ran out, or the swarm stops): finish the current step, save, exit
    stop_requested = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_requested.append(signum))
    if not time_budget > 0:
        parser.error(f"--time-budget must be a positive number of seconds, got {time_budget}")

    t_start = time.time()
    mx.random.seed(args.seed)
    backend = ("metal" if mx.metal.is_available() else "cuda") if ON_GPU else "cpu"
    dtype_name = "bfloat16" if COMPUTE_DTYPE == mx.bfloat16 else "float32"
    print(f"Profile: {PROFILE} | backend: {backend} | dtype: {dtype_name} | seed: {args.seed}")

    tokenizer = Tokenizer.from_directory()
    vocab_size = tokenizer.get_vocab_size()
    print(f"Vocab size: {vocab_size:,}")

    config = build_model_config(DEPTH, vocab_size)
    print(f"Model config: {asdict(config)}")
    model = GPT(config)
    model.init_weights()
    mx.eval(model.parameters())

    param_counts = model.num_scaling_params()
    print("Parameter counts:")
    for key, value in param_counts.items():
        print(f"  {key:24s}: {value:,}")
    num_params = param_counts['total']
    num_flops_per_token = model.estimate_flops()
    print(f"Estimated FLOPs per token: {num_flops_per_token:e}")
    peak_flops, peak_how = get_peak_flops(COMPUTE_DTYPE)
    print(f"Peak FLOP/s for MFU: {peak_flops:.3e} ({peak_how})")

    # DEVICE_BATCH_SIZE rows per forward/backward (fewer if one step holds fewer rows), accumulated
    # to TOTAL_BATCH_SIZE tokens per optimizer step
    device_batch_size = min(DEVICE_BATCH_SIZE, max(1, TOTAL_BATCH_SIZE // MAX_SEQ_LEN))
    tokens_per_fwdbwd = device_batch_size * MAX_SEQ_LEN
    grad_accum_steps = max(1, TOTAL_BATCH_SIZE // tokens_per_fwdbwd)
    tokens_per_step = grad_accum_steps * tokens_per_fwdbwd
    if tokens_per_step != TOTAL_BATCH_SIZE:
        print(f"Note: TOTAL_BATCH_SIZE={TOTAL_BATCH_SIZE:,} is not a multiple of {device_batch_size} x MAX_SEQ_LEN="
              f"{tokens_per_fwdbwd:,}; using {tokens_per_step:,} tokens per step")

    optimizer = model.setup_optimizer(
        unembedding_lr=UNEMBEDDING_LR,
        embedding_lr=EMBEDDING_LR,
        scalar_lr=SCALAR_LR,
        adam_betas=ADAM_BETAS,
        matrix_lr=MATRIX_LR,
        weight_decay=WEIGHT_DECAY,
    )
    muon = next(opt for opt in optimizer.optimizers if opt.name == "muon")

    # the mean loss of a micro-batch, scaled so that summed gradients are the step's average
    def scaled_loss(model, inputs, targets):
        return model(inputs, targets) / grad_accum_steps
    loss_grad_fn = nn.value_and_grad(model, scaled_loss)

    train_loader = make_dataloader(tokenizer, device_batch_size, MAX_SEQ_LEN, "train", seed=args.seed)
    x, y, epoch = next(train_loader)  # prefetch first batch

    print(f"Time budget: {time_budget:g}s")
    print(f"Tokens per step: {tokens_per_step:,} ({device_batch_size} rows x {MAX_SEQ_LEN} x {grad_accum_steps} accumulation steps)")
    if args.checkpoint:
        # the worker's pre-flight: the evaluator scores this initial model while the first step runs,
        # so a model it cannot rebuild or run stops the trial now, not after the whole budget
        save_checkpoint(model, config, os.path.join(args.checkpoint, "preflight"),
                        eval_batch_size=min(device_batch_size, EVAL_BATCH_SIZE), seed=args.seed, num_steps=0)

    # ---------------------------------------------------------------------------
    # Training loop
    # ---------------------------------------------------------------------------

    smooth_train_loss = 0
    total_training_time = 0
    step = 0
    interactive = sys.stdout.isatty()
    last_print = 0.0
    divergence_loss = DIVERGENCE_FACTOR * math.log(vocab_size)

    while True:
        t0 = time.time()
        grads = None
        train_loss = mx.array(0.0)
        for micro_step in range(grad_accum_steps):
            loss, micro_grads = loss_grad_fn(model, x, y)
            grads = micro_grads if grads is None else tree_map(mx.add, grads, micro_grads)
            train_loss = train_loss + loss
            mx.eval(train_loss, grads)  # one micro-batch's graph at a time keeps memory flat
            x, y, epoch = next(train_loader)

        # Progress and schedules
        progress = min(total_training_time / time_budget, 1.0)
        lrm = get_lr_multiplier(progress)
        for opt in optimizer.optimizers:
            opt.learning_rate = opt.initial_lr * lrm
        muon.momentum = get_muon_momentum(step)
        muon.cautious_weight_decay = get_weight_decay(progress)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)

        train_loss_f = train_loss.item()

        # Fast fail: abort if loss is not finite or exploding (the soft-cap bounds it, so no NaN is needed)
        if not math.isfinite(train_loss_f) or train_loss_f > divergence_loss:
            print(f"\nerror: divergence: train loss {train_loss_f} at step {step} "
                  f"(limit {divergence_loss:.2f} = {DIVERGENCE_FACTOR} x ln(vocab)); lower the learning rates", flush=True)
            sys.exit(3)

        t1 = time.time()
        dt = t1 - t0

        if step > 0:  # the first step warms up (kernel compilation, allocations): not counted
            total_training_time += dt

        # Logging
        ema_beta = 0.9
        smooth_train_loss = ema_beta * smooth_train_loss + (1 - ema_beta) * train_loss_f
        debiased_smooth_loss = smooth_train_loss / (1 - ema_beta**(step + 1))
        pct_done = 100 * min(total_training_time / time_budget, 1.0)
        tok_per_sec = int(tokens_per_step / dt)
        mfu = 100 * num_flops_per_token * tokens_per_step / dt / peak_flops
        remaining = max(0, time_budget - total_training_time)
        done = step > 0 and total_training_time >= time_budget
        if interactive or done or step == 0 or t1 - last_print >= 1.0:
            last_print = t1
            print(f"step {step:05d} ({pct_done:.1f}%) | loss: {debiased_smooth_loss:.6f} | lrm: {lrm:.2f} | dt: {dt*1000:.0f}ms | tok/sec: {tok_per_sec:,} | mfu: {mfu:.1f}% | epoch: {epoch} | remaining: {remaining:.0f}s"
                  + ("    " if interactive else ""), end="\r" if interactive else "\n", flush=True)

        # GC management (Python's GC causes long stalls): collect once, then only rarely
        if step == 0:
            gc.collect()
            gc.freeze()
            gc.disable()
        elif (step + 1) % 5000 == 0:
            gc.collect()

        step += 1

        # Time's up (the untimed first step is always followed by at least one timed step)
        if done or stop_requested:
            break

    if interactive:
        print()  # newline after \r training log

    total_tokens = step * tokens_per_step

    # Final eval (forward only, training's batch: stays below training memory). Under the swarm the
    # model is saved instead and scored by the fixed evaluator in a process of its own.
    if args.checkpoint:
        save_checkpoint(model, config, args.checkpoint, eval_batch_size=min(device_batch_size, EVAL_BATCH_SIZE),
                        seed=args.seed, num_steps=step, peak_memory_mb=round(mx.get_peak_memory() / 2**20, 1))
        val_bpb = None
    else:
        val_bpb = evaluate_bpb(model, tokenizer, device_batch_size)

    # Final summary
    t_end = time.time()
    steady_state_mfu = (100 * num_flops_per_token * tokens_per_step * (step - 1) / total_training_time / peak_flops
                        if total_training_time > 0 else 0.0)
    peak_vram_mb = mx.get_peak_memory() / 1024 / 1024

    print("---")
    if val_bpb is not None:
        print(f"val_bpb:          {val_bpb:.6f}")
    else:
        print(f"checkpoint:       {args.checkpoint}")
    print(f"training_seconds: {total_training_time:.1f}")
    print(f"total_seconds:    {t_end - t_start:.1f}")
    print(f"peak_vram_mb:     {peak_vram_mb:.1f}")
    print(f"mfu_percent:      {steady_state_mfu:.2f}")
    print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.1f}")
    print(f"depth:            {DEPTH}")
    print(f"profile:          {PROFILE}")
    summary = {
        "val_bpb": val_bpb, "training_seconds": round(total_training_time, 3),
        "total_seconds": round(t_end - t_start, 3), "peak_vram_mb": round(peak_vram_mb, 1),
        "mfu_percent": round(steady_state_mfu, 3), "total_tokens_M": total_tokens / 1e6, "num_steps": step,
        "num_params_M": num_params / 1e6, "depth": DEPTH, "profile": PROFILE, "seed": args.seed,
        "backend": backend, "dtype": dtype_name, "data_fingerprint": data_fingerprint(),
        "time_budget": int(time_budget) if float(time_budget).is_integer() else time_budget,
        "eval_tokens": EVAL_TOKENS if val_bpb is not None else None,
    }
    print("summary_json: " + json.dumps(summary), flush=True)
