"""
prepare.py: local split, tokenizer, packing dataloader, bits-per-byte, fingerprint, downloader
(against a real HTTP server on 127.0.0.1), and the clear errors for a missing/corrupt cache.
All data is made locally (tests/datagen.py); the tiny cache is the session fixture tiny_data.
"""

import http.server
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO_ROOT, run_prepare
from datagen import generate_documents

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim


def _point_at(monkeypatch, prepare, cache_dir):
    """Point the in-process prepare module at another copy of the tiny cache."""
    cache_dir = str(cache_dir)
    monkeypatch.setattr(prepare, "CACHE_DIR", cache_dir)
    monkeypatch.setattr(prepare, "DATA_DIR", os.path.join(cache_dir, "data"))
    monkeypatch.setattr(prepare, "TOKENIZER_DIR", os.path.join(cache_dir, "tokenizer"))
    monkeypatch.setattr(prepare, "EVAL_DIR", os.path.join(cache_dir, "eval"))


def _write_parquet(path, docs, row_group_size=256):
    pq.write_table(pa.table({"text": pa.array(docs, type=pa.string())}), path, row_group_size=row_group_size)


def _run_py(code, env_extra, timeout=300):
    env = {**os.environ, **env_extra}
    env.pop("AUTORESEARCH_EVAL_TOKENS", None)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)

# ---------------------------------------------------------------------------
# Profiles and the prepared cache
# ---------------------------------------------------------------------------

def test_profiles_match_spec(prepare_module):
    p = prepare_module.PROFILES
    assert (p["default"]["MAX_SEQ_LEN"], p["default"]["VOCAB_SIZE"], p["default"]["TIME_BUDGET"],
            p["default"]["EVAL_TOKENS"]) == (2048, 8192, 300, 4 * 524288)
    assert (p["laptop"]["MAX_SEQ_LEN"], p["laptop"]["VOCAB_SIZE"], p["laptop"]["TIME_BUDGET"],
            p["laptop"]["EVAL_TOKENS"]) == (1024, 8192, 300, 524288)
    assert (p["tiny"]["MAX_SEQ_LEN"], p["tiny"]["VOCAB_SIZE"], p["tiny"]["TIME_BUDGET"],
            p["tiny"]["EVAL_TOKENS"]) == (256, 2048, 60, 65536)
    assert prepare_module.PROFILE == "tiny"
    assert (prepare_module.MAX_SEQ_LEN, prepare_module.VOCAB_SIZE) == (256, 2048)


def test_cache_layout_and_fingerprint_cli(tiny_data):
    d = tiny_data.cache_dir
    manifest = json.loads((d / "data" / "manifest.json").read_text())
    for split in ("train", "val", "test"):
        assert manifest[split] and all((d / "data" / f).exists() for f in manifest[split])
    profile = json.loads((d / "profile.json").read_text())
    assert profile["profile"] == "tiny" and profile["constants"]["MAX_SEQ_LEN"] == 256
    assert (d / "tokenizer" / "tokenizer.pkl").exists() and (d / "tokenizer" / "token_bytes.npy").exists()

    r = run_prepare(["--fingerprint"], tiny_data.env)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec == {"fingerprint": rec["fingerprint"], "profile": "tiny", "time_budget": 60,
                   "max_seq_len": 256, "vocab_size": 2048, "eval_tokens": 65536,
                   # for the worker's sandbox: what trials read, and what training must never see
                   "data_dirs": [str(d)], "eval_files": {s: [*(str(d / "data" / f) for f in manifest[s]),
                                                             str(d / "eval" / f"{s}.npy")]
                                                         for s in ("val", "test")}}
    assert len(rec["fingerprint"]) == 64
    assert rec["fingerprint"] == json.loads((d / "fingerprint.json").read_text())["fingerprint"]


