"""An upstream-shaped autoresearch fork, read from its files without running them.

karpathy's autoresearch and its ports (MLX, ...) share one shape: prepare.py holds the fixed
constants (MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS), the cache paths (CACHE_DIR, DATA_DIR,
TOKENIZER_DIR, VAL_FILENAME) and the evaluation; train.py imports them, seeds itself with a
hard-coded call (`mx.random.seed(42)`, `torch.manual_seed(42)`) and prints a summary block with
a `val_bpb:` line. This module reads that shape with `ast` (a fork's prepare.py may import
torch or CUDA this machine has none of): the module-level constants whose values are plain
expressions (numbers, strings, f-strings, arithmetic, os.path.join/expanduser,
os.environ.get's default), the frameworks imported, the seeding calls.

    constants(prepare_source)            -> {"TIME_BUDGET": 300, "CACHE_DIR": "/home/u/.cache/autoresearch", ...}
    budget(prepare_source)               -> 300.0, or None
    inspect(fork_dir)                    -> Layout (what `swarm init` writes down)
    fingerprint(fork_dir)                -> {"fingerprint": sha256, "files": [...]}

`python -m worker.fork fingerprint` is the default fingerprint command of a fork (run in the
fork's folder): a hash of the tokenizer files and the validation shard prepare.py names.
"""

import ast
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The module that holds the fixed constants in upstream's shape, and the budget constant's name.
CONSTANTS_FILE = "prepare.py"
BUDGET_CONSTANT = "TIME_BUDGET"
# Constants that name the fork's cache (upstream: CACHE_DIR = ~/.cache/autoresearch, DATA_DIR and
# TOKENIZER_DIR under it, VAL_FILENAME the pinned validation shard inside DATA_DIR).
CACHE_CONSTANT, DATA_CONSTANT, TOKENIZER_CONSTANT, VAL_CONSTANT = "CACHE_DIR", "DATA_DIR", "TOKENIZER_DIR", "VAL_FILENAME"
# Frameworks a fork may train with, by the top-level module it imports.
FRAMEWORKS = {"mlx": "mlx", "torch": "pytorch", "jax": "jax"}
# Seeding functions a fork may call, by what the call looks like in its source.
SEED_CALLS = ("mx.random.seed", "mlx.core.random.seed", "torch.manual_seed", "torch.cuda.manual_seed",
              "torch.cuda.manual_seed_all", "np.random.seed", "numpy.random.seed", "random.seed")
# Bytes read per hashing step (shards are hundreds of MB).
HASH_CHUNK = 1 << 20


class ForkError(ValueError):
    """The fork is not upstream-shaped where it needs to be; the message says what to write."""


# ---------------------------------------------------------------------------
# Constants, by a small evaluator of plain expressions (never by importing the fork)


class _Unknown(Exception):
    pass


