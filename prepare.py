"""
One-time data preparation for autoresearch experiments (MLX port), plus the fixed
runtime utilities train.py imports: tokenizer, dataloader, evaluation.
Downloads data shards (or splits a local corpus) and trains a BPE tokenizer.

Usage:
    python prepare.py                          # full prep for $AUTORESEARCH_PROFILE (download + tokenizer)
    python prepare.py --profile tiny           # CPU/CI profile
    python prepare.py --num-shards 8           # download only 8 training shards
    python prepare.py --source DIR             # local corpus (.txt/.md/.jsonl/.parquet) instead of climbmix
    python prepare.py --fingerprint            # verify the cache, print one JSON line with its fingerprint

Everything lives in $AUTORESEARCH_CACHE/<profile>/ (default ~/.cache/autoresearch-swarm/<profile>/).
This file is FIXED: research agents never change it.
"""

import os
import sys
import io
import json
import math
import time
import queue
import pickle
import bisect
import hashlib
import argparse
import platform
import threading
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tiktoken
import mlx.core as mx

# ---------------------------------------------------------------------------
# Profiles (fixed, do not modify). Results are only comparable within one profile.
# ---------------------------------------------------------------------------

PROFILES = {
    # upstream karpathy/autoresearch constants (H100-class GPU, big Macs)
    "default": dict(MAX_SEQ_LEN=2048, VOCAB_SIZE=8192, TIME_BUDGET=300, EVAL_TOKENS=4 * 524288,
                    EVAL_BATCH_SIZE=32, TOKENIZER_MAX_CHARS=1_000_000_000),
    # laptops / small Macs: shorter context, 1/4 of the eval tokens
    "laptop": dict(MAX_SEQ_LEN=1024, VOCAB_SIZE=8192, TIME_BUDGET=300, EVAL_TOKENS=524288,
                   EVAL_BATCH_SIZE=16, TOKENIZER_MAX_CHARS=1_000_000_000),
    # CPU / CI: seconds, not minutes
    "tiny": dict(MAX_SEQ_LEN=256, VOCAB_SIZE=2048, TIME_BUDGET=60, EVAL_TOKENS=65536,
                 EVAL_BATCH_SIZE=32, TOKENIZER_MAX_CHARS=50_000_000),
    # CPU research: a 2-core machine trains hundreds of steps in 60 s with a CPU-sized train.py
    # (bench/overnight.py's CPU_MODEL: depth 2, width 128, 2**9 tokens per step; README: Profiles)
    "cpu": dict(MAX_SEQ_LEN=128, VOCAB_SIZE=1024, TIME_BUDGET=60, EVAL_TOKENS=32768,
                EVAL_BATCH_SIZE=64, TOKENIZER_MAX_CHARS=20_000_000),
}
# constants that change the metric; they go into the data fingerprint
METRIC_CONSTANTS = ("MAX_SEQ_LEN", "VOCAB_SIZE", "EVAL_TOKENS")

# ---------------------------------------------------------------------------
# Configuration (environment, read at import time; see _set_profile)
# ---------------------------------------------------------------------------

CACHE_ROOT = os.environ.get("AUTORESEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "autoresearch-swarm")
BASE_URL = os.environ.get("AUTORESEARCH_BASE_URL") or "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
MAX_SHARD = 6542                 # the last datashard is shard_06542.parquet
VAL_SHARD = MAX_SHARD            # pinned validation shard (shard_06542)
TEST_SHARD = MAX_SHARD - 1       # pinned held-out test shard (shard_06541), never used for decisions
DOWNLOAD_ATTEMPTS = 5            # tries per shard before giving up
BACKOFF_BASE = 2.0               # seconds; retry k waits BACKOFF_BASE * 2**(k-1) (tests shrink it)
HTTP_TIMEOUT = 30                # seconds of socket inactivity before a request counts as failed
DOWNLOAD_CHUNK = 1 << 16         # bytes per write; a dropped connection loses at most one chunk of progress
SPLIT_FRACTIONS = (90, 5, 5)     # local source: percent of documents in train / val / test (by content hash)
LOCAL_ROWS_PER_SHARD = 50_000    # local source: documents per parquet shard
LOCAL_ROW_GROUP = 1024           # local source: documents per row group (unit of the seeded shuffle)
PIECE_CHARS_PER_TOKEN = 3        # local source: a document longer than MAX_SEQ_LEN * this many characters
                                 # (about a row of tokens) is cut into pieces of at most that size, at
                                 # paragraph, then line boundaries: packing starts every row at a document's
                                 # beginning and crops the rest, so a folder of books would give few distinct rows
TRAIN_COUNT_CAP = 64             # train tokens are counted (for the distinct-rows line) up to this many x EVAL_TOKENS
DOC_BUFFER = 1000                # dataloader: documents kept tokenized for best-fit packing
TOKENIZER_BATCH = 128            # dataloader: documents per encode_ordinary_batch call
PREFETCH_BATCHES = 4             # dataloader: batches the background thread may run ahead

# BPE split pattern (GPT-4 style, with \p{N}{1,2} instead of {1,3})
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = "<|reserved_0|>"


def _set_profile(name):
    """Select a profile: sets the module constants train.py imports. Unknown name -> clear exit."""
    global PROFILE, MAX_SEQ_LEN, VOCAB_SIZE, TIME_BUDGET, EVAL_TOKENS, EVAL_BATCH_SIZE, TOKENIZER_MAX_CHARS
    global CACHE_DIR, DATA_DIR, TOKENIZER_DIR, EVAL_DIR
    if name not in PROFILES:
        raise SystemExit(f"error: unknown profile {name!r} (AUTORESEARCH_PROFILE / --profile); "
                         f"choose one of: {', '.join(PROFILES)}")
    p = PROFILES[name]
    PROFILE = name
    MAX_SEQ_LEN = p["MAX_SEQ_LEN"]            # context length of eval (and, by convention, training)
    VOCAB_SIZE = p["VOCAB_SIZE"]              # tokenizer vocabulary, including the special tokens
    TIME_BUDGET = p["TIME_BUDGET"]            # training time budget in seconds
    EVAL_BATCH_SIZE = p["EVAL_BATCH_SIZE"]    # largest eval batch (bounds eval memory)
    TOKENIZER_MAX_CHARS = p["TOKENIZER_MAX_CHARS"]  # characters of training text the BPE sees
    # tokens of val evaluation; AUTORESEARCH_EVAL_TOKENS overrides it for smoke runs only
    override = os.environ.get("AUTORESEARCH_EVAL_TOKENS")
    if override and not (override.isdigit() and int(override) > 0):
        raise SystemExit(f"error: AUTORESEARCH_EVAL_TOKENS must be a positive integer, got {override!r}")
    EVAL_TOKENS = int(override) if override else p["EVAL_TOKENS"]
    CACHE_DIR = os.path.join(CACHE_ROOT, name)
    DATA_DIR = os.path.join(CACHE_DIR, "data")
    TOKENIZER_DIR = os.path.join(CACHE_DIR, "tokenizer")
    EVAL_DIR = os.path.join(CACHE_DIR, "eval")   # the evaluation rows, tokenized once (tokenize_eval_rows)


_set_profile(os.environ.get("AUTORESEARCH_PROFILE") or "default")


def _prepare_cmd():
    return f"uv run prepare.py --profile {PROFILE}"


class CacheError(SystemExit):
    """Missing or corrupt cache: a message saying what to run, non-zero exit, no traceback."""

    def __init__(self, what):
        super().__init__(f"error: {what}\n  cache: {CACHE_DIR}\n  run: {_prepare_cmd()}")


def _shard_name(index):
    return f"shard_{index:05d}.parquet"


def _atomic_write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path, obj):
    _atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _valid_parquet(path):
    """True if path is a complete parquet file with a "text" column (a truncated file has no footer)."""
    try:
        pf = pq.ParquetFile(path)
        return "text" in pf.schema_arrow.names
    except Exception:
        return False

