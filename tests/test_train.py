"""
train.py on the CPU backend with the tiny profile: real short training runs as subprocesses (the way
the worker runs it), plus in-process checks of the model's loss and the optimizer's groups. The runs
train a copy of train.py with a cheap step (tests/fast_train.py): many steps in a few seconds, where
the defaults take a minute a step on a loaded 2-core machine.
"""

import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fast_train import FAST, fast

REPO_ROOT = Path(__file__).resolve().parent.parent
EVAL_TOKENS = 4096  # smoke-sized eval (AUTORESEARCH_EVAL_TOKENS): 16 rows of 256 tokens
SUMMARY_KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth", "profile"]
JSON_KEYS = SUMMARY_KEYS + ["seed", "backend", "dtype", "data_fingerprint", "time_budget", "eval_tokens"]
STEP_LINE = re.compile(r"^step (\d{5}) \((\d+\.\d)%\) \| loss: (\d+\.\d{6}) \| lrm: (\d+\.\d\d) \| dt: (\d+)ms \| "
                       r"tok/sec: ([\d,]+) \| mfu: (\d+\.\d)% \| epoch: (\d+) \| remaining: (\d+)s$")


class Run:
    """One finished train.py subprocess, parsed."""

    def __init__(self, proc):
        self.rc, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        lines = self.stdout.splitlines()
        self.steps = [dict(step=int(m[1]), loss=float(m[3]), dt=int(m[5]) / 1000)
                      for m in map(STEP_LINE.match, lines) if m]
        self.block, self.json = {}, None
        if "---" in lines:
            for line in lines[lines.index("---") + 1:]:
                if line.startswith("summary_json: "):
                    self.json = json.loads(line[len("summary_json: "):])
                elif ":" in line:
                    key, value = line.split(":", 1)
                    self.block[key] = value.strip()

    def __str__(self):  # shown when an assertion fails
        return f"exit {self.rc}\n--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"


def run_train(tiny_data, *args, cwd=REPO_ROOT, timeout=600):
    env = {**os.environ, **tiny_data.env, "AUTORESEARCH_EVAL_TOKENS": str(EVAL_TOKENS)}
    proc = subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return Run(proc)


@pytest.fixture(scope="module")
def fast_dir(tmp_path_factory):
    """train.py with a cheap step, beside the fixed prepare.py and evaluate.py."""
    d = tmp_path_factory.mktemp("fast")
    (d / "train.py").write_text(fast((REPO_ROOT / "train.py").read_text()))
    for name in ("prepare.py", "evaluate.py"):
        shutil.copy(REPO_ROOT / name, d / name)
    return d


@pytest.fixture(scope="module")
def run_seed0(tiny_data, fast_dir):
    return run_train(tiny_data, "--seed", 0, "--time-budget", 8, cwd=fast_dir)


@pytest.fixture(scope="module")
def run_seed0_short(tiny_data, fast_dir):
    return run_train(tiny_data, "--seed", 0, "--time-budget", 2, cwd=fast_dir)


@pytest.fixture(scope="module")
def run_seed1_short(tiny_data, fast_dir):
    return run_train(tiny_data, "--seed", 1, "--time-budget", 2, cwd=fast_dir)

# ---------------------------------------------------------------------------
# Training runs (subprocess)
# ---------------------------------------------------------------------------

def test_tiny_run_learns_and_reports_summary(run_seed0, tiny_data):
    r = run_seed0
    assert r.rc == 0, r
    # loss falls: the first step's loss is ln(vocab) (lm_head starts near zero); the smoothed loss drops
    assert len(r.steps) >= 2, r
    assert abs(r.steps[0]["loss"] - math.log(2048)) < 0.05, r
    assert r.steps[-1]["loss"] < r.steps[0]["loss"] - 0.1, r
    # the upstream summary block, in order, then summary_json with the extra fields
    assert list(r.block) == SUMMARY_KEYS, r
    assert r.block["profile"] == "tiny" and r.block["depth"] == FAST["DEPTH"], r
    assert r.json is not None and set(r.json) == set(JSON_KEYS), r
    s = r.json
    assert math.isfinite(s["val_bpb"]) and 0 < s["val_bpb"] < 10, r
    assert abs(float(r.block["val_bpb"]) - s["val_bpb"]) < 1e-6
    assert s["profile"] == "tiny" and s["seed"] == 0 and s["backend"] == "cpu" and s["dtype"] == "float32"
    assert s["time_budget"] == 8 and s["eval_tokens"] == EVAL_TOKENS
    fingerprint = json.loads((tiny_data.cache_dir / "fingerprint.json").read_text())["fingerprint"]
    assert s["data_fingerprint"] == fingerprint
    assert s["num_steps"] == int(r.block["num_steps"]) == r.steps[-1]["step"] + 1
    assert s["total_tokens_M"] > 0 and s["num_params_M"] > 0 and s["mfu_percent"] > 0 and s["peak_vram_mb"] > 0
    assert s["total_seconds"] > s["training_seconds"]


