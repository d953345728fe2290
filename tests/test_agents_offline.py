"""
Tests of agents/constant_rewriter.py (read/rewrite train.py constants), agents/base.py
(keys) and agents/offline.py (the offline proposer + implementer).
"""

import ast
from pathlib import Path

import pytest

from agents.base import (
    Hypothesis,
    ImplementationError,
    Implementer,
    Proposer,
    ResearchContext,
)
from core.keys import hypothesis_key, params_key
from agents.constant_rewriter import ConstantsError, constant_values, read_constants, rewrite_constants
from agents.knobs import KNOBS
from agents.offline import OfflineImplementer, OfflineProposer

ROOT = Path(__file__).resolve().parents[1]

# A train.py in the style of karpathy/autoresearch: code, then a hyperparameter
# block with a comment at the end of each line, then the training script.
TRAIN_PY = '''\
"""
Autoresearch pretraining script. Single-device, single-file.
Usage: uv run train.py
"""

import os
import time
from dataclasses import dataclass

os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
T_IMPORT = time.time()


@dataclass
class GPTConfig:
    n_layer: int = 12
    window_pattern: str = "SSSL"


def norm(x):
    LOCAL_CONSTANT = 3  # a function local, not a module constant
    return x * LOCAL_CONSTANT


# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly, no CLI flags needed)
# ---------------------------------------------------------------------------

# Model architecture
ASPECT_RATIO = 64       # model_dim = depth * ASPECT_RATIO
HEAD_DIM = 128          # target head dimension for attention
WINDOW_PATTERN = "SSSL" # sliding window pattern: L=full, S=half context — café

# Optimization
TOTAL_BATCH_SIZE = 2**16 # ~65K tokens per optimizer step
EMBEDDING_LR = 0.6      # learning rate for token embeddings (Adam)
UNEMBEDDING_LR = 0.004  # learning rate for lm_head (Adam)
MATRIX_LR = 0.04        # learning rate for matrix parameters
SCALAR_LR = 0.5         # learning rate for scalars (resid_lambdas, x0_lambdas)
WEIGHT_DECAY = 0.2      # cautious weight decay
ADAM_BETAS = (0.8, 0.95) # Adam beta1, beta2
WARMUP_RATIO = 0.0      # fraction of time budget for LR warmup
WARMDOWN_RATIO = 0.5    # fraction of time budget for LR warmdown
FINAL_LR_FRAC = 0.0     # final LR as fraction of initial
EPS: float = 1e-10      # Adam epsilon (annotated)
SOFTCAP = -15.0         # negative literal, never perturbed (no knob)

# Model size
DEPTH = 4               # number of transformer layers
DEVICE_BATCH_SIZE = 16  # per-device batch size (reduce if OOM)
SHAPE = (
    4,  # rows
    8,  # cols
)
RUN_NAME = "naïve"; USE_VE = True  # two statements on one line
COUNTER = 0
COUNTER += 1            # rebound: not a constant
A = B = 3               # chained: not editable


def get_lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO if WARMUP_RATIO > 0 else 1.0
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown * 1.0 + (1 - cooldown) * FINAL_LR_FRAC


if __name__ == "__main__":
    model_dim = DEPTH * ASPECT_RATIO
    tokens_per_fwdbwd = DEVICE_BATCH_SIZE * 256
    assert TOTAL_BATCH_SIZE % tokens_per_fwdbwd == 0
    print(model_dim, MATRIX_LR, ADAM_BETAS, WINDOW_PATTERN)
'''

EXPECTED = {
    "ASPECT_RATIO": 64, "HEAD_DIM": 128, "WINDOW_PATTERN": "SSSL", "TOTAL_BATCH_SIZE": 65536,
    "EMBEDDING_LR": 0.6, "UNEMBEDDING_LR": 0.004, "MATRIX_LR": 0.04, "SCALAR_LR": 0.5,
    "WEIGHT_DECAY": 0.2, "ADAM_BETAS": (0.8, 0.95), "WARMUP_RATIO": 0.0, "WARMDOWN_RATIO": 0.5,
    "FINAL_LR_FRAC": 0.0, "EPS": 1e-10, "SOFTCAP": -15.0, "DEPTH": 4, "DEVICE_BATCH_SIZE": 16,
    "SHAPE": (4, 8), "RUN_NAME": "naïve", "USE_VE": True,
}