# ---------------------------------------------------------------------------
# Data download (climbmix shards)
# ---------------------------------------------------------------------------

class _Progress:
    """Plain-text progress: bytes and shards done; one line per shard when not on a TTY."""

    def __init__(self, total_files):
        self.total_files, self.done, self.bytes = total_files, 0, 0
        self.t0 = time.time()
        self.last = 0.0
        self.lock = threading.Lock()
        self.tty = sys.stdout.isatty()

    def add_bytes(self, n):
        with self.lock:
            self.bytes += n
            now = time.time()
            if self.tty and now - self.last > 0.25:
                self.last = now
                self._line(end="\r")

    def file_done(self, name):
        with self.lock:
            self.done += 1
            self._line(end="\r" if self.tty else "\n", name=name)

    def _line(self, end, name=None):
        dt = max(time.time() - self.t0, 1e-6)
        msg = f"  [{self.done}/{self.total_files}] {self.bytes / 1e6:,.1f} MB ({self.bytes / 1e6 / dt:,.1f} MB/s)"
        if name:
            msg += f" {name}"
        print(msg.ljust(70), end=end, flush=True)


def download_single_shard(index, data_dir=None, base_url=None, attempts=None, backoff=None, progress=None):
    """Download one parquet shard with retries, resume and validation. Returns (ok, last_error).

    Writes to <file>.tmp and renames only a validated file, so a final name never holds a partial
    file. A dropped connection keeps the .tmp and the next attempt resumes it with an HTTP Range
    request; a complete-but-invalid file (bad parquet, no "text" column) is removed and re-fetched.
    """
    data_dir = data_dir or DATA_DIR
    base_url = (base_url or BASE_URL).rstrip("/")
    attempts = attempts or DOWNLOAD_ATTEMPTS
    backoff = BACKOFF_BASE if backoff is None else backoff
    filename = _shard_name(index)
    filepath = os.path.join(data_dir, filename)
    tmp = filepath + ".tmp"
    if os.path.exists(filepath):
        if _valid_parquet(filepath):
            return True, None
        print(f"  {filename}: existing file is not a valid parquet shard, re-downloading")
        os.remove(filepath)

    import requests  # here, not at the top: train.py and the evaluator import this file and never download
    url = f"{base_url}/{filename}"
    last_error = None
    for attempt in range(1, attempts + 1):
        try:
            have = os.path.getsize(tmp) if os.path.exists(tmp) else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            with requests.get(url, stream=True, timeout=HTTP_TIMEOUT, headers=headers) as r:
                if r.status_code == 416 and have:
                    pass  # nothing left to fetch: the .tmp is complete, validate it below
                else:
                    if r.status_code >= 400:
                        retryable = r.status_code >= 500 or r.status_code in (408, 429)
                        err = requests.HTTPError(f"HTTP {r.status_code} for {url}", response=r)
                        if not retryable:
                            return False, err
                        raise err
                    mode = "ab" if (have and r.status_code == 206) else "wb"  # 200 = server ignored Range
                    with open(tmp, mode) as f:
                        for chunk in r.iter_content(chunk_size=DOWNLOAD_CHUNK):
                            if chunk:
                                f.write(chunk)
                                if progress:
                                    progress.add_bytes(len(chunk))
                    expected = r.headers.get("Content-Length")
                    got = os.path.getsize(tmp) - (have if mode == "ab" else 0)
                    if expected is not None and got < int(expected):
                        raise IOError(f"connection closed after {got} of {expected} bytes (will resume)")
            if not _valid_parquet(tmp):
                os.remove(tmp)  # complete but corrupt: start over from byte 0
                raise IOError("downloaded file is not a valid parquet shard with a 'text' column")
            os.replace(tmp, filepath)
            if progress:
                progress.file_done(filename)
            return True, None
        except (requests.RequestException, IOError) as e:
            last_error = e
            print(f"  attempt {attempt}/{attempts} failed for {filename}: {e}", flush=True)
            if attempt < attempts:
                time.sleep(backoff * 2 ** (attempt - 1))
    return False, last_error


def download_data(num_shards, download_workers=8, base_url=None, attempts=None, backoff=None):
    """Download training shards + the pinned val and test shards, then write data/manifest.json."""
    os.makedirs(DATA_DIR, exist_ok=True)
    num_train = max(1, min(num_shards, TEST_SHARD))  # train shards never include test/val shards
    train_ids = list(range(num_train))
    ids = train_ids + [VAL_SHARD, TEST_SHARD]
    missing = [i for i in ids if not (os.path.exists(os.path.join(DATA_DIR, _shard_name(i)))
                                      and _valid_parquet(os.path.join(DATA_DIR, _shard_name(i))))]
    if missing:
        print(f"Data: downloading {len(missing)} shards ({len(ids) - len(missing)} already present) "
              f"from {(base_url or BASE_URL)}")
        progress = _Progress(len(missing))
        workers = max(1, min(download_workers, len(missing)))
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda i: download_single_shard(i, base_url=base_url, attempts=attempts,
                                                                    backoff=backoff, progress=progress), missing))
        if progress.tty:
            print()
        failed = [(i, err) for i, (ok, err) in zip(missing, results) if not ok]
        if failed:
            names = ", ".join(_shard_name(i) for i, _ in failed[:5]) + (" ..." if len(failed) > 5 else "")
            raise SystemExit(
                f"error: could not download {len(failed)} shard(s) from {(base_url or BASE_URL)}: {names}\n"
                f"  last error: {failed[-1][1]}\n"
                f"  check the network or use a mirror (--base-url / AUTORESEARCH_BASE_URL), then re-run the same\n"
                f"  command, e.g. {_prepare_cmd()} --num-shards {num_shards} (partial downloads resume)")
    print(f"Data: {len(ids)} shards ready at {DATA_DIR}")
    _write_manifest(dict(source="climbmix", source_id="climbmix",
                         train=[_shard_name(i) for i in train_ids],
                         val=[_shard_name(VAL_SHARD)], test=[_shard_name(TEST_SHARD)]))