def test_prepare_is_deterministic(tiny_data, tmp_path):
    """The same corpus prepared into another cache gives the same tokenizer and fingerprint."""
    r = run_prepare(["--profile", "tiny", "--source", str(tiny_data.corpus_dir)],
                    {"AUTORESEARCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stdout + r.stderr
    a = json.loads((tiny_data.cache_dir / "fingerprint.json").read_text())["fingerprint"]
    b = json.loads((tmp_path / "cache" / "tiny" / "fingerprint.json").read_text())["fingerprint"]
    assert a == b
    assert (np.load(tiny_data.cache_dir / "tokenizer" / "token_bytes.npy")
            == np.load(tmp_path / "cache" / "tiny" / "tokenizer" / "token_bytes.npy")).all()

# ---------------------------------------------------------------------------
# Local source split
# ---------------------------------------------------------------------------

def test_local_split_deterministic_disjoint_nonempty(prepare_module, tmp_path):
    prepare = prepare_module
    docs = generate_documents(3000, seed=7)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text(docs[0])
    (src / "b.md").write_text(docs[1])
    (src / "sub" / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[2:1500]))
    _write_parquet(src / "sub" / "d.parquet", docs[1500:] + [docs[5]])  # one duplicate document
    (src / "ignored.csv").write_text("not,a,source\n")

    read = list(prepare.iter_source_documents(str(src)))
    assert sorted(read) == sorted(docs + [docs[5]])
    s1 = prepare.split_documents(read)
    s2 = prepare.split_documents(list(prepare.iter_source_documents(str(src))))
    assert s1 == s2
    assert all(s1[k] for k in ("train", "val", "test"))
    sets = {k: set(v) for k, v in s1.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sum(len(v) for v in s1.values()) == len(read)
    assert 0.85 < len(s1["train"]) / len(read) < 0.95
    assert 0.025 < len(s1["val"]) / len(read) < 0.075 and 0.025 < len(s1["test"]) / len(read) < 0.075
    dup_split = [k for k, v in s1.items() if docs[5] in v]
    assert len(dup_split) == 1 and s1[dup_split[0]].count(docs[5]) == 2


def test_local_split_tiny_corpus_guarantees_val_and_test(prepare_module):
    prepare = prepare_module
    docs = ["one document", "another document", "a third document", "fourth"]
    s = prepare.split_documents(docs)
    assert all(s[k] for k in ("train", "val", "test"))
    assert sorted(sum(s.values(), [])) == sorted(docs)
    with pytest.raises(SystemExit, match="at least 3"):
        prepare.split_documents(["same", "same", "other"])


def test_bad_source_is_a_clear_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.jsonl").write_text('{"no_text": 1}\n')
    r = run_prepare(["--profile", "tiny", "--source", str(tmp_path / "src")],
                    {"AUTORESEARCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert 'x.jsonl:1: expected a JSON object with a "text" field' in r.stderr

# ---------------------------------------------------------------------------
# Long documents: cut into row-sized pieces; too little evaluation text is refused
# ---------------------------------------------------------------------------

def test_cut_document_keeps_every_character_at_natural_boundaries(prepare_module):
    cut = prepare_module.cut_document
    paragraphs = ["First paragraph line one.\nLine two of it.", "Short one.", "x" * 50,
                  "A paragraph of many lines.\n" + "\n".join(f"line {i} of the long paragraph" for i in range(10))]
    text = "\n\n".join(paragraphs)
    pieces = cut(text, 60)
    assert "".join(pieces) == text and all(0 < len(p) <= 60 for p in pieces)
    # whole paragraphs where they fit, then whole lines; no piece starts inside a line but a hard cut's
    assert pieces[0] == "First paragraph line one.\nLine two of it.\n\nShort one.\n\n"   # two fit in one
    assert pieces[1] == "x" * 50 + "\n\n" and pieces[2] == "A paragraph of many lines.\nline 0 of the long paragraph\n"
    assert all(p.endswith("\n") or p is pieces[-1] for p in pieces)
    assert cut("y" * 130, 60) == ["y" * 60, "y" * 60, "y" * 10]        # no boundary at all: a hard cut
    assert cut("short", 60) == ["short"]
    assert prepare_module.cut_documents(["a" * 10, "\n\n\n" + "b" * 8], 8) == ["a" * 8, "a" * 2, "b" * 8]


def _book(seed, chars):
    """One long file: generated documents as chapters, paragraphs separated by blank lines."""
    docs, n = [], 0
    for d in generate_documents(100_000, seed=seed):
        docs.append(d)
        n += len(d) + 2
        if n >= chars:
            return "\n\n".join(docs)
    raise AssertionError("not enough text")


def test_a_folder_of_long_books_gives_distinct_rows(tmp_path):
    """A few long files (one document each): every row of every split is its own text, not the
    beginning of a book repeated (packing starts each row at a document's beginning)."""
    src = tmp_path / "books"
    src.mkdir()
    for i in range(4):
        (src / f"book{i}.txt").write_text(_book(100 + i, 600_000))
    r = run_prepare(["--profile", "tiny", "--source", str(src)], {"AUTORESEARCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stdout + r.stderr
    d = tmp_path / "cache" / "tiny"
    for split in ("val", "test"):
        rows = np.load(d / "eval" / f"{split}.npy")
        assert rows.shape == (256, 257)
        distinct = np.unique(rows, axis=0).shape[0]
        assert distinct >= 250, (split, distinct)
        assert f"Rows: {split}: " in r.stdout and f"{distinct} distinct of 256 evaluation rows" in r.stdout
    train_docs = sum(pq.ParquetFile(d / "data" / f).metadata.num_rows
                     for f in json.loads((d / "data" / "manifest.json").read_text())["train"])
    assert train_docs > 500                       # at least one book of ~600k characters, in pieces of <= 768
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("Rows: train: "))
    assert int(line.split(", ")[1].split()[0].replace(",", "")) > 500       # distinct train rows


def test_an_evaluation_split_too_small_for_the_profile_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    # ~1,500 short documents: val and test get ~5% each, ~7k tokens, fewer than tiny's 65,536
    (src / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in generate_documents(1500, seed=5)))
    r = run_prepare(["--profile", "tiny", "--source", str(src)], {"AUTORESEARCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "the val split is too small for the profile's evaluation" in r.stderr
    assert "fix: give --source more text" in r.stderr and "--profile cpu" in r.stderr
    assert not (tmp_path / "cache" / "tiny" / "fingerprint.json").exists()   # nothing to train on was declared ready


def test_stored_eval_rows_are_the_packed_rows(prepare_module, monkeypatch):
    """The evaluation reads the rows prepare.py tokenized once; they are the split's packed rows, a
    smaller EVAL_TOKENS reads their prefix, and the evaluator (no tokenizer) needs them to exist."""
    prepare = prepare_module
    tok = prepare.Tokenizer.from_directory()
    stored = prepare.eval_rows(None, "val")
    assert stored.shape == (256, 257) and stored.dtype == np.int32
    assert np.array_equal(stored, prepare._pack_eval_rows(tok, "val", 256))
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 3 * prepare.MAX_SEQ_LEN)
    assert np.array_equal(prepare.eval_rows(None, "val"), stored[:3])
    monkeypatch.setattr(prepare, "EVAL_DIR", "/nonexistent")
    assert np.array_equal(prepare.eval_rows(tok, "val"), stored[:3])       # tokenized when not stored
    with pytest.raises(SystemExit, match="no tokenized val rows"):
        prepare.eval_rows(None, "val")


def test_changed_eval_rows_fail_the_cache_check(prepare_module, tiny_data, tmp_path, monkeypatch):
    prepare = prepare_module
    shutil.copytree(tiny_data.cache_dir, tmp_path / "tiny")
    _point_at(monkeypatch, prepare, tmp_path / "tiny")
    path = tmp_path / "tiny" / "eval" / "val.npy"
    rows = np.load(path)
    rows[0, 5] = (rows[0, 5] + 1) % prepare.VOCAB_SIZE
    np.save(path, rows)
    with pytest.raises(SystemExit, match="stored val rows .* differ"):
        prepare.check_eval_rows()

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

def test_tokenizer_round_trip_and_token_bytes(prepare_module):
    prepare = prepare_module
    tok = prepare.Tokenizer.from_directory()
    assert tok.get_vocab_size() == 2048
    assert tok.get_bos_token_id() == 2048 - 4 == tok.enc.encode_single_token(prepare.BOS_TOKEN)
    texts = generate_documents(50, seed=3) + ["Hello world! Numbers: 123. Unicode: 你好 🤖", " \t\n\r\n x", ""]
    for t in texts:
        assert tok.decode(tok.encode(t)) == t
    ids = tok.encode(texts, prepend=tok.get_bos_token_id())
    assert all(row[0] == tok.get_bos_token_id() and tok.decode(row[1:]) == t for row, t in zip(ids, texts))
    assert tok.encode("hi there", prepend=7)[0] == 7

    tb = np.array(prepare.get_token_bytes())
    assert tb.dtype == np.int32 and tb.shape == (2048,)
    assert (tb[-4:] == 0).all()
    assert all(tb[i] == len(tok.enc.decode_single_token_bytes(i)) for i in range(2044))
    assert (tb[:2044] > 0).all()

# ---------------------------------------------------------------------------
# Dataloader
# ---------------------------------------------------------------------------

def _val_docs(prepare, tok):
    texts = []
    for p in prepare.split_files("val"):
        texts += pq.read_table(p).column("text").to_pylist()
    return [tuple(ids) for ids in tok.encode(texts, prepend=tok.get_bos_token_id())]


def test_packing_invariants(prepare_module):
    prepare = prepare_module
    tok = prepare.Tokenizer.from_directory()
    bos = tok.get_bos_token_id()
    full_docs = _val_docs(prepare, tok)
    doc_set = set(full_docs)
    B, T = 4, 64
    loader = prepare.make_dataloader(tok, B, T, "val", buffer_size=100)
    seen_full, n_full_tokens, n_rows = [], 0, 0
    try:
        for _ in range(10):
            x, y, epoch = next(loader)
            assert x.dtype == mx.int32 and y.dtype == mx.int32 and x.shape == (B, T) and y.shape == (B, T)
            x, y = np.array(x), np.array(y)
            assert (x[:, 0] == bos).all()                       # every row starts with BOS
            assert (x[:, 1:] == y[:, :-1]).all()                # targets = inputs shifted by one
            assert ((x >= 0) & (x < tok.get_vocab_size())).all()
            for r in range(B):
                row = np.concatenate([x[r], y[r, -1:]]).tolist()   # the full T+1 row
                starts = [i for i, t in enumerate(row) if t == bos]
                segs = [tuple(row[a:b]) for a, b in zip(starts, starts[1:] + [len(row)])]
                assert sum(map(len, segs)) == T + 1                 # no padding: all tokens are documents
                for s in segs[:-1]:
                    assert s in doc_set                             # whole documents, unchanged
                last = segs[-1]
                if last in doc_set:
                    seen_full.append(last)
                else:                                               # the one crop fills the row exactly
                    assert any(d[:len(last)] == last for d in full_docs)
                seen_full += segs[:-1]
                n_full_tokens += sum(map(len, segs[:-1]))
                n_rows += 1
    finally:
        loader.close()
    assert len(seen_full) == len(set(seen_full))                    # no document used twice
    assert n_full_tokens / (n_rows * (T + 1)) > 0.5                 # best fit: mostly whole documents


def _first_batches(prepare, tok, split, seed, n=3, B=4, T=128):
    loader = prepare.make_dataloader(tok, B, T, split, seed=seed)
    try:
        return [np.array(next(loader)[0]) for _ in range(n)]
    finally:
        loader.close()


def test_seed_controls_train_order_only(prepare_module):
    prepare = prepare_module
    tok = prepare.Tokenizer.from_directory()
    a = _first_batches(prepare, tok, "train", seed=0)
    b = _first_batches(prepare, tok, "train", seed=0)
    c = _first_batches(prepare, tok, "train", seed=1)
    assert all((u == v).all() for u, v in zip(a, b))
    assert not all((u == v).all() for u, v in zip(a, c))
    assert all((u[:, 0] == tok.get_bos_token_id()).all() for u in c)
    v0 = _first_batches(prepare, tok, "val", seed=0)
    v1 = _first_batches(prepare, tok, "val", seed=123)
    assert all((u == v).all() for u, v in zip(v0, v1))
    t0 = _first_batches(prepare, tok, "test", seed=0)
    assert not all((u == v).all() for u, v in zip(v0, t0))


def test_epoch_advances_when_split_wraps(prepare_module):
    prepare = prepare_module
    tok = prepare.Tokenizer.from_directory()
    loader = prepare.make_dataloader(tok, 32, 256, "val", buffer_size=50)   # val ~ 70k tokens
    try:
        epochs = [next(loader)[2] for _ in range(20)]                        # 20 * 32 * 256 = 164k tokens
    finally:
        loader.close()
    assert epochs[0] == 1 and epochs == sorted(epochs) and epochs[-1] >= 2


def test_corrupt_shard_error_reaches_consumer(prepare_module, tiny_data, tmp_path, monkeypatch):
    prepare = prepare_module
    shutil.copytree(tiny_data.cache_dir, tmp_path / "c")
    _point_at(monkeypatch, prepare, tmp_path / "c")
    val = Path(prepare.split_files("val")[0])
    val.write_bytes(val.read_bytes()[: val.stat().st_size // 2])   # truncated: no parquet footer
    tok = prepare.Tokenizer.from_directory()
    loader = prepare.make_dataloader(tok, 2, 32, "val")
    with pytest.raises(SystemExit, match="cannot read shard .*val_00000.parquet"):
        next(loader)

# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

class KnownLogitsModel:
    """Fake model with known logits, the same at every position: logit(v) = -0.01 * (v % 97), so the
    cross-entropy of target t is logsumexp(logits) + 0.01 * (t % 97). It has no loss of its own."""

    def __init__(self, vocab):
        self.logits = -0.01 * (np.arange(vocab) % 97).astype(np.float32)
        self.batch_sizes = []

    def __call__(self, x):
        self.batch_sizes.append(x.shape[0])
        return mx.broadcast_to(mx.array(self.logits), (*x.shape, len(self.logits)))


def test_evaluate_bpb_computes_the_cross_entropy_from_logits(prepare_module, monkeypatch):
    prepare = prepare_module
    tok = prepare.Tokenizer.from_directory()
    T, V = prepare.MAX_SEQ_LEN, tok.get_vocab_size()
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 10 * T)   # 10 rows: batch 4 leaves a partial batch
    tb = np.load(Path(prepare.TOKENIZER_DIR) / "token_bytes.npy")

    # hand computation over the first 10 val rows (float64)
    loader = prepare.make_dataloader(tok, 10, T, "val")
    _, y, _ = next(loader)
    loader.close()
    y = np.array(y)
    assert (y == tok.get_bos_token_id()).any()            # special tokens are among the targets
    c = -0.01 * (np.arange(V) % 97)
    lse = np.log(np.exp(c).sum())
    losses = lse - c[y]
    nbytes = tb[y]
    expected = float((losses * (nbytes > 0)).sum()) / (math.log(2) * float(nbytes.sum()))
    assert np.array_equal(prepare.eval_rows(tok)[:, 1:], y)    # the fixed rows are the loader's first rows

    for bs in (4, 3, 10):
        m = KnownLogitsModel(V)
        got = prepare.evaluate_bpb(m, tok, batch_size=bs)
        assert got == pytest.approx(expected, rel=1e-5)
        assert sum(m.batch_sizes) == 10
    # the default (and the cap) is the profile's EVAL_BATCH_SIZE
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 40 * T)
    m = KnownLogitsModel(V)
    prepare.evaluate_bpb(m, tok, batch_size=1000)
    assert max(m.batch_sizes) == prepare.EVAL_BATCH_SIZE == 32 and sum(m.batch_sizes) == 40
    # the held-out split (the worker's evaluator scores it on promotion) gives another figure
    m = KnownLogitsModel(V)
    test_bpb = prepare.evaluate_bpb(m, tok, split="test")
    assert m.batch_sizes[0] == 32 and math.isfinite(test_bpb)
    assert prepare.evaluate_bpb(KnownLogitsModel(V), tok) != pytest.approx(test_bpb, rel=1e-9)


def test_a_model_that_returns_no_logits_is_refused(prepare_module, monkeypatch):
    prepare = prepare_module
    tok = prepare.Tokenizer.from_directory()
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 2 * prepare.MAX_SEQ_LEN)
    with pytest.raises(ValueError, match=r"logits of shape \(2, 256\), expected \(2, 256, 2048\)"):
        prepare.evaluate_bpb(lambda x: mx.zeros(x.shape), tok)     # a per-token "loss", not logits


class TinyLM(nn.Module):
    """A small real model: embedding -> MLP -> head, per-token cross entropy like train.py's GPT."""

    def __init__(self, vocab, dim=128):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, vocab, bias=False)

    def __call__(self, x, y=None):
        h = self.emb(x)
        logits = self.head(h + self.mlp(h)).astype(mx.float32)
        return logits if y is None else nn.losses.cross_entropy(logits, y, reduction="none").mean()


def test_eval_peak_memory_not_above_training_step(prepare_module, monkeypatch):
    prepare = prepare_module
    tok = prepare.Tokenizer.from_directory()
    B, T = 8, prepare.MAX_SEQ_LEN
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 2 * B * T)
    mx.random.seed(0)
    model = TinyLM(tok.get_vocab_size(), dim=64)
    opt = optim.AdamW(learning_rate=1e-3)
    loss_and_grad = nn.value_and_grad(model, lambda m, x, y: m(x, y))
    loader = prepare.make_dataloader(tok, B, T, "train")
    x, y, _ = next(loader)
    loader.close()
    loss, grads = loss_and_grad(model, x, y)          # warm-up: optimizer state exists before measuring
    opt.update(model, grads)
    mx.eval(model.parameters(), opt.state, loss)

    mx.reset_peak_memory()
    for _ in range(2):
        loss, grads = loss_and_grad(model, x, y)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
    train_peak = mx.get_peak_memory()
    del grads, loss

    mx.reset_peak_memory()
    bpb = prepare.evaluate_bpb(model, tok, batch_size=B)
    eval_peak = mx.get_peak_memory()
    assert math.isfinite(bpb) and 0 < bpb < 20
    assert eval_peak <= train_peak, (eval_peak, train_peak)

# ---------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------

def test_fingerprint_changes_with_val_shard(prepare_module, tiny_data, tmp_path, monkeypatch):
    prepare = prepare_module
    original = prepare.data_fingerprint()
    assert prepare.compute_fingerprint() == original
    shutil.copytree(tiny_data.cache_dir, tmp_path / "tiny")
    _point_at(monkeypatch, prepare, tmp_path / "tiny")
    assert prepare.compute_fingerprint() == original        # a copy is the same data
    val = prepare.split_files("val")[0]
    texts = pq.read_table(val).column("text").to_pylist()
    texts[17] = texts[17] + " One more sentence."
    _write_parquet(val, texts)
    assert prepare.compute_fingerprint() != original

    # the CLI re-verifies and refuses the changed cache
    r = run_prepare(["--fingerprint"], {**tiny_data.env, "AUTORESEARCH_CACHE": str(tmp_path)})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "fingerprint mismatch" in r.stderr and "run: uv run prepare.py --profile tiny" in r.stderr


def test_fingerprint_covers_metric_constants(prepare_module, monkeypatch):
    prepare = prepare_module
    original = prepare.compute_fingerprint()
    tiny = dict(prepare.PROFILES["tiny"], EVAL_TOKENS=2 * 65536)
    monkeypatch.setitem(prepare.PROFILES, "tiny", tiny)
    assert prepare.compute_fingerprint() != original

# ---------------------------------------------------------------------------
# Missing cache, unknown profile: clear messages, non-zero exit, no traceback
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("code", [
    "import prepare; prepare.Tokenizer.from_directory()",
    "import prepare; prepare.make_dataloader(None, 2, 16, 'train')",
    "import prepare; prepare.data_fingerprint()",
    "import prepare; prepare.get_token_bytes()",
])
def test_missing_cache_says_what_to_run(tmp_path, code):
    r = _run_py(code, {"AUTORESEARCH_CACHE": str(tmp_path / "nothing"), "AUTORESEARCH_PROFILE": "tiny"})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "run: uv run prepare.py --profile tiny" in r.stderr


def test_fingerprint_cli_on_missing_cache(tmp_path):
    r = run_prepare(["--fingerprint", "--profile", "laptop"], {"AUTORESEARCH_CACHE": str(tmp_path)})
    assert r.returncode == 1 and r.stdout.strip() == "" and "Traceback" not in r.stderr
    assert "run: uv run prepare.py --profile laptop" in r.stderr


def test_unknown_profile_is_a_clear_error(tmp_path):
    r = _run_py("import prepare", {"AUTORESEARCH_CACHE": str(tmp_path), "AUTORESEARCH_PROFILE": "huge"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "unknown profile 'huge'" in r.stderr and "default, laptop, tiny" in r.stderr

# ---------------------------------------------------------------------------
# Downloader against a real HTTP server on 127.0.0.1
# ---------------------------------------------------------------------------

class ShardServer:
    """Serves parquet shards with Range support; per-file scripted faults: "500" (error response),
    "drop" (send half of the body then close the connection), "truncated" (a complete response whose
    body is a truncated parquet). Records (path, Range header) of every request."""

    def __init__(self, files):
        self.files = dict(files)
        self.faults = {}
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if name not in server.files:
                    self.send_error(404)
                    return
                queue = server.faults.get(name, [])
                fault = queue.pop(0) if queue else None
                if fault == "500":
                    self.send_error(500, "injected")
                    return
                data = server.files[name]
                if fault == "truncated":
                    data = data[: len(data) // 2]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _shard_bytes(tmp_path, name, docs):
    path = tmp_path / f"src_{name}"
    _write_parquet(path, docs)
    return path.read_bytes()


@pytest.fixture
def shard_server(tmp_path):
    # val and test hold more than the tiny profile's evaluation rows (prepare.py refuses fewer)
    docs = generate_documents(4000, seed=11)
    files = {"shard_00000.parquet": _shard_bytes(tmp_path, "0", docs[:2000]),
             "shard_06541.parquet": _shard_bytes(tmp_path, "test", docs[2000:3000]),
             "shard_06542.parquet": _shard_bytes(tmp_path, "val", docs[3000:])}
    server = ShardServer(files)
    yield server
    server.close()


def _download(prepare, server, data_dir, index=0, attempts=4):
    data_dir.mkdir(exist_ok=True)
    return prepare.download_single_shard(index, data_dir=str(data_dir), base_url=server.url,
                                         attempts=attempts, backoff=0.01)


def test_download_retries_after_500(prepare_module, shard_server, tmp_path):
    shard_server.faults["shard_00000.parquet"] = ["500", "500"]
    ok, err = _download(prepare_module, shard_server, tmp_path / "d")
    assert ok and err is None
    assert (tmp_path / "d" / "shard_00000.parquet").read_bytes() == shard_server.files["shard_00000.parquet"]
    assert [r for r in shard_server.requests if r[0] == "shard_00000.parquet"] == [("shard_00000.parquet", None)] * 3
    assert not (tmp_path / "d" / "shard_00000.parquet.tmp").exists()


def test_download_resumes_partial_file_with_range(prepare_module, shard_server, tmp_path):
    shard_server.faults["shard_00000.parquet"] = ["drop"]
    ok, _ = _download(prepare_module, shard_server, tmp_path / "d")
    assert ok
    data = shard_server.files["shard_00000.parquet"]
    assert (tmp_path / "d" / "shard_00000.parquet").read_bytes() == data
    (first, r1), (second, r2) = shard_server.requests
    assert r1 is None and r2 is not None and r2.startswith("bytes=")
    resumed_at = int(r2.split("=")[1].rstrip("-"))
    assert 0 < resumed_at < len(data)


def test_download_resumes_leftover_tmp_from_earlier_run(prepare_module, shard_server, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    data = shard_server.files["shard_06542.parquet"]
    (d / "shard_06542.parquet.tmp").write_bytes(data[:1000])
    ok, _ = _download(prepare_module, shard_server, d, index=6542)
    assert ok and (d / "shard_06542.parquet").read_bytes() == data
    assert shard_server.requests == [("shard_06542.parquet", "bytes=1000-")]


def test_download_truncated_parquet_is_refetched(prepare_module, shard_server, tmp_path):
    shard_server.faults["shard_00000.parquet"] = ["truncated"]
    ok, _ = _download(prepare_module, shard_server, tmp_path / "d")
    assert ok
    assert (tmp_path / "d" / "shard_00000.parquet").read_bytes() == shard_server.files["shard_00000.parquet"]
    assert [r[1] for r in shard_server.requests] == [None, None]      # restarted from byte 0


def test_download_always_truncated_is_refused(prepare_module, shard_server, tmp_path):
    shard_server.faults["shard_00000.parquet"] = ["truncated"] * 10
    ok, err = _download(prepare_module, shard_server, tmp_path / "d", attempts=3)
    assert not ok and "not a valid parquet" in str(err)
    assert os.listdir(tmp_path / "d") == []                           # nothing half-written left


def test_existing_truncated_shard_is_replaced(prepare_module, shard_server, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    data = shard_server.files["shard_00000.parquet"]
    (d / "shard_00000.parquet").write_bytes(data[:-100])
    ok, _ = _download(prepare_module, shard_server, d)
    assert ok and (d / "shard_00000.parquet").read_bytes() == data


def test_prepare_from_mirror_end_to_end(shard_server, tmp_path):
    shard_server.faults["shard_00000.parquet"] = ["500", "drop"]
    env = {"AUTORESEARCH_CACHE": str(tmp_path / "cache"), "AUTORESEARCH_BASE_URL": shard_server.url}
    r = run_prepare(["--profile", "tiny", "--num-shards", "1", "--backoff", "0.01"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    data = tmp_path / "cache" / "tiny" / "data"
    m = json.loads((data / "manifest.json").read_text())
    assert (m["train"], m["val"], m["test"]) == (["shard_00000.parquet"], ["shard_06542.parquet"],
                                                 ["shard_06541.parquet"])
    for name, blob in shard_server.files.items():
        assert (data / name).read_bytes() == blob
    r = run_prepare(["--fingerprint", "--profile", "tiny"], env)
    assert r.returncode == 0 and json.loads(r.stdout)["profile"] == "tiny"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "always500"])
def test_unreachable_source_fails_cleanly(shard_server, tmp_path, kind):
    if kind == "refused":
        url = f"http://127.0.0.1:{_free_port()}"
    else:
        url = shard_server.url
        for name in shard_server.files:
            shard_server.faults[name] = ["500"] * 10
    r = run_prepare(["--profile", "tiny", "--num-shards", "1", "--base-url", url, "--attempts", "2",
                     "--backoff", "0.01"], {"AUTORESEARCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "could not download 3 shard(s)" in r.stderr and "--base-url" in r.stderr
    data = tmp_path / "cache" / "tiny" / "data"
    assert not [f for f in os.listdir(data) if f.endswith((".parquet", ".json"))]


def test_peak_flops_measured_on_cpu(prepare_module):
    flops, how = prepare_module.get_peak_flops(mx.float32)
    assert flops > 1e8 and "measured" in how and "cpu" in how


def test_peak_flops_tables(prepare_module):
    t = prepare_module.table_peak_flops
    assert t("Apple M1 Pro", mx.float32, "Darwin")[0] == pytest.approx(5.3e12)
    assert t("Apple M1", mx.float32, "Darwin")[0] == pytest.approx(2.6e12)
    assert t("Apple M3 Max", mx.bfloat16, "Darwin")[0] == pytest.approx(16.4e12)
    assert t("Apple M4 Pro", mx.float32, "Darwin")[0] == pytest.approx(9.2e12)
    assert t("NVIDIA H100 80GB HBM3", mx.bfloat16, "Linux")[0] == pytest.approx(989e12)
    assert t("NVIDIA H100 PCIe", mx.bfloat16, "Linux")[0] == pytest.approx(756e12)
    assert t("NVIDIA H100 80GB HBM3", mx.float32, "Linux")[0] == pytest.approx(67e12)
    assert t("NVIDIA A100-SXM4-40GB", mx.bfloat16, "Linux")[0] == pytest.approx(312e12)
    assert t("NVIDIA GeForce RTX 4090", mx.bfloat16, "Linux")[0] == pytest.approx(165.2e12)
    assert t("NVIDIA H200", mx.bfloat16, "Linux")[0] == pytest.approx(989e12)
    assert t("Some Unknown GPU", mx.float32, "Linux") is None


def test_peak_flops_come_from_the_prepared_cache(prepare_module, monkeypatch, tmp_path):
    """prepare.py measured the matmul peak once (tiny_data ran it without OpenBLAS preloaded): a
    process in the same environment reads it instead of measuring; one with OpenBLAS does not use it,
    measures its own and stores it beside (a worker's --fingerprint does that once)."""
    prepare = prepare_module
    assert (Path(prepare.CACHE_DIR) / prepare.PEAK_FLOPS_FILE).exists()
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(prepare, "_MEASURED_PEAK", {})
    monkeypatch.setattr(prepare, "_measure_matmul_flops",
                        lambda dtype, budget_s=0.5: pytest.fail("measured again at start-up"))
    flops, how = prepare.get_peak_flops(mx.float32)
    assert flops > 1e8 and how.startswith("measured once for this machine") and "cpu" in how

    plain_key = prepare._peak_key(mx.float32, how[how.rindex("(") + 1:-1])
    (tmp_path / prepare.PEAK_FLOPS_FILE).write_text(json.dumps({plain_key: [5e9, 256]}))
    monkeypatch.setattr(prepare, "CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(prepare, "_MEASURED_PEAK", {})
    assert prepare.get_peak_flops(mx.float32)[0] == 5e9
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")
    monkeypatch.setattr(prepare, "_MEASURED_PEAK", {})
    monkeypatch.setattr(prepare, "_measure_matmul_flops", lambda dtype, budget_s=0.5: (123e9, 1024))
    flops, how = prepare.store_peak_flops()
    assert (flops, how.startswith("measured now")) == (123e9, True)
    stored = json.loads((tmp_path / prepare.PEAK_FLOPS_FILE).read_text())
    assert stored == {plain_key: [5e9, 256], plain_key + "|openblas": [123e9, 1024]}