# Small file for exhaustion tests: MATRIX_LR has 4 candidate values, DEPTH 4 (2, 3, 5, 6).
SMALL_PY = "MATRIX_LR = 0.04  # lr\nDEPTH = 4  # layers\nprint(MATRIX_LR, DEPTH)\n"
SMALL_SPACE = 8


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b), "rewrite must not add or remove lines"
    return [(x, y) for x, y in zip(a, b) if x != y]


def ctx_for(text=TRAIN_PY, mainline="m1", history=(), noise_floor=None):
    return ResearchContext(track="cpu/tiny/60s/abc", mainline_commit=mainline, program_md="",
                           files={"train.py": text}, history=list(history), noise_floor=noise_floor)


def judged(h: Hypothesis, verdict="discard", mainline=None, effect_sigma=None):
    return {"title": h.title, "params": h.params, "verdict": verdict, "effect_bpb": None,
            "effect_sigma": effect_sigma, "mainline_commit": mainline or h.mainline_commit, "trials": 1}


def summary(hs):
    return [(h.hypothesis_id, h.title, h.params, h.risk, h.expected_effect) for h in hs]


# ---------------------------------------------------------------------------
# constants.py
# ---------------------------------------------------------------------------


def test_read_constants_finds_exactly_the_module_level_literals():
    assert constant_values(TRAIN_PY) == EXPECTED
    # not constants: function locals, dataclass fields, non-literals, rebound and chained names
    for name in ("LOCAL_CONSTANT", "n_layer", "T_IMPORT", "COUNTER", "A", "B", "model_dim"):
        assert name not in EXPECTED
    c = read_constants(TRAIN_PY)["TOTAL_BATCH_SIZE"]
    assert c.source == "2**16" and TRAIN_PY[c.start:c.end] == "2**16"


def test_rewrite_keeps_comments_and_every_other_line_byte_identical():
    new = rewrite_constants(TRAIN_PY, {"MATRIX_LR": 0.06, "WINDOW_PATTERN": "L", "DEPTH": 6})
    assert changed_lines(TRAIN_PY, new) == [
        ('WINDOW_PATTERN = "SSSL" # sliding window pattern: L=full, S=half context — café\n',
         'WINDOW_PATTERN = "L" # sliding window pattern: L=full, S=half context — café\n'),
        ("MATRIX_LR = 0.04        # learning rate for matrix parameters\n",
         "MATRIX_LR = 0.06        # learning rate for matrix parameters\n"),
        ("DEPTH = 4               # number of transformer layers\n",
         "DEPTH = 6               # number of transformer layers\n"),
    ]


def test_rewrite_round_trip_all_constants():
    new_values = {
        "ASPECT_RATIO": 96, "HEAD_DIM": 64, "WINDOW_PATTERN": "SSSSSSSL", "TOTAL_BATCH_SIZE": 2**14,
        "EMBEDDING_LR": 1.2, "UNEMBEDDING_LR": 0.008, "MATRIX_LR": 0.056, "SCALAR_LR": 0.25,
        "WEIGHT_DECAY": 0.0, "ADAM_BETAS": (0.9, 0.975), "WARMUP_RATIO": 0.2, "WARMDOWN_RATIO": 1.0,
        "FINAL_LR_FRAC": 0.1, "EPS": 5e-9, "SOFTCAP": -30.0, "DEPTH": 3, "DEVICE_BATCH_SIZE": 8,
        "SHAPE": (2, 16), "RUN_NAME": "b'quote", "USE_VE": False,
    }
    new = rewrite_constants(TRAIN_PY, new_values)
    assert constant_values(new) == new_values
    compile(new, "train.py", "exec")
    # the style of each value is kept
    assert "TOTAL_BATCH_SIZE = 2**14 # ~65K tokens" in new
    assert "EPS: float = 5e-9      # Adam epsilon" in new
    assert 'WINDOW_PATTERN = "SSSSSSSL" #' in new
    assert "ADAM_BETAS = (0.9, 0.975) # Adam beta1" in new
    assert "RUN_NAME = \"b'quote\"; USE_VE = False  # two statements" in new
    # and writing the old values back gives the original file, byte for byte
    assert rewrite_constants(new, EXPECTED) == TRAIN_PY
    # writing the current values changes nothing
    assert rewrite_constants(TRAIN_PY, EXPECTED) == TRAIN_PY