# ---------------------------------------------------------------------------
# Local source (a folder of .txt/.md/.jsonl/.parquet) -> deterministic train/val/test split
# ---------------------------------------------------------------------------

SOURCE_EXTS = (".txt", ".md", ".jsonl", ".parquet")


def _source_files(source_dir):
    if not os.path.isdir(source_dir):
        raise SystemExit(f"error: --source {source_dir!r} is not a directory")
    files = []
    for root, dirs, names in os.walk(source_dir):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names) if n.endswith(SOURCE_EXTS)]
    if not files:
        raise SystemExit(f"error: no {'/'.join(SOURCE_EXTS)} files under --source {source_dir!r}")
    return files


def iter_source_documents(source_dir):
    """Documents of a local corpus, in a fixed order: .txt/.md = one document per file,
    .jsonl = one {"text": ...} per line, .parquet = the "text" column. Empty documents are skipped."""
    for path in _source_files(source_dir):
        if path.endswith((".txt", ".md")):
            with open(path, encoding="utf-8", errors="replace") as f:
                docs = [f.read()]
        elif path.endswith(".jsonl"):
            docs = []
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        docs.append(json.loads(line)["text"])
                    except (ValueError, KeyError, TypeError) as e:
                        raise SystemExit(f"error: {path}:{lineno}: expected a JSON object with a \"text\" field ({e})") from e
        else:
            if not _valid_parquet(path):
                raise SystemExit(f"error: {path} is not a readable parquet file with a \"text\" column")
            docs = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        for d in docs:
            if isinstance(d, str) and d.strip():
                yield d


def _doc_hash(text):
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).digest()


def split_documents(docs):
    """Deterministic train/val/test split by a hash of each document's text (identical documents
    land in the same split). Guarantees non-empty val and test by moving the train documents with
    the smallest hashes. Returns dict split -> list of documents (source order kept)."""
    train_pct, val_pct, _ = SPLIT_FRACTIONS
    out = {"train": [], "val": [], "test": []}
    keyed = {"train": [], "val": [], "test": []}
    for d in docs:
        h = _doc_hash(d)
        bucket = int.from_bytes(h[:8], "big") % 100
        split = "train" if bucket < train_pct else "val" if bucket < train_pct + val_pct else "test"
        keyed[split].append((h, len(out[split])))
        out[split].append(d)
    distinct = len({h for s in keyed.values() for h, _ in s})
    if distinct < 3:
        raise SystemExit(f"error: the local corpus has {distinct} distinct document(s); need at least 3 "
                         f"(one each for train, val and test)")
    for split in ("val", "test"):
        if not out[split]:
            # the train document with the smallest hash (all its copies) moves to the empty split
            h_min = min(h for h, _ in keyed["train"])
            moved = [d for d in out["train"] if _doc_hash(d) == h_min]
            out["train"] = [d for d in out["train"] if _doc_hash(d) != h_min]
            keyed["train"] = [(h, i) for h, i in keyed["train"] if h != h_min]
            out[split] = moved
    return out


def cut_document(text, max_chars, separators=("\n\n", "\n")):
    """Pieces of at most max_chars characters whose concatenation is `text`: whole paragraphs
    where they fit, a paragraph too long for a piece is cut at line ends, a line too long at
    max_chars. Separators stay at the end of the piece they close."""
    if len(text) <= max_chars:
        return [text]
    if not separators:
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    sep = separators[0]
    parts = text.split(sep)
    units = [u + sep for u in parts[:-1]] + [parts[-1]]
    pieces, current = [], ""
    for u in units:
        if len(current) + len(u) > max_chars and current:
            pieces.append(current)
            current = ""
        if len(u) > max_chars:
            pieces += cut_document(u, max_chars, separators[1:])
        else:
            current += u
    if current:
        pieces.append(current)
    return pieces


def cut_documents(docs, max_chars):
    """Every document as pieces of at most max_chars (cut_document); whitespace-only pieces are dropped."""
    return [p for d in docs for p in cut_document(d, max_chars) if p.strip()]