@pytest.mark.parametrize("which", ["run_seed0", "run_seed0_short"])
def test_budget_respected(which, request):
    """Training time counts every step but the first; it stops at the first step past the budget."""
    r = request.getfixturevalue(which)
    assert r.rc == 0, r
    budget = r.json["time_budget"]
    assert r.json["num_steps"] > 1, r
    last_dt = r.steps[-1]["dt"]  # the final step's progress line is always printed
    assert budget <= r.json["training_seconds"] < budget + last_dt + 0.5, r


def test_seed_sets_init_and_data_order(run_seed0, run_seed0_short, run_seed1_short):
    for r in (run_seed0, run_seed0_short, run_seed1_short):
        assert r.rc == 0, r
    # same seed: the same first-step loss to all printed digits (same init, same first batch)
    assert run_seed0.steps[0]["loss"] == run_seed0_short.steps[0]["loss"]
    # another seed: another first-step loss and another result
    assert run_seed1_short.steps[0]["loss"] != run_seed0_short.steps[0]["loss"]
    assert run_seed1_short.json["seed"] == 1
    assert run_seed1_short.json["val_bpb"] != run_seed0_short.json["val_bpb"]


def _edited_copy(tmp_path, replacements):
    """A copy of train.py with constants edited the way an agent does, next to a copy of prepare.py."""
    text = (REPO_ROOT / "train.py").read_text()
    for pattern, value in replacements.items():
        text, n = re.subn(rf"^{pattern} = [^#\n]*", f"{pattern} = {value}", text, flags=re.M)
        assert n == 1, f"{pattern} not found exactly once in train.py"
    (tmp_path / "train.py").write_text(text)
    shutil.copy(REPO_ROOT / "prepare.py", tmp_path / "prepare.py")
    return tmp_path


@pytest.mark.parametrize("lrs", [
    dict(EMBEDDING_LR="6000.0", UNEMBEDDING_LR="400.0", MATRIX_LR="40.0"),  # exploding loss
    dict(MATRIX_LR="float('nan')"),                                            # NaN
], ids=["huge_lr", "nan_lr"])
def test_divergence_fails_fast_with_exit_3(lrs, tmp_path, tiny_data):
    workdir = _edited_copy(tmp_path, {**lrs, "TOTAL_BATCH_SIZE": "2**11"})
    r = run_train(tiny_data, "--time-budget", 30, cwd=workdir)
    assert r.rc == 3, r
    errors = [line for line in r.stdout.splitlines() if line.startswith("error: divergence:")]
    assert len(errors) == 1, r
    assert "---" not in r.stdout.splitlines(), r  # no summary: the worker classifies it as nan
    assert len(r.steps) <= 3, r  # it failed fast, long before the 30 s budget

# ---------------------------------------------------------------------------
# Model and optimizer (in process; small shapes, so no BLAS is needed)
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_module(prepare_module):
    import train
    return importlib.reload(train)


@pytest.fixture
def small_model(train_module):
    import mlx.core as mx
    mx.random.seed(0)
    model = train_module.GPT(train_module.build_model_config(depth=3, vocab_size=64, sequence_len=32))
    model.init_weights()
    return model


def test_per_token_loss_semantics(small_model):
    import mlx.core as mx
    model = small_model
    # a non-trivial output layer (the init is near zero) so the per-token losses differ
    model.lm_head.weight = 0.5 * mx.random.normal(model.lm_head.weight.shape)
    x = mx.random.randint(0, 64, (3, 32))
    y = mx.random.randint(0, 64, (3, 32))
    y[0, :5] = -1  # ignored targets
    per_token = model(x, y, reduction="none")
    assert per_token.shape == (3, 32) and per_token.dtype == mx.float32
    logits = model(x)
    assert logits.shape == (3, 32, 64) and mx.abs(logits).max().item() <= 15.0  # soft-capped
    # nats: logsumexp - logit of the target, 0 where the target is ignored
    ref = mx.logsumexp(logits, axis=-1) - mx.take_along_axis(logits, mx.maximum(y, 0)[..., None], axis=-1)[..., 0]
    ref = mx.where(y == -1, 0.0, ref)
    assert mx.allclose(per_token, ref, atol=1e-4).item()
    assert (per_token[0, :5] == 0).all().item() and (per_token[0, 5:] > 0).all().item()
    mean = model(x, y)  # default reduction: mean over the valid targets
    assert mean.shape == () and abs(mean.item() - per_token.sum().item() / (3 * 32 - 5)) < 1e-4
    # causal: changing the last input token changes no earlier position's loss
    x2 = mx.array(x)
    x2[:, -1] = (x[:, -1] + 1) % 64
    per_token2 = model(x2, y, reduction="none")
    assert mx.allclose(per_token[:, :-1], per_token2[:, :-1], atol=1e-5).item()
    assert not mx.allclose(per_token[:, -1], per_token2[:, -1]).item()