def test_rewrite_multiline_value_and_crlf_and_coercions():
    new = rewrite_constants(TRAIN_PY, {"SHAPE": [5, 6.0]})  # list for a tuple, integral float for an int
    assert constant_values(new)["SHAPE"] == (5, 6)
    assert "SHAPE = (\n    5,  # rows\n    6,  # cols\n)\nRUN_NAME" in new  # layout and comments kept
    crlf = TRAIN_PY.replace("\n", "\r\n")
    new = rewrite_constants(crlf, {"MATRIX_LR": 0.06, "WARMUP_RATIO": 1})  # int for a float constant
    assert new == crlf.replace("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.06 ").replace("WARMUP_RATIO = 0.0 ", "WARMUP_RATIO = 1.0 ")


@pytest.mark.parametrize("changes, message", [
    ({"NOT_THERE": 1}, "NOT_THERE is not a module-level constant of train.py; editable constants: ASPECT_RATIO"),
    ({"COUNTER": 2}, "COUNTER in train.py cannot be edited: bound 2 times at module level (lines"),
    ({"T_IMPORT": 2}, "T_IMPORT in train.py cannot be edited: its value on line 11 is not a literal"),
    ({"A": 2}, "A in train.py cannot be edited: chained assignment"),
    ({"MATRIX_LR": "0.06"}, "MATRIX_LR is float 0.04 in the file; got str '0.06': give a float"),
    ({"DEPTH": 4.5}, "DEPTH is int 4 in the file; got a fractional float 4.5"),
    ({"DEPTH": True}, "DEPTH is int 4 in the file; got bool True"),
    ({"ADAM_BETAS": (0.9, 0.95, 0.99)}, "ADAM_BETAS is tuple (0.8, 0.95) in the file with 2 elements; got 3"),
    ({"WINDOW_PATTERN": 3}, "WINDOW_PATTERN is str 'SSSL' in the file; got int 3: give a str"),
    ({"MATRIX_LR": float("nan")}, "MATRIX_LR: nan is not a finite number"),
])
def test_rewrite_refuses_bad_changes_with_clear_messages(changes, message):
    with pytest.raises(ConstantsError) as e:
        rewrite_constants(TRAIN_PY, {"DEPTH": 5, **changes})
    assert message in str(e.value)


def test_names_rebound_through_global_are_not_editable():
    text = "LR = 0.1\n\ndef bump():\n    global LR\n    LR = 2 * LR\n"
    assert constant_values(text) == {}
    with pytest.raises(ConstantsError, match=r"LR in train.py cannot be edited: declared global in a function \(line 4\)"):
        rewrite_constants(text, {"LR": 0.2})


def test_unparsable_file_is_reported():
    with pytest.raises(ConstantsError, match=r"train.py does not parse: .*line 2"):
        read_constants("X = 1\nY = (\n")


@pytest.mark.skipif(not (ROOT / "train.py").exists(), reason="train.py not written yet")
def test_round_trip_on_the_real_train_py():
    text = (ROOT / "train.py").read_text(encoding="utf-8")
    values = constant_values(text)
    assert values, "train.py has no editable constants"
    assert rewrite_constants(text, values) == text
    # perturb every knob the offline agent knows through its first step, and back
    ctx = ctx_for(text)
    hs = OfflineProposer(seed=0, combine_prob=0).propose(ctx, 100)
    first_step = {}
    for h in hs:
        if h.params:
            first_step.setdefault(next(iter(h.params)), h)
    one_per_knob = first_step.values()
    assert len(one_per_knob) >= 10, "the offline agent should find most knobs in train.py"
    for h in one_per_knob:
        new = rewrite_constants(text, h.params)
        compile(new, "train.py", "exec")
        assert len(changed_lines(text, new)) == 1
        assert rewrite_constants(new, {k: values[k] for k in h.params}) == text


# ---------------------------------------------------------------------------
# base.py keys
# ---------------------------------------------------------------------------


def test_keys_ignore_float_noise_and_container_types_but_not_values():
    assert params_key({"A": 0.06, "B": 4}) == params_key({"B": 4.0, "A": 0.060000000001})
    assert params_key({"ADAM_BETAS": (0.8, 0.95)}) == params_key({"ADAM_BETAS": [0.8, 0.95]})
    assert params_key({"A": 0.06}) != params_key({"A": 0.061})
    assert params_key({"A": 0.06}) != params_key({"A": 0.06, "B": 1})
    h = Hypothesis("id1", "MATRIX_LR 0.04 -> 0.06", "r", "-0.01 bpb", "low", "x", params={"MATRIX_LR": 0.06})
    assert hypothesis_key(h) == hypothesis_key({"title": "anything", "params": {"MATRIX_LR": 0.06}})
    # without params the normalized title decides
    assert hypothesis_key({"title": "Use SiLU  instead of ReLU²."}) == hypothesis_key({"title": "use silu instead of relu²"})
    assert hypothesis_key({"title": "lr 0.060"}) == hypothesis_key({"title": "LR 0.06"})
    assert hypothesis_key({"title": "lr 0.06"}) != hypothesis_key({"title": "lr 0.07"})
    assert Hypothesis.from_dict({**h.to_dict(), "extra": 1}) == h