def _source_id(source_dir):
    """Identity of a local corpus: file names, sizes and mtimes (cheap; changes retrigger the split)."""
    h = hashlib.sha256()
    for p in _source_files(source_dir):
        st = os.stat(p)
        h.update(f"{os.path.relpath(p, source_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "local:" + h.hexdigest()


def prepare_local(source_dir):
    """Split a local corpus into parquet shards + manifest (skipped when already done for this corpus)."""
    source_dir = os.path.abspath(source_dir)
    piece_chars = MAX_SEQ_LEN * PIECE_CHARS_PER_TOKEN
    sid = f"{_source_id(source_dir)}:pieces{piece_chars}"   # a new cut re-splits and retrains the tokenizer
    manifest = _read_manifest(required=False)
    if manifest and manifest.get("source_id") == sid and all(
            os.path.exists(os.path.join(DATA_DIR, f)) for s in ("train", "val", "test") for f in manifest[s]):
        print(f"Data: local corpus already split at {DATA_DIR}")
        return
    print(f"Data: splitting local corpus {source_dir} ...")
    # whole documents are split (a book stays in one split), then long ones are cut into row-sized pieces
    splits = {split: cut_documents(docs, piece_chars)
              for split, docs in split_documents(iter_source_documents(source_dir)).items()}
    os.makedirs(DATA_DIR, exist_ok=True)
    for f in os.listdir(DATA_DIR):  # stale shards of an earlier local split
        if f.startswith(("train_", "val_", "test_")) and f.endswith(".parquet"):
            os.remove(os.path.join(DATA_DIR, f))
    names = {}
    for split, docs in splits.items():
        names[split] = []
        for k, start in enumerate(range(0, len(docs), LOCAL_ROWS_PER_SHARD)):
            name = f"{split}_{k:05d}.parquet"
            table = pa.table({"text": pa.array(docs[start:start + LOCAL_ROWS_PER_SHARD], type=pa.string())})
            tmp = os.path.join(DATA_DIR, name + ".tmp")
            pq.write_table(table, tmp, row_group_size=LOCAL_ROW_GROUP)
            os.replace(tmp, os.path.join(DATA_DIR, name))
            names[split].append(name)
        print(f"  {split}: {len(docs):,} documents (longer than {piece_chars:,} characters: cut), "
              f"{sum(map(len, docs)):,} characters")
    _write_manifest(dict(source="local", source_dir=source_dir, source_id=sid, **names))


def _write_manifest(m):
    os.makedirs(DATA_DIR, exist_ok=True)
    _write_json(os.path.join(DATA_DIR, "manifest.json"), m)


def _read_manifest(required=True):
    path = os.path.join(DATA_DIR, "manifest.json")
    if not os.path.exists(path):
        if required:
            raise CacheError(f"no data for profile {PROFILE!r} (missing {path})")
        return None
    try:
        with open(path) as f:
            m = json.load(f)
        assert all(isinstance(m[s], list) and m[s] for s in ("train", "val", "test"))
        return m
    except Exception as e:
        if required:
            raise CacheError(f"corrupt data manifest {path} ({e!r})") from e
        return None


def split_files(split):
    """Paths of the parquet shards of a split (train/val/test), per data/manifest.json."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    paths = [os.path.join(DATA_DIR, f) for f in _read_manifest()[split]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise CacheError(f"{len(missing)} {split} shard(s) missing, e.g. {missing[0]}")
    return paths


def list_parquet_files():
    """All shards named by the manifest (train, then val, then test)."""
    return [p for s in ("train", "val", "test") for p in split_files(s)]

# ---------------------------------------------------------------------------
# Tokenizer training
# ---------------------------------------------------------------------------

def text_iterator(max_chars=None, doc_cap=10_000):
    """Yield documents from the training split (never val/test), at most max_chars characters."""
    max_chars = TOKENIZER_MAX_CHARS if max_chars is None else max_chars
    nchars = 0
    for filepath in split_files("train"):
        pf = pq.ParquetFile(filepath)
        for rg_idx in range(pf.num_row_groups):
            for text in pf.read_row_group(rg_idx, columns=["text"]).column("text").to_pylist():
                doc = text[:doc_cap]
                nchars += len(doc)
                yield doc
                if nchars >= max_chars:
                    return


def train_tokenizer():
    """Train BPE with rustbpe on the train split, save a tiktoken Encoding pickle + token_bytes.npy."""
    tokenizer_pkl = os.path.join(TOKENIZER_DIR, "tokenizer.pkl")
    token_bytes_path = os.path.join(TOKENIZER_DIR, "token_bytes.npy")
    meta_path = os.path.join(TOKENIZER_DIR, "meta.json")
    source_id = _read_manifest()["source_id"]
    if os.path.exists(tokenizer_pkl) and os.path.exists(token_bytes_path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("source_id") == source_id and meta.get("vocab_size") == VOCAB_SIZE:
            print(f"Tokenizer: already trained at {TOKENIZER_DIR}")
            return
    os.makedirs(TOKENIZER_DIR, exist_ok=True)

    print("Tokenizer: training BPE tokenizer...")
    import rustbpe  # here, not at the top: every training and evaluator process imports this file
    t0 = time.time()
    tokenizer = rustbpe.Tokenizer()
    vocab_size_no_special = VOCAB_SIZE - len(SPECIAL_TOKENS)
    tokenizer.train_from_iterator(text_iterator(), vocab_size_no_special, pattern=SPLIT_PATTERN)

    # Build tiktoken encoding from trained merges
    pattern = tokenizer.get_pattern()
    mergeable_ranks = {bytes(k): v for k, v in tokenizer.get_mergeable_ranks()}
    if len(mergeable_ranks) != vocab_size_no_special:
        raise SystemExit(f"error: the training text only supports {len(mergeable_ranks)} BPE tokens, "
                         f"profile {PROFILE!r} needs {vocab_size_no_special}: use a larger corpus")
    tokens_offset = len(mergeable_ranks)
    special_tokens = {name: tokens_offset + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="rustbpe", pat_str=pattern, mergeable_ranks=mergeable_ranks,
                            special_tokens=special_tokens)

    # Round-trip check before anything is saved
    samples = ["Hello world! Numbers: 123. Unicode: 你好", "  tabs\tand\nnewlines\r\n", "émoji 🤖 ok"]
    samples += list(itertools.islice(text_iterator(max_chars=200_000), 50))
    for text in samples:
        decoded = enc.decode(enc.encode_ordinary(text))
        if decoded != text:
            raise SystemExit(f"error: tokenizer round trip failed: {text[:80]!r} -> {decoded[:80]!r}")

    # token_bytes: byte length of each token (0 for special tokens) for bits-per-byte
    token_bytes = np.zeros(enc.n_vocab, dtype=np.int32)
    for token_id in range(tokens_offset):
        token_bytes[token_id] = len(enc.decode_single_token_bytes(token_id))

    _atomic_write(tokenizer_pkl, pickle.dumps(enc))
    buf = io.BytesIO()
    np.save(buf, token_bytes)
    _atomic_write(token_bytes_path, buf.getvalue())
    _write_json(meta_path, dict(source_id=source_id, vocab_size=VOCAB_SIZE))
    print(f"Tokenizer: trained in {time.time() - t0:.1f}s (vocab_size={enc.n_vocab}, round trip ok), "
          f"saved to {TOKENIZER_DIR}")

# ---------------------------------------------------------------------------
# Evaluation rows: tokenized once here, so no evaluation re-tokenizes; the data checks
# ---------------------------------------------------------------------------

def split_tokens(tokenizer, split, cap=None):
    """Tokens of a split's documents (each document once, a BOS each), counted up to `cap`."""
    n = 0
    for texts, epoch in _document_batches(split_files(split), split, 0):
        if epoch > 1 or (cap and n >= cap):
            break
        n += sum(len(ids) + 1 for ids in tokenizer.encode(texts))
    return n


def tokenize_eval_rows():
    """Pack and store the val and test rows of the profile's EVAL_TOKENS (eval/<split>.npy), print how
    many distinct rows each split holds, and refuse data that cannot give a meaningful val_bpb: an
    evaluation split with fewer distinct tokens than its rows need (the rows would repeat), or a
    train split smaller than that. Returns {split: {tokens, rows, distinct_rows}}."""
    tokenizer = Tokenizer.from_directory()
    eval_tokens = PROFILES[PROFILE]["EVAL_TOKENS"]     # never the smoke override
    n_rows = max(1, eval_tokens // MAX_SEQ_LEN)
    need = n_rows * (MAX_SEQ_LEN + 1)
    cap = TRAIN_COUNT_CAP * eval_tokens
    os.makedirs(EVAL_DIR, exist_ok=True)
    stats = {}
    for split in ("train", "val", "test"):
        tokens = split_tokens(tokenizer, split, cap)
        if tokens < need:
            what = ("the corpus is too small for the profile" if split == "train" else
                    f"the {split} split is too small for the profile's evaluation")
            raise SystemExit(
                f"error: {what}: {split} holds {tokens:,} tokens, {PROFILE!r} evaluates {n_rows} rows of "
                f"{MAX_SEQ_LEN + 1} tokens ({need:,}), so its rows would repeat and val_bpb would measure little.\n"
                f"  fix: give --source more text (val and test each get ~{SPLIT_FRACTIONS[1]}% of the documents, "
                f"at least one whole file), or prepare a profile with fewer EVAL_TOKENS "
                f"(--profile {'cpu' if PROFILE != 'cpu' else 'cpu, with more text'}).")
        stats[split] = dict(tokens=tokens, capped=tokens >= cap)
        if split == "train":
            stats[split]["distinct_rows"] = tokens // (MAX_SEQ_LEN + 1)
            continue
        rows = _pack_eval_rows(tokenizer, split, n_rows)
        buf = io.BytesIO()
        np.save(buf, rows)
        _atomic_write(eval_rows_path(split), buf.getvalue())
        stats[split].update(rows=n_rows, distinct_rows=int(np.unique(rows, axis=0).shape[0]))
    for split, st in stats.items():
        about = ">=" if st["capped"] else ""
        rows = f"{st['distinct_rows']:,} distinct of {st['rows']:,} evaluation rows" if "rows" in st else \
            f"{about}{st['distinct_rows']:,} distinct rows"
        print(f"Rows: {split}: {about}{st['tokens']:,} tokens, {rows} ({MAX_SEQ_LEN + 1} tokens each)")
    return stats


def check_eval_rows():
    """The stored evaluation rows are the ones the split's text and tokenizer give (re-packed here)."""
    tokenizer = Tokenizer.from_directory()
    n_rows = max(1, PROFILES[PROFILE]["EVAL_TOKENS"] // MAX_SEQ_LEN)
    for split in ("val", "test"):
        path = eval_rows_path(split)
        if not os.path.exists(path):
            raise CacheError(f"no tokenized {split} rows (missing {path})")
        try:
            stored = np.load(path)
        except Exception as e:
            raise CacheError(f"corrupt evaluation rows {path} ({e!r})") from e
        if not np.array_equal(stored, _pack_eval_rows(tokenizer, split, n_rows)):
            raise CacheError(f"the stored {split} rows ({path}) differ from the {split} split's text")

# ---------------------------------------------------------------------------
# Runtime utilities (imported by train.py)
# ---------------------------------------------------------------------------

class Tokenizer:
    """Minimal tokenizer wrapper. Training is handled above."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, tokenizer_dir=None):
        path = os.path.join(tokenizer_dir or TOKENIZER_DIR, "tokenizer.pkl")
        if not os.path.exists(path):
            raise CacheError(f"no tokenizer for profile {PROFILE!r} (missing {path})")
        try:
            with open(path, "rb") as f:
                enc = pickle.load(f)
        except Exception as e:
            raise CacheError(f"corrupt tokenizer {path} ({e!r})") from e
        return cls(enc)

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads=None):
        if prepend is not None and not isinstance(prepend, int):
            raise TypeError(f"prepend must be an int token id, got {type(prepend)}")
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            if prepend is not None:
                ids.insert(0, prepend)
        elif isinstance(text, list):
            num_threads = num_threads or min(8, os.cpu_count() or 1)
            ids = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
            if prepend is not None:
                for row in ids:
                    row.insert(0, prepend)
        else:
            raise ValueError(f"Invalid input type: {type(text)}")
        return ids

    def decode(self, ids):
        return self.enc.decode(ids)


def _load_token_bytes():
    path = os.path.join(TOKENIZER_DIR, "token_bytes.npy")
    if not os.path.exists(path):
        raise CacheError(f"no token_bytes for profile {PROFILE!r} (missing {path})")
    return np.load(path).astype(np.int32)


def get_token_bytes():
    """Byte length of every token as mx.int32 (vocab,); 0 for special tokens."""
    return mx.array(_load_token_bytes())


def _read_texts(path, rg_idx):
    try:
        return pq.ParquetFile(path).read_row_group(rg_idx, columns=["text"]).column("text").to_pylist()
    except Exception as e:
        raise CacheError(f"cannot read shard {path} ({e!r}); delete it and re-run prepare") from e


def _document_batches(paths, split, seed):
    """Infinite iterator over (list of documents, epoch). Train: a seeded shuffle of shard,
    row-group and document order, reshuffled each epoch. Val/test: fixed order, seed ignored."""
    counts = []
    for p in paths:
        try:
            counts.append(pq.ParquetFile(p).num_row_groups)
        except Exception as e:
            raise CacheError(f"cannot read shard {p} ({e!r}); delete it and re-run prepare") from e
    epoch = 1
    while True:
        rng = np.random.default_rng([seed, epoch]) if split == "train" else None
        file_order = rng.permutation(len(paths)) if rng is not None else range(len(paths))
        for fi in file_order:
            rg_order = rng.permutation(counts[fi]) if rng is not None else range(counts[fi])
            for rg_idx in rg_order:
                texts = _read_texts(paths[fi], int(rg_idx))
                if rng is not None:
                    texts = [texts[i] for i in rng.permutation(len(texts))]
                for i in range(0, len(texts), TOKENIZER_BATCH):
                    yield texts[i:i + TOKENIZER_BATCH], epoch
        epoch += 1


def _packed_rows(tokenizer, T, paths, split, seed, buffer_size):
    """Infinite iterator of (row np.int32 (T+1,), epoch). BOS-aligned best-fit packing:
    every row starts with BOS (each document is BOS + tokens); repeatedly place the largest
    buffered document that fits; when none fits, crop the shortest to fill the row exactly."""
    row_capacity = T + 1
    bos = tokenizer.get_bos_token_id()
    batches = _document_batches(paths, split, seed)
    keys = []   # sorted (doc_len, arrival counter): bisect finds best fits; ties -> earliest doc
    docs = {}   # arrival counter -> np.int32 document (BOS + tokens)
    counter = itertools.count()
    epoch = 1

    def refill():
        nonlocal epoch
        texts, epoch = next(batches)
        ids = tokenizer.encode(texts)  # encode_ordinary_batch: tokenization runs in this (prefetch) thread
        lens = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        flat = np.empty(int(lens.sum()), dtype=np.int32)
        starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
        flat[starts] = bos
        mask = np.ones(len(flat), dtype=bool)
        mask[starts] = False
        flat[mask] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=len(flat) - len(ids))
        for s, n in zip(starts.tolist(), lens.tolist()):
            c = next(counter)
            docs[c] = flat[s:s + n]
            bisect.insort(keys, (n, c))

    while True:
        row = np.empty(row_capacity, dtype=np.int32)
        pos = 0
        while pos < row_capacity:
            while len(keys) < buffer_size:
                refill()
            remaining = row_capacity - pos
            i = bisect.bisect_right(keys, (remaining, math.inf)) - 1
            if i >= 0:  # largest doc that fits entirely (earliest among equal lengths)
                i = bisect.bisect_left(keys, (keys[i][0], -1))
                n, c = keys.pop(i)
                row[pos:pos + n] = docs.pop(c)
                pos += n
            else:       # no doc fits: crop the shortest to fill the row exactly
                n, c = keys.pop(0)
                row[pos:] = docs.pop(c)[:remaining]
                pos = row_capacity
        yield row, epoch


def _batches(tokenizer, B, T, paths, split, seed, buffer_size):
    rows = _packed_rows(tokenizer, T, paths, split, seed, buffer_size)
    while True:
        batch = np.empty((B, T + 1), dtype=np.int32)
        for b in range(B):
            batch[b], epoch = next(rows)
        yield np.ascontiguousarray(batch[:, :-1]), np.ascontiguousarray(batch[:, 1:]), epoch


class _ProducerError:
    def __init__(self, exc):
        self.exc = exc


def _produce(gen, q, stop):
    """Background thread body: run the generator, hand items (or its exception) to the queue."""
    try:
        for item in gen:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    pass
            if stop.is_set():
                return
    except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
        while not stop.is_set():
            try:
                q.put(_ProducerError(e), timeout=0.1)
                return
            except queue.Full:
                pass


class DataLoader:
    """Iterator of (inputs mx.int32 (B,T), targets mx.int32 (B,T), epoch). Batches are tokenized
    and packed by a daemon thread into a bounded queue; its exceptions surface in next()."""

    def __init__(self, gen):
        self._q = queue.Queue(maxsize=PREFETCH_BATCHES)
        self._stop = threading.Event()
        # the thread must not reference self, so a dropped loader is collected and stops its thread
        self._thread = threading.Thread(target=_produce, args=(gen, self._q, self._stop),
                                        name="dataloader-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._q.get()
        if isinstance(item, _ProducerError):
            self.close()
            raise item.exc
        x, y, epoch = item
        return mx.array(x), mx.array(y), epoch

    def close(self):
        self._stop.set()

    def __del__(self):
        self.close()


def make_dataloader(tokenizer, B, T, split, seed=0, buffer_size=DOC_BUFFER):
    """
    BOS-aligned dataloader with best-fit packing.
    Every row starts with BOS. Documents packed using best-fit to minimize cropping.
    When no document fits remaining space, crops shortest doc to fill exactly.
    100% utilization (no padding). Deterministic for a seed; the seed orders the training
    data only (val/test order is fixed). Yields (inputs, targets, epoch), targets = inputs shifted by one.
    """
    assert split in ("train", "val", "test"), f"split must be train/val/test, got {split!r}"
    paths = split_files(split)  # fails here, in the caller's thread, when the cache is missing
    return DataLoader(_batches(tokenizer, B, T, paths, split, seed, buffer_size))

# ---------------------------------------------------------------------------
# Data fingerprint: identity of everything that makes val_bpb comparable
# ---------------------------------------------------------------------------

def _text_digest(path):
    """Digest of a shard's documents (their UTF-8 bytes and lengths), independent of the parquet
    writer version and row-group layout. Hashes Arrow buffers directly: no Python strings."""
    import pyarrow.compute as pc  # here: ~0.3 s of import that training and evaluation never need
    lens_h, data_h, n = hashlib.sha256(), hashlib.sha256(), 0
    try:
        pf = pq.ParquetFile(path)
        for rg_idx in range(pf.num_row_groups):
            for chunk in pf.read_row_group(rg_idx, columns=["text"]).column("text").chunks:
                chunk = pc.fill_null(chunk.cast(pa.large_string()), "")
                _, offsets_buf, data_buf = chunk.buffers()
                offsets = np.frombuffer(offsets_buf, dtype=np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
                lens_h.update(np.diff(offsets).astype("<i8").tobytes())
                if data_buf is not None:
                    data_h.update(memoryview(data_buf)[int(offsets[0]):int(offsets[-1])])
                n += len(chunk)
    except CacheError:
        raise
    except Exception as e:
        raise CacheError(f"cannot read shard {path} ({e!r}); delete it and re-run prepare") from e
    return n.to_bytes(8, "little") + lens_h.digest() + data_h.digest()


def compute_fingerprint():
    """sha256 over the profile's metric constants, the tokenizer (pattern, mergeable ranks, special
    tokens), token_bytes, the val and test shard texts, and the train shard names + row counts."""
    h = hashlib.sha256(b"autoresearch-swarm data fingerprint v1\0")
    h.update(json.dumps({k: PROFILES[PROFILE][k] for k in METRIC_CONSTANTS}, sort_keys=True).encode())
    enc = Tokenizer.from_directory().enc
    h.update(b"\0pattern\0" + enc._pat_str.encode())
    for tok, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
        h.update(len(tok).to_bytes(4, "little") + tok + rank.to_bytes(4, "little"))
    h.update(b"\0special\0" + json.dumps(enc._special_tokens, sort_keys=True).encode())
    h.update(b"\0token_bytes\0" + _load_token_bytes().astype("<i4").tobytes())
    for split in ("val", "test"):
        for path in split_files(split):
            h.update(f"\0{split}\0{os.path.basename(path)}\0".encode() + _text_digest(path))
    for path in split_files("train"):
        h.update(f"\0train\0{os.path.basename(path)}\0{pq.ParquetFile(path).metadata.num_rows}".encode())
    return h.hexdigest()


def data_fingerprint():
    """The fingerprint computed at prepare time (fingerprint.json); `prepare.py --fingerprint` re-verifies it."""
    path = os.path.join(CACHE_DIR, "fingerprint.json")
    if not os.path.exists(path):
        raise CacheError(f"no fingerprint for profile {PROFILE!r} (missing {path})")
    with open(path) as f:
        return json.load(f)["fingerprint"]


def fingerprint_record(fp):
    """The JSON record of `prepare.py --fingerprint` (CONTRACTS.md)."""
    p = PROFILES[PROFILE]
    return dict(fingerprint=fp, profile=PROFILE, time_budget=p["TIME_BUDGET"], max_seq_len=p["MAX_SEQ_LEN"],
                vocab_size=p["VOCAB_SIZE"], eval_tokens=p["EVAL_TOKENS"])


def data_paths():
    """What a sandboxed trial may read (the profile's cache) and which of it training must never
    see (the val and test shards): printed by `--fingerprint` for the worker's sandbox."""
    return dict(data_dirs=[CACHE_DIR], eval_files={s: [*split_files(s), eval_rows_path(s)] for s in ("val", "test")})

# ---------------------------------------------------------------------------
# Peak FLOPs (for MFU): vendor tables for GPUs, a measurement on the CPU backend
# ---------------------------------------------------------------------------

# Apple GPUs: fp32 TFLOPS of the largest GPU configuration of each chip (device_info does not
# report the core count); the GPU runs bf16/fp16 matmuls at the fp32 rate.
APPLE_GPU_TFLOPS = {
    "M1": 2.6, "M1 Pro": 5.3, "M1 Max": 10.6, "M1 Ultra": 21.2,
    "M2": 3.6, "M2 Pro": 6.8, "M2 Max": 13.6, "M2 Ultra": 27.2,
    "M3": 4.1, "M3 Pro": 7.4, "M3 Max": 16.4, "M3 Ultra": 28.2,
    "M4": 4.3, "M4 Pro": 9.2, "M4 Max": 18.4,
    "M5": 5.7,
}
# NVIDIA: dense (no sparsity) TFLOPS as (bf16 tensor core, fp32 non-tensor); longest names first
NVIDIA_TFLOPS = [
    ("GH200", (989.0, 67.0)), ("H200", (989.0, 67.0)), ("H100 PCIe", (756.0, 51.0)), ("H100", (989.0, 67.0)),
    ("B200", (2250.0, 80.0)), ("A100", (312.0, 19.5)), ("L40S", (362.0, 91.6)), ("L40", (181.0, 90.5)),
    ("L4", (121.0, 30.3)), ("A10G", (70.0, 31.2)), ("A10", (125.0, 31.2)), ("A6000", (154.8, 38.7)),
    ("RTX 5090", (209.5, 104.8)), ("RTX 4090", (165.2, 82.6)), ("RTX 4080", (97.5, 48.7)),
    ("RTX 3090", (71.0, 35.6)), ("V100", (125.0, 15.7)), ("T4", (65.0, 8.1)),
]
_MEASURED_PEAK = {}
PEAK_FLOPS_FILE = "peak_flops.json"   # in CACHE_DIR: the matmul peak measured once by prepare.py (MFU only)


def _device_info():
    try:
        return dict(mx.device_info())
    except Exception:
        try:
            return dict(mx.metal.device_info())
        except Exception:
            return {}


def _measure_matmul_flops(dtype, budget_s=0.5):
    """Best-of-several square matmul throughput on the current device, within ~budget_s."""
    t_start = time.time()
    n, best = 256, 0.0
    while True:
        a = mx.random.normal((n, n)).astype(dtype)
        b = mx.random.normal((n, n)).astype(dtype)
        mx.eval(a, b)
        t0 = time.perf_counter()
        mx.eval(a @ b)
        dt = time.perf_counter() - t0
        best = max(best, 2 * n ** 3 / dt)
        if dt > 0.05 or n >= 2048 or time.time() - t_start > budget_s / 2:
            break
        n *= 2
    while time.time() - t_start < budget_s:
        t0 = time.perf_counter()
        mx.eval(a @ b)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best, n


def table_peak_flops(device_name, dtype, system=None):
    """Vendor peak FLOP/s for a GPU name (Apple on macOS, NVIDIA elsewhere) as (flops, how), or None."""
    system = system or platform.system()
    is_bf16 = dtype in (mx.bfloat16, mx.float16)
    if system == "Darwin":
        for chip in sorted(APPLE_GPU_TFLOPS, key=len, reverse=True):  # "M1 Pro" before "M1"
            if chip in device_name:
                return APPLE_GPU_TFLOPS[chip] * 1e12, f"table: Apple {chip} GPU fp32/bf16 ({device_name})"
    else:
        for chip, (bf16, fp32) in NVIDIA_TFLOPS:
            if chip in device_name:
                tf = bf16 if is_bf16 else fp32
                return tf * 1e12, f"table: NVIDIA {chip} {'bf16' if is_bf16 else 'fp32'} dense ({device_name})"
    return None


def get_peak_flops(dtype=mx.float32):
    """(peak FLOP/s, how): vendor table for Apple/NVIDIA GPUs; measured matmul peak on the CPU backend
    (and on a GPU missing from the table)."""
    info = _device_info()
    name = str(info.get("device_name", "")) or platform.processor() or platform.machine()
    if mx.default_device().type == mx.gpu:
        found = table_peak_flops(name, dtype)
        if found:
            return found
    key = (str(dtype), name)
    when = "once for this machine"
    if key not in _MEASURED_PEAK:
        _MEASURED_PEAK[key] = _stored_peak_flops().get(_peak_key(dtype, name))
    if not _MEASURED_PEAK[key]:
        _MEASURED_PEAK[key], when = _measure_matmul_flops(dtype), "now"
    flops, n = _MEASURED_PEAK[key]
    backend = "cpu" if mx.default_device().type == mx.cpu else "gpu, not in table"
    return flops, f"measured {when}: best {n}x{n} {dtype} matmul on {backend} ({name})"


def _peak_key(dtype, name):
    # a matmul peak measured without OpenBLAS preloaded (MLX's CPU backend on Linux) is ~30x lower:
    # never used for a process that has it, nor the other way round
    return f"{dtype}|{name}" + ("|openblas" if "openblas" in os.environ.get("LD_PRELOAD", "") else "")


def _stored_peak_flops():
    try:
        with open(os.path.join(CACHE_DIR, PEAK_FLOPS_FILE)) as f:
            return {k: tuple(v) for k, v in json.load(f).items()}
    except (OSError, ValueError, TypeError):
        return {}


def store_peak_flops():
    """Measure this machine's matmul peak for the training dtype once (prepare, and each worker's
    `--fingerprint` in the trials' environment), so no training process spends its start-up on it
    (MFU is for display only; it never changes the metric). Returns get_peak_flops's answer."""
    dtype = mx.bfloat16 if mx.default_device().type == mx.gpu else mx.float32
    flops, how = get_peak_flops(dtype)
    if "measured now" in how:
        info = _device_info()
        name = str(info.get("device_name", "")) or platform.processor() or platform.machine()
        stored = {k: list(v) for k, v in _stored_peak_flops().items()}
        stored[_peak_key(dtype, name)] = list(_MEASURED_PEAK[(str(dtype), name)])
        try:
            _write_json(os.path.join(CACHE_DIR, PEAK_FLOPS_FILE), stored)
        except OSError:
            pass            # a read-only cache: the training process measures it itself
    return flops, how

# ---------------------------------------------------------------------------
# Evaluation (DO NOT CHANGE — this is the fixed metric)
# ---------------------------------------------------------------------------

def eval_rows_path(split):
    """The split's evaluation rows as tokenized by prepare.py (int32 .npy); hidden from training."""
    return os.path.join(EVAL_DIR, f"{split}.npy")


def _pack_eval_rows(tokenizer, split, n_rows):
    rows = _packed_rows(tokenizer, MAX_SEQ_LEN, split_files(split), split, 0, DOC_BUFFER)
    return np.stack([next(rows)[0] for _ in range(n_rows)])


def eval_rows(tokenizer, split="val"):
    """The fixed evaluation rows of a split: EVAL_TOKENS // MAX_SEQ_LEN rows of MAX_SEQ_LEN + 1 tokens
    (int32 numpy), the same rows in the same order on every machine (val/test order ignores the seed).
    Read from the rows prepare.py tokenized once (a prefix of them when EVAL_TOKENS is smaller, as in a
    smoke run); tokenized here only when the cache has too few, which needs the tokenizer."""
    assert split in ("val", "test"), f"evaluation split must be 'val' or 'test', got {split!r}"
    n_rows = max(1, EVAL_TOKENS // MAX_SEQ_LEN)
    path = eval_rows_path(split)
    if os.path.exists(path):
        try:
            rows = np.load(path)
        except Exception as e:
            raise CacheError(f"corrupt evaluation rows {path} ({e!r})") from e
        if rows.ndim == 2 and rows.shape[0] >= n_rows and rows.shape[1] == MAX_SEQ_LEN + 1:
            return rows[:n_rows].astype(np.int32)
    if tokenizer is None:
        raise CacheError(f"no tokenized {split} rows for profile {PROFILE!r} (missing or short {path})")
    return _pack_eval_rows(tokenizer, split, n_rows)


# The cross-entropy is computed here from the model's logits, never by the model itself: a model's
# own loss (label smoothing, a different reduction, a bug) must not change what is measured.
# The MLX functions are bound as defaults when this module loads, before any candidate code runs.
def token_nats(logits, targets, _f32=mx.float32, _lse=mx.logsumexp, _take=mx.take_along_axis):
    """Per-token cross-entropy in nats: logsumexp(logits) - logits[target], in float32."""
    logits = logits.astype(_f32)
    return _lse(logits, axis=-1) - _take(logits, targets[..., None], axis=-1)[..., 0]


def bpb_of_rows(forward, rows, token_bytes, batch_size, _nats=token_nats, _log=math.log,
                _mx_array=mx.array, _sum=mx.sum, _eval=mx.eval):
    """Bits per byte of `forward` (inputs (B, T) -> logits (B, T, vocab)) on `rows` (eval_rows).
    Sums per-token nats and target byte lengths over all rows, then converts nats/byte to bits/byte.
    Special tokens (byte length 0) count in neither sum. One batch at a time, accumulated in
    Python floats, so the result does not depend on batch_size."""
    total_nats, total_bytes = 0.0, 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        x, y = _mx_array(chunk[:, :-1]), _mx_array(chunk[:, 1:])
        logits = forward(x)
        want = (*x.shape, token_bytes.shape[0])
        if tuple(logits.shape) != want:
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}, expected {want} "
                             f"(batch, sequence, vocab)")
        nbytes = token_bytes[y]
        nats = _sum(_nats(logits, y) * (nbytes > 0))
        nb = _sum(nbytes)
        _eval(nats, nb)
        total_nats += nats.item()
        total_bytes += nb.item()
    return total_nats / (_log(2) * total_bytes)


def evaluate_bpb(model, tokenizer, batch_size=None, split="val"):
    """
    Bits per byte (BPB): vocab size-independent evaluation metric, on the fixed rows of a split
    (eval_rows). The model is asked for logits only (model(x)); the cross-entropy is computed
    here (bpb_of_rows). batch_size is capped by EVAL_BATCH_SIZE to bound memory. The swarm runs
    the same computation in a separate process on the saved model (evaluate.py); the held-out
    split (test) is scored only there, never from train.py.
    """
    batch_size = min(batch_size or EVAL_BATCH_SIZE, EVAL_BATCH_SIZE)
    rows = eval_rows(tokenizer, split)
    was_training = getattr(model, "training", None)
    if was_training:
        model.eval()
    try:
        return bpb_of_rows(model, rows, get_token_bytes(), batch_size)
    finally:
        if was_training:
            model.train()

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def verify_cache():
    """Check that the cache is complete and matches this profile; returns the recomputed fingerprint."""
    profile_path = os.path.join(CACHE_DIR, "profile.json")
    if not os.path.exists(profile_path):
        raise CacheError(f"profile {PROFILE!r} is not prepared (missing {profile_path})")
    with open(profile_path) as f:
        recorded = json.load(f).get("constants", {})
    for k in METRIC_CONSTANTS:
        if recorded.get(k) != PROFILES[PROFILE][k]:
            raise CacheError(f"cache was prepared with {k}={recorded.get(k)}, profile {PROFILE!r} has "
                             f"{PROFILES[PROFILE][k]}")
    for split in ("train", "val", "test"):
        for p in split_files(split):
            if not _valid_parquet(p):
                raise CacheError(f"corrupt shard {p}; delete it and re-run prepare")
    fp = compute_fingerprint()
    if fp != data_fingerprint():
        raise CacheError("data or tokenizer changed since prepare (fingerprint mismatch)")
    check_eval_rows()
    return fp


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for autoresearch")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help="profile (default: $AUTORESEARCH_PROFILE or 'default')")
    parser.add_argument("--num-shards", type=int, default=10,
                        help="Number of training shards to download (-1 = all). Val and test shards are always pinned.")
    parser.add_argument("--download-workers", type=int, default=8, help="Number of parallel download workers")
    parser.add_argument("--source", default=None, help="local folder of .txt/.md/.jsonl/.parquet instead of climbmix")
    parser.add_argument("--base-url", default=None, help="climbmix mirror (default: $AUTORESEARCH_BASE_URL or HF)")
    parser.add_argument("--attempts", type=int, default=DOWNLOAD_ATTEMPTS, help="download tries per shard")
    parser.add_argument("--backoff", type=float, default=BACKOFF_BASE, help="first retry delay in seconds (doubles)")
    parser.add_argument("--fingerprint", action="store_true", help="verify the cache and print its fingerprint as JSON")
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["AUTORESEARCH_PROFILE"] = args.profile
        _set_profile(args.profile)

    if args.fingerprint:
        record = {**fingerprint_record(verify_cache()), **data_paths()}
        store_peak_flops()     # the worker runs this in its trials' environment: their peak, measured once
        print(json.dumps(record), flush=True)
        return

    print(f"Profile: {PROFILE} {json.dumps(PROFILES[PROFILE])}")
    print(f"Cache directory: {CACHE_DIR}")
    print()
    t0 = time.time()

    # Step 1: data (download climbmix shards, or split a local corpus)
    if args.source:
        prepare_local(args.source)
    else:
        num_shards = TEST_SHARD if args.num_shards == -1 else args.num_shards
        download_data(num_shards, download_workers=args.download_workers, base_url=args.base_url,
                      attempts=args.attempts, backoff=args.backoff)
    print()

    # Step 2: tokenizer
    train_tokenizer()
    print()

    # Step 3: evaluation rows, tokenized once; refuse data too small for a meaningful val_bpb
    tokenize_eval_rows()
    flops, how = store_peak_flops()
    print(f"Peak FLOP/s for MFU: {flops:.3e} ({how})")
    print()

    # Step 4: profile record + fingerprint
    manifest = _read_manifest()
    _write_json(os.path.join(CACHE_DIR, "profile.json"),
                dict(profile=PROFILE, constants=PROFILES[PROFILE], source=manifest["source"],
                     source_id=manifest["source_id"]))
    fp = compute_fingerprint()
    _write_json(os.path.join(CACHE_DIR, "fingerprint.json"), fingerprint_record(fp))
    print(f"Fingerprint: {fp}")
    print(f"Done in {time.time() - t0:.1f}s! Ready to train (AUTORESEARCH_PROFILE={PROFILE}).")


if __name__ == "__main__":
    main()
