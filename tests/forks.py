"""Upstream-shaped autoresearch forks written by the tests (the shape of the public MLX port).

prepare.py holds the constants (MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS), the cache paths under
~/.cache/autoresearch (DATA_DIR with numbered shards, the pinned validation shard VAL_FILENAME,
TOKENIZER_DIR) and Tokenizer / make_dataloader / evaluate_bpb; `python prepare.py` writes the
cache (synthetic text, no network). train.py imports them, seeds with a hard-coded
`mx.random.seed(42)`, trains a very small MLX model until TIME_BUDGET seconds of training
elapsed and prints upstream's summary block. Neither takes a flag.

    write_mlx_fork(path, budget_line="TIME_BUDGET = 300")  -> path (a git repo with one commit)
"""

import subprocess
import sys
from pathlib import Path

from synthetic import git

PREPARE = '''"""One-time data preparation for a tiny autoresearch fork (written by the swarm's tests).

Usage: python prepare.py    (writes the cache under ~/.cache/autoresearch/)
"""

import json
import math
import os
import random

import mlx.core as mx
import numpy as np

# ---------------------------------------------------------------------------
# Constants (fixed, do not modify)
# ---------------------------------------------------------------------------

MAX_SEQ_LEN = 32
{budget_line}
EVAL_TOKENS = 4 * 8 * 32

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
DATA_DIR = os.path.join(CACHE_DIR, "data")
TOKENIZER_DIR = os.path.join(CACHE_DIR, "tokenizer")
NUM_SHARDS = 3
VAL_SHARD = NUM_SHARDS
VAL_FILENAME = f"shard_{{VAL_SHARD:05d}}.txt"
WORDS = "the a cat dog sat ran on under mat tree big small red blue and then".split()


class Tokenizer:
    """Bytes as tokens (vocabulary: 256)."""

    @classmethod
    def from_directory(cls, tokenizer_dir=TOKENIZER_DIR):
        with open(os.path.join(tokenizer_dir, "vocab.json")) as f:
            assert json.load(f)["vocab_size"] == 256
        return cls()

    def get_vocab_size(self):
        return 256

    def encode(self, text):
        return list(text.encode())


def _tokens(split):
    names = sorted(os.listdir(DATA_DIR))
    names = [n for n in names if n != VAL_FILENAME] if split == "train" else [VAL_FILENAME]
    data = b"".join(open(os.path.join(DATA_DIR, n), "rb").read() for n in names)
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)


def make_dataloader(tokenizer, batch_size, seq_len, split):
    tokens = _tokens(split)
    pos = 0
    while True:
        rows = []
        for _ in range(batch_size):
            if pos + seq_len + 1 > len(tokens):
                pos = 0
            rows.append(tokens[pos:pos + seq_len + 1])
            pos += seq_len
        rows = mx.array(np.stack(rows))
        yield rows[:, :-1], rows[:, 1:]


def evaluate_bpb(model, tokenizer, batch_size):
    loader = make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, "val")
    steps = EVAL_TOKENS // (batch_size * MAX_SEQ_LEN)
    nats, nbytes = 0.0, 0
    for _ in range(steps):
        x, y = next(loader)
        nats += mx.sum(model(x, y, reduction="none")).item()
        nbytes += y.size                      # one byte per token
    return nats / (math.log(2) * nbytes)


if __name__ == "__main__":
    os.makedirs(DATA_DIR, exist_ok=True)
    os.makedirs(TOKENIZER_DIR, exist_ok=True)
    rng = random.Random(0)
    for i in range(NUM_SHARDS + 1):
        text = " ".join(rng.choice(WORDS) for _ in range(4000)) + "\\n"
        with open(os.path.join(DATA_DIR, f"shard_{{i:05d}}.txt"), "w") as f:
            f.write(text)
    with open(os.path.join(TOKENIZER_DIR, "vocab.json"), "w") as f:
        json.dump({{"vocab_size": 256}}, f)
    print(f"Cache directory: {{CACHE_DIR}}")
'''

TRAIN = '''"""A tiny GPT-shaped model trained for TIME_BUDGET seconds (a fork written by the swarm's tests)."""

import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader

MATRIX_LR = 0.01           # learning rate of the model
DEVICE_BATCH_SIZE = 8      # sequences per step
N_EMBD = 32                # model width

mx.random.seed(42)


class Model(nn.Module):
    def __init__(self, vocab, n_embd):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.mlp = nn.Linear(n_embd, n_embd)
        self.head = nn.Linear(n_embd, vocab)

    def __call__(self, x, y=None, reduction="mean"):
        logits = self.head(nn.relu(self.mlp(self.wte(x))))
        if y is None:
            return logits
        return nn.losses.cross_entropy(logits, y, reduction=reduction)


tokenizer = Tokenizer.from_directory()
model = Model(tokenizer.get_vocab_size(), N_EMBD)
optimizer = optim.Adam(learning_rate=MATRIX_LR)
loss_and_grad = nn.value_and_grad(model, lambda m, x, y: m(x, y))
loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")

t0 = time.time()
step = 0
while time.time() - t0 < TIME_BUDGET:
    x, y = next(loader)
    loss, grads = loss_and_grad(model, x, y)
    optimizer.update(model, grads)
    mx.eval(model.parameters(), optimizer.state)
    if step == 0:
        print(f"step 00000 | loss: {loss.item():.6f}")
    step += 1
training_seconds = time.time() - t0

val_bpb = evaluate_bpb(model, tokenizer, DEVICE_BATCH_SIZE)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {training_seconds:.1f}")
print(f"num_steps:        {step}")
'''

PROGRAM = "# program.md\nImprove val_bpb by editing train.py only.\n"


def write_mlx_fork(path, budget_line: str = "TIME_BUDGET = 300") -> Path:
    """An upstream-shaped MLX fork in `path`, committed (prepare.py, train.py, program.md)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "prepare.py").write_text(PREPARE.format(budget_line=budget_line))
    (path / "train.py").write_text(TRAIN)
    (path / "program.md").write_text(PROGRAM)
    git(path, "init", "-q", "-b", "master")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "the fork")
    return path


def prepare_fork(path, env: dict) -> None:
    """Run the fork's own `python prepare.py` (writes ~/.cache/autoresearch under env's HOME)."""
    r = subprocess.run([sys.executable, "prepare.py"], cwd=path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