# ---------------------------------------------------------------------------
# OfflineProposer
# ---------------------------------------------------------------------------


def test_offline_agents_implement_the_interface():
    assert isinstance(OfflineProposer(), Proposer) and isinstance(OfflineImplementer(), Implementer)


def test_hypotheses_are_well_formed():
    ctx = ctx_for(noise_floor=0.02)
    hs = OfflineProposer(seed=1).propose(ctx, 12)
    assert len(hs) == 12
    values = constant_values(TRAIN_PY)
    for h in hs:
        assert h.agent == "offline" and h.track == ctx.track and h.mainline_commit == "m1"
        assert h.risk in ("low", "medium", "high") and h.patch is None
        assert len(h.params) == 1
        (name, value), = h.params.items()
        assert name in KNOBS and value != values[name]
        old = read_constants(TRAIN_PY)[name].source
        assert h.title.startswith(f"{name} {old} -> ")
        assert h.expected_effect in ("-0.010 bpb (~0.5 sigma of the noise floor 0.02)",
                                     "-0.005 bpb (~0.2 sigma of the noise floor 0.02)")
        assert name in h.rationale and len(h.hypothesis_id) == 32
    assert len({h.hypothesis_id for h in hs}) == 12
    assert len({h.title for h in hs}) == 12
    # one batch spreads over several knobs
    assert len({next(iter(h.params)) for h in hs}) >= 6


def test_titles_and_rationale_for_a_favoured_step():
    hs = OfflineProposer(seed=0, combine_prob=0).propose(ctx_for(), 200)
    by_title = {h.title: h for h in hs}
    h = by_title["MATRIX_LR 0.04 -> 0.056"]
    assert h.params == {"MATRIX_LR": 0.056} and h.risk == "low" and h.expected_effect == "-0.010 bpb"
    assert "higher learning rates across groups kept winning" in h.rationale
    assert by_title["TOTAL_BATCH_SIZE 2**16 -> 2**15"].params == {"TOTAL_BATCH_SIZE": 32768}
    assert by_title['WINDOW_PATTERN "SSSL" -> "SSSSSSSL"'].params == {"WINDOW_PATTERN": "SSSSSSSL"}
    assert by_title["ADAM_BETAS (0.8, 0.95) -> (0.9, 0.95)"].params == {"ADAM_BETAS": (0.9, 0.95)}
    assert "WARMUP_RATIO 0.0 -> 0.2" in by_title
    assert not any(t.startswith(("EPS", "SOFTCAP", "SHAPE", "RUN_NAME")) for t in by_title)


def test_deterministic_for_a_seed_and_context():
    ctx = ctx_for()
    a = OfflineProposer(seed=7).propose(ctx, 5)
    b = OfflineProposer(seed=7).propose(ctx, 5)
    assert summary(a) == summary(b)
    c = OfflineProposer(seed=8).propose(ctx, 5)
    assert summary(a) != summary(c)


def test_priors_weight_the_favoured_direction_without_forbidding_the_other():
    up = down = 0
    for seed in range(300):
        for h in OfflineProposer(seed=seed, combine_prob=0).propose(ctx_for(), 3):
            if "MATRIX_LR" in h.params:
                up += h.params["MATRIX_LR"] > 0.04
                down += h.params["MATRIX_LR"] < 0.04
    assert down > 0 and up > 1.5 * down