def constants(source: str, home: str | None = None) -> dict:
    """Module-level NAME = expr of `source` whose values are plain expressions; others are left out.
    `~` expands to `home` (default: this process's HOME)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ForkError(f"{CONSTANTS_FILE} does not parse: {e}") from None
    home = home or os.path.expanduser("~")
    env: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            continue
        try:
            env[name] = _eval(value, env, home)
        except _Unknown:
            env.pop(name, None)          # a later plain assignment may define it again
    return env


def _eval(node, env: dict, home: str):
    ev = lambda n: _eval(n, env, home)  # noqa: E731
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -ev(node.operand)
    if isinstance(node, ast.BinOp):
        ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Pow: lambda a, b: a ** b,
               ast.Mod: lambda a, b: a % b}
        if type(node.op) in ops:
            try:
                return ops[type(node.op)](ev(node.left), ev(node.right))
            except (TypeError, ValueError, ZeroDivisionError, OverflowError):
                raise _Unknown from None
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                spec = "".join(_eval(p, env, home) if isinstance(p, ast.FormattedValue) else p.value
                               for p in part.format_spec.values) if part.format_spec else ""
                try:
                    out.append(format(ev(part.value), spec))
                except (TypeError, ValueError):
                    raise _Unknown from None
            else:
                out.append(part.value)
        return "".join(out)
    if isinstance(node, ast.Call) and not node.keywords:
        fn = ast.unparse(node.func)
        if fn in ("os.path.join", "join"):
            return os.path.join(*[ev(a) for a in node.args])
        if fn in ("os.path.expanduser", "expanduser") and len(node.args) == 1:
            path = ev(node.args[0])
            return home + path[1:] if isinstance(path, str) and (path == "~" or path.startswith("~/")) else path
        if fn in ("os.environ.get", "os.getenv") and len(node.args) == 2:
            return ev(node.args[1])      # the fork's default: what it uses when nothing is set
        if fn in ("int", "float", "str") and len(node.args) == 1:
            try:
                return {"int": int, "float": float, "str": str}[fn](ev(node.args[0]))
            except (TypeError, ValueError):
                raise _Unknown from None
    raise _Unknown


def budget(source: str, name: str = BUDGET_CONSTANT) -> float | None:
    """The training budget (seconds) prepare.py sets, None when it sets none a reader can see."""
    value = constants(source).get(name)
    return float(value) if isinstance(value, int | float) and value > 0 else None


def budget_of(fork_dir, name: str = BUDGET_CONSTANT) -> float | None:
    path = Path(fork_dir) / CONSTANTS_FILE
    try:
        return budget(path.read_text(), name)
    except (OSError, ForkError):
        return None


# ---------------------------------------------------------------------------
# The whole shape: what `swarm init` writes down


@dataclass
class Layout:
    root: Path
    editable: list = field(default_factory=list)     # train.py
    fixed: list = field(default_factory=list)        # prepare.py (and other files train.py imports)
    framework: str | None = None                     # mlx | pytorch | jax | None
    constants_module: str | None = None              # "prepare" when prepare.py holds TIME_BUDGET
    budget: float | None = None                      # its value
    seeds: list = field(default_factory=list)        # the seeding calls of train.py, as written
    cache_dir: str | None = None                     # the fork's data cache (absolute)
    val_file: str | None = None                      # the validation shard prepare.py names
    tokenizer_dir: str | None = None
    eval_tokens_constant: bool = False               # EVAL_TOKENS is a constant: no short evaluation
    notes: list = field(default_factory=list)        # what was assumed or missing, in words


def inspect(fork_dir, home: str | None = None) -> Layout:
    """Read an upstream-shaped fork: its files, framework, constants, seeding and cache."""
    root = Path(fork_dir).expanduser().resolve()
    train = root / "train.py"
    if not train.is_file():
        raise ForkError(f"{root} has no train.py: `swarm init` reads upstream-shaped forks (prepare.py, "
                        "train.py, program.md); write target.toml by hand for other layouts (see the README)")
    out = Layout(root, editable=["train.py"])
    train_tree = _parse(train)
    imported = imported_modules(train)
    out.fixed = sorted(f"{m}.py" for m in imported if (root / f"{m}.py").is_file() and m != "train")
    prepare = root / CONSTANTS_FILE
    consts = {}
    if prepare.is_file():
        consts = constants(prepare.read_text(), home)
        imported |= imported_modules(prepare)
        if CONSTANTS_FILE not in out.fixed:
            out.fixed.insert(0, CONSTANTS_FILE)
    else:
        out.notes.append(f"no {CONSTANTS_FILE}: the budget and the cache must be set in target.toml")
    out.framework = next((FRAMEWORKS[m] for m in FRAMEWORKS if m in imported), None)
    if out.framework is None:
        out.notes.append("no known framework imported (mlx, torch, jax): seeds are offset only where "
                         "train.py calls numpy.random.seed or random.seed")
    if isinstance(consts.get(BUDGET_CONSTANT), int | float):
        out.constants_module, out.budget = "prepare", float(consts[BUDGET_CONSTANT])
    else:
        out.notes.append(f"{CONSTANTS_FILE} sets no {BUDGET_CONSTANT} a reader can see: set time_budget "
                         "in target.toml (seconds of training per trial)")
    out.seeds = sorted({ast.unparse(n.func) for n in ast.walk(train_tree)
                        if isinstance(n, ast.Call) and ast.unparse(n.func) in SEED_CALLS})
    if not out.seeds:
        out.notes.append("train.py calls none of the seeding functions the launcher offsets: every seed "
                         "would run the same (two seeds then differ only by nondeterminism)")
    cache = consts.get(CACHE_CONSTANT)
    if isinstance(cache, str) and os.path.isabs(cache):
        out.cache_dir = cache
    data_dir = consts.get(DATA_CONSTANT, cache)
    if isinstance(data_dir, str) and isinstance(consts.get(VAL_CONSTANT), str):
        out.val_file = os.path.join(data_dir, consts[VAL_CONSTANT])
    if isinstance(consts.get(TOKENIZER_CONSTANT), str):
        out.tokenizer_dir = consts[TOKENIZER_CONSTANT]
    if out.cache_dir is None:
        out.notes.append(f"{CONSTANTS_FILE} names no {CACHE_CONSTANT}: add the fork's data folder to "
                         "`data` in target.toml, and a fingerprint command")
    out.eval_tokens_constant = "EVAL_TOKENS" in consts
    return out


def _parse(path: Path):
    try:
        return ast.parse(path.read_text())
    except SyntaxError as e:
        raise ForkError(f"{path} does not parse: {e}") from None


def imported_modules(*files) -> set:
    """Top-level module names the given Python files import (anywhere in them)."""
    names = set()
    for f in files:
        try:
            tree = ast.parse(Path(f).read_text())
        except (OSError, SyntaxError, ValueError):
            continue
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                names |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                names.add(n.module.split(".")[0])
    return names


# ---------------------------------------------------------------------------
# The default fingerprint: the tokenizer files and the validation shard


def fingerprint(fork_dir, home: str | None = None) -> dict:
    """{"fingerprint", "files"}: sha256 over the tokenizer files and the validation shard
    prepare.py names (their names and bytes). Raises ForkError when they are not there."""
    layout = inspect(fork_dir, home)
    missing = [w for w, v in (("a validation shard (DATA_DIR + VAL_FILENAME)", layout.val_file),
                              ("a tokenizer folder (TOKENIZER_DIR)", layout.tokenizer_dir)) if not v]
    if missing:
        raise ForkError(f"{CONSTANTS_FILE} names no {' and no '.join(missing)}: write a fingerprint command "
                        "in target.toml that prints a hash of the fork's prepared data")
    tok = Path(layout.tokenizer_dir)
    files = sorted(p for p in tok.rglob("*") if p.is_file()) if tok.is_dir() else []
    val = Path(layout.val_file)
    if not files or not val.is_file():
        raise ForkError(f"no prepared data: {val if not val.is_file() else tok} is missing; run the fork's "
                        f"own `uv run prepare.py` in {layout.root}")
    h = hashlib.sha256()
    for p in [*files, val]:
        h.update(str(p.relative_to(tok) if p in files else p.name).encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
    # no time_budget: the worker takes target.toml's, else prepare.py's (a user's edit of target.toml wins)
    return {"fingerprint": h.hexdigest(), "files": [str(p) for p in [*files, val]]}


if __name__ == "__main__":
    # `python -m worker.fork fingerprint` in the fork's folder (the default fingerprint command)
    if sys.argv[1:] != ["fingerprint"]:
        print("usage: python -m worker.fork fingerprint   (in the fork's folder)", file=sys.stderr)
        sys.exit(2)
    try:
        print(json.dumps(fingerprint(Path.cwd())))
    except ForkError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