def test_muon_gets_exactly_the_block_matrices(train_module, small_model):
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    model = small_model
    optimizer = model.setup_optimizer()
    assert isinstance(optimizer, optim.MultiOptimizer)
    optimizer.init(model.trainable_parameters())

    def owned(opt):  # parameter paths this optimizer keeps state for ("...weight.v" -> "...weight")
        paths = {path for path, _ in tree_flatten(opt.state) if path not in ("step", "learning_rate")}
        return {path.rsplit(".", 1)[0] for path in paths}

    groups = {opt.name: owned(opt) for opt in optimizer.optimizers}
    muon = optimizer.optimizers[0]
    assert muon.name == "muon" and isinstance(muon, optim.Muon)
    expected = set()
    for i, block in enumerate(model.blocks):
        names = ["attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
        names += ["attn.ve_gate"] if block.attn.ve_gate is not None else []
        expected |= {f"blocks.{i}.{name}.weight" for name in names}
    assert groups["muon"] == expected
    params = dict(tree_flatten(model.trainable_parameters()))
    assert all(params[p].ndim == 2 for p in groups["muon"])
    # the rest go to AdamW, one group each, every parameter exactly once
    assert all(isinstance(o, optim.AdamW) for o in optimizer.optimizers[1:])
    assert groups["lm_head"] == {"lm_head.weight"} and groups["wte"] == {"wte.weight"}
    assert groups["value_embeds"] == {f"value_embeds.{k}.weight" for k in model.value_embeds}
    assert groups["resid_lambdas"] == {"resid_lambdas"} and groups["x0_lambdas"] == {"x0_lambdas"}
    assert sum(len(g) for g in groups.values()) == len(params) == len(set().union(*groups.values()))
    # value embeddings: alternating layers, the last one included (upstream has_ve)
    assert sorted(model.value_embeds) == ["layer0", "layer2"]


def test_cautious_weight_decay(train_module):
    """Muon's decoupled weight decay shrinks a weight only where the update pushes it toward zero."""
    import mlx.core as mx
    mx.random.seed(1)
    w, g = mx.random.normal((8, 4)), mx.random.normal((8, 4))
    plain = train_module.CautiousMuon(0.1, weight_decay=0.0)
    decayed = train_module.CautiousMuon(0.1, weight_decay=0.5)
    new_plain = plain.apply_gradients({"w": g}, {"w": w})["w"]
    new_decayed = decayed.apply_gradients({"w": g}, {"w": w})["w"]
    same_sign = ((w - new_plain) * w) >= 0
    assert 0 < same_sign.sum().item() < w.size
    lr = 0.1 * max(1, 8 / 4) ** 0.5  # Muon's learning rate for a tall matrix
    assert mx.allclose(new_decayed, new_plain - lr * 0.5 * w * same_sign, atol=1e-6).item()


def test_schedules(train_module):
    t = train_module
    assert t.get_lr_multiplier(0.0) == (1.0 if t.WARMUP_RATIO == 0 else 0.0)
    assert abs(t.get_lr_multiplier(1.0) - t.FINAL_LR_FRAC) < 1e-9
    assert t.get_muon_momentum(0) == pytest.approx(0.85) and t.get_muon_momentum(10_000) == pytest.approx(0.95)
    assert t.get_weight_decay(0.0) == t.WEIGHT_DECAY and t.get_weight_decay(1.0) == 0.0


def test_checkpoint_mode_saves_on_sigterm_and_the_evaluator_scores_it(tiny_data, fast_dir, tmp_path):
    """Under the worker: --checkpoint saves the model instead of evaluating; SIGTERM (the worker's clock)
    ends training at the next step, and the model is still saved; evaluate.py then scores it."""
    import signal
    import time
    ck = tmp_path / "ck"
    env = {**os.environ, **tiny_data.env, "AUTORESEARCH_EVAL_TOKENS": str(EVAL_TOKENS)}
    proc = subprocess.Popen([sys.executable, "train.py", "--seed", "0", "--time-budget", "3600", "--checkpoint",
                             str(ck)], cwd=fast_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    deadline = time.monotonic() + 600
    for line in proc.stdout:             # wait for the first step, whatever the machine's speed
        lines.append(line)
        if line.startswith("step 00000") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    r = Run(subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + out, ""))
    assert r.rc == 0, r
    assert "val_bpb" not in r.block and r.block["checkpoint"] == str(ck), r
    assert r.json["val_bpb"] is None and r.json["num_steps"] < 10, r
    meta = json.loads((ck / "model.json").read_text())
    assert meta["config"]["n_layer"] == int(FAST["DEPTH"]) and meta["seed"] == 0 and (ck / "model.safetensors").stat().st_size > 0

    e = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", str(ck), "--result", str(tmp_path / "r.json")],
                       cwd=fast_dir, env=env, capture_output=True, text=True, timeout=600)
    assert e.returncode == 0, e.stdout + e.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["split"] == "val" and record["tokens"] == EVAL_TOKENS and 0 < record["bpb"] < 20
    assert record["probe"]["max_change"] <= record["probe"]["tolerance"]
    assert f"val_bpb: {record['bpb']:.6f}" in e.stdout
    # the record is written once: a second evaluation into the same file fails instead of overwriting
    again = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", str(ck), "--result",
                            str(tmp_path / "r.json")], cwd=fast_dir, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode != 0 and "FileExistsError" in again.stderr