def test_never_repeats_what_was_judged_on_the_same_mainline_and_exhausts():
    history, seen = [], set()
    proposer = OfflineProposer(seed=3, combine_prob=0)
    for verdict in ["discard", "crash", "invalid", "promising", "confirmed", "discard", "discard", "discard"]:
        # a fresh proposer each round: the journal's history alone must prevent repeats
        (h,) = OfflineProposer(seed=3, combine_prob=0).propose(ctx_for(SMALL_PY, history=history), 1)
        assert hypothesis_key(h) not in seen
        seen.add(hypothesis_key(h))
        history.append(judged(h, verdict))
    assert len(seen) == SMALL_SPACE
    # the coarse space is exhausted: finer steps around the current values, never a repeat
    finer = proposer.propose(ctx_for(SMALL_PY, history=history), 5)
    assert len(finer) == 5 and not {hypothesis_key(h) for h in finer} & seen
    assert all("finer step" in h.rationale for h in finer)


def test_coarse_space_first_and_remembers_its_own():
    proposer = OfflineProposer(seed=0, combine_prob=0)
    ctx = ctx_for(SMALL_PY)
    first = proposer.propose(ctx, 5)
    rest = proposer.propose(ctx, SMALL_SPACE - 5)  # same context, history not updated yet: no repeats
    assert len(first) == 5 and len(rest) == SMALL_SPACE - 5
    keys = [hypothesis_key(h) for h in first + rest]
    assert len(set(keys)) == SMALL_SPACE
    more = proposer.propose(ctx, 3)                 # finer steps then, still never a repeat
    assert len(more) == 3 and not {hypothesis_key(h) for h in more} & set(keys)


def test_earlier_losers_come_back_after_the_mainline_moves():
    history = []
    for h in OfflineProposer(seed=0, combine_prob=0).propose(ctx_for(SMALL_PY, "m1"), SMALL_SPACE):
        history.append(judged(h, "discard"))
    assert len(history) == SMALL_SPACE
    # the mainline moved (DEPTH 4 -> 3 was merged): old values are eligible again,
    # except the new current value; the retry says so
    moved = SMALL_PY.replace("DEPTH = 4", "DEPTH = 3")
    again = OfflineProposer(seed=0, combine_prob=0).propose(ctx_for(moved, "m2", history), SMALL_SPACE)
    old_keys = {hypothesis_key(e) for e in history}
    retried = [h for h in again if hypothesis_key(h) in old_keys]
    assert len(retried) == SMALL_SPACE - 2  # DEPTH=3 is current now; DEPTH 3 -> 4 wasn't possible before
    assert {"DEPTH": 3} not in [h.params for h in again]
    assert all("Retry: judged on an earlier mainline m1" in h.rationale for h in retried)
    assert {"DEPTH": 1} in [h.params for h in again] and {"DEPTH": 4} in [h.params for h in again]


def test_combines_two_earlier_near_wins():
    history = [
        {"title": "MATRIX_LR 0.04 -> 0.056", "params": {"MATRIX_LR": 0.056}, "verdict": "promising",
         "effect_bpb": -0.01, "effect_sigma": -1.5, "mainline_commit": "m1", "trials": 3},
        {"title": "DEPTH 4 -> 3", "params": {"DEPTH": 3}, "verdict": "discard",
         "effect_bpb": -0.008, "effect_sigma": -1.2, "mainline_commit": "m1", "trials": 2},
        {"title": "WARMUP_RATIO 0.0 -> 0.1", "params": {"WARMUP_RATIO": 0.1}, "verdict": "discard",
         "effect_bpb": 0.02, "effect_sigma": 2.0, "mainline_commit": "m1", "trials": 1},
    ]
    hs = OfflineProposer(seed=0, combine_prob=1.0).propose(ctx_for(history=history), 2)
    assert hs[0].params == {"MATRIX_LR": 0.056, "DEPTH": 3}  # the clear loser is not combined
    assert hs[0].title == "MATRIX_LR 0.04 -> 0.056 + DEPTH 4 -> 3"
    assert "near-wins" in hs[0].rationale
    assert len(hs[1].params) == 1  # only one pair exists: then single changes
    history.append(judged(hs[0], "discard"))
    hs = OfflineProposer(seed=0, combine_prob=1.0).propose(ctx_for(history=history), 3)
    assert all(len(h.params) == 1 for h in hs)  # the pair was judged on this mainline


def test_missing_or_broken_train_py_in_context_is_a_clear_error():
    with pytest.raises(ValueError, match="ResearchContext.files has no 'train.py'"):
        OfflineProposer().propose(ResearchContext(track=None, mainline_commit="m", files={}), 1)
    with pytest.raises(ValueError, match="train.py does not parse"):
        OfflineProposer().propose(ctx_for("DEPTH = (\n"), 1)


# ---------------------------------------------------------------------------
# OfflineImplementer
# ---------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path):
    (tmp_path / "train.py").write_text(TRAIN_PY, encoding="utf-8")
    (tmp_path / "prepare.py").write_text("MAX_SEQ_LEN = 256\n", encoding="utf-8")
    (tmp_path / "program.md").write_text("# program\n", encoding="utf-8")
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_implementer_edits_only_train_py_and_it_compiles(workspace):
    before = snapshot(workspace)
    ctx = ctx_for()
    hs = OfflineProposer(seed=5).propose(ctx, 3)
    h = hs[0]
    OfflineImplementer().implement(h, workspace)
    after = snapshot(workspace)
    assert after.keys() == before.keys()
    assert [k for k in after if after[k] != before[k]] == ["train.py"]
    text = after["train.py"].decode()
    compile(text, "train.py", "exec")
    ast.parse(text)
    (name, value), = h.params.items()
    assert constant_values(text)[name] == value
    assert len(changed_lines(TRAIN_PY, text)) == 1


@pytest.mark.parametrize("params, message", [
    ({"NOT_A_CONSTANT": 1}, "NOT_A_CONSTANT is not a module-level constant of train.py"),
    ({"MATRIX_LR": "0.06"}, "MATRIX_LR is float 0.04 in the file; got str '0.06'"),
    ({"DEPTH": 5, "MATRIX_LR": None}, "MATRIX_LR is float 0.04 in the file; got NoneType None"),
    ({}, "has no params"),
    (None, "has no params"),
])
def test_implementer_refuses_malformed_params_and_leaves_the_file(workspace, params, message):
    before = snapshot(workspace)
    h = Hypothesis("h1", "bad", "r", "-0.01 bpb", "low", "test", params=params)
    with pytest.raises(ImplementationError) as e:
        OfflineImplementer().implement(h, workspace)
    assert message in e.value.reason
    assert snapshot(workspace) == before  # nothing half-written


def test_implementer_reports_missing_or_unparsable_train_py(tmp_path):
    h = Hypothesis("h1", "t", "r", "-0.01 bpb", "low", "test", params={"DEPTH": 3})
    with pytest.raises(ImplementationError, match="train.py not found"):
        OfflineImplementer().implement(h, tmp_path)
    (tmp_path / "train.py").write_text("DEPTH = 4\ndef broken(:\n")
    with pytest.raises(ImplementationError, match="train.py does not parse"):
        OfflineImplementer().implement(h, tmp_path)
    with pytest.raises(ImplementationError, match="carries a patch"):
        OfflineImplementer().implement(Hypothesis("h2", "t", "r", "e", "low", "llm", patch="--- a\n"), tmp_path)


@pytest.mark.skipif(not (ROOT / "train.py").exists(), reason="train.py not written yet")
def test_structural_one_liners_are_patches_that_apply_to_the_real_train_py(tmp_path):
    import subprocess

    from coordinator.mainline import PatchImplementer
    text = (ROOT / "train.py").read_text(encoding="utf-8")
    coarse = OfflineProposer(seed=0, combine_prob=0).propose(ctx_for(text), 1000)
    patches = [h for h in coarse if h.patch]
    assert len(patches) >= 6, [h.title for h in coarse if not h.params]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for h in patches:
        (tmp_path / "train.py").write_text(text, encoding="utf-8")
        subprocess.run(["git", "add", "train.py"], cwd=tmp_path, check=True)
        PatchImplementer().implement(h, tmp_path)
        new = (tmp_path / "train.py").read_text(encoding="utf-8")
        assert new != text and h.params is None
        compile(new, "train.py", "exec")


def test_still_proposes_after_300_trials_on_a_small_target(tmp_path):
    """Never out of ideas: every proposal judged (discarded) on the same mainline, 300 times
    over, and the offline agent still proposes something new each time (finer steps)."""
    history, seen = [], set()
    for i in range(300):
        hs = OfflineProposer(seed=1).propose(ctx_for(SMALL_PY, history=history), 1)
        assert len(hs) == 1, f"out of ideas after {i} judged hypotheses"
        key = hypothesis_key(hs[0])
        assert key not in seen
        seen.add(key)
        history.append(judged(hs[0], "discard", effect_sigma=0.3))
        (tmp_path / "train.py").write_text(SMALL_PY, encoding="utf-8")
        OfflineImplementer().implement(hs[0], tmp_path)
        compile((tmp_path / "train.py").read_text(encoding="utf-8"), "train.py", "exec")
