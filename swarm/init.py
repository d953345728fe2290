"""
`swarm init --repo FORK`: a commented target.toml for an upstream-shaped autoresearch fork.

It reads the fork (worker/fork.py: which framework train.py imports, where the budget constant
lives, how train.py seeds, where prepare.py caches its data, which files are fixed) and writes
a target.toml that runs the fork unchanged through the swarm's launcher (worker/launch.py),
then says what it assumed. Re-running it is safe: an identical file is left alone, and a
different one (edited by hand, or the fork changed) is never overwritten without --force; the
new version is printed instead.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

from worker.fork import BUDGET_CONSTANT, CONSTANTS_FILE, ForkError, Layout, inspect
from core.target import TARGET_FILE, Target, TargetError

# The metric line of upstream's summary block.
METRIC = r"^val_bpb:\s*([-+0-9.eE]+|nan|inf)"
# What each framework needs of a worker machine (said by `swarm init`, and in the README).
NEEDS = {"mlx": "runs on any worker (Metal on a Mac, the CPU on Linux)",
         "pytorch": "needs torch in the swarm's environment (`uv add torch`) and, for CUDA code, a worker "
                    "with an NVIDIA GPU; its results form tracks of their own",
         "jax": "needs jax in the swarm's environment (`uv add jax`) on every worker"}


def render(layout: Layout) -> str:
    """The target.toml text for a fork (comments say where each value came from)."""
    home = os.path.expanduser("~")
    q = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    tilde = lambda p: "~" + p[len(home):] if p == home or p.startswith(home + "/") else p  # noqa: E731
    lines = [f"# What the swarm runs for {layout.root.name}: written by `swarm init` from the fork's own files",
             "# (nothing in the fork is changed). Edit freely: `swarm init` never overwrites an edited file.",
             "# See the swarm's README, \"Your own autoresearch fork\".",
             f"name = {q(layout.root.name)}",
             f"editable = [{', '.join(q(f) for f in layout.editable)}]{' ' * 8}# files a candidate may change",
             f"fixed = [{', '.join(q(f) for f in layout.fixed)}]{' ' * 8}# byte-identical to the campaign's "
             "(sha256): constants, data, evaluation"]
    seeds = ", ".join(f"{s}(...)" for s in layout.seeds) or "none found"
    if layout.constants_module:
        lines += ["# train.py runs unchanged through the swarm's launcher: it sets "
                  f"{layout.constants_module}.{BUDGET_CONSTANT} to the trial's budget",
                  f"# before train.py imports it, and offsets train.py's own seeding calls ({seeds}) by the trial's seed.",
                  "run = \"{python} -m worker.launch --seed {seed} --budget {budget} "
                  f"--constants {layout.constants_module} --budget-name {BUDGET_CONSTANT} train.py\""]
    else:
        lines += [f"# {CONSTANTS_FILE} has no {BUDGET_CONSTANT}: the launcher only offsets the seeding calls ({seeds});",
                  "# train.py must keep the budget itself (the worker stops it at budget + start-up allowance).",
                  "run = \"{python} -m worker.launch --seed {seed} --budget {budget} --constants '' train.py\""]
    lines += ["# No `evaluate` command: the fork evaluates itself and prints val_bpb (values are marked self-reported).",
              f"metric = '{METRIC}'",
              "direction = \"minimize\""]
    if layout.val_file and layout.tokenizer_dir:
        lines += [f"# A sha256 of the tokenizer files ({tilde(layout.tokenizer_dir)}) and the validation shard",
                  f"# ({tilde(layout.val_file)}) the fork's {CONSTANTS_FILE} names: workers with other data form other tracks.",
                  "fingerprint = \"{python} -m worker.fork fingerprint\""]
    else:
        lines += [f"# {CONSTANTS_FILE} names no tokenizer folder or validation shard: write a command that prints",
                  "# a hash of the fork's prepared data (one line; JSON {\"fingerprint\": ...} or the hash itself).",
                  "fingerprint = \"{python} -c \\\"raise SystemExit('target.toml: write a fingerprint command')\\\"\""]
    if layout.budget:
        lines.append(f"# time_budget = {layout.budget:g}{' ' * 6}# default: {CONSTANTS_FILE}'s {BUDGET_CONSTANT}; "
                     "--time-budget overrides both")
    else:
        lines.append(f"time_budget = 300{' ' * 8}# seconds of training per trial ({CONSTANTS_FILE} sets none)")
    if layout.cache_dir:
        lines.append(f"data = [{q(tilde(layout.cache_dir))}]{' ' * 4}# the fork's data cache: read-only in the "
                     "trial's sandbox")
    else:
        lines.append("data = []                # the fork's data folder(s): read-only in the trial's sandbox")
    if layout.eval_tokens_constant:
        lines += ["# The fork's evaluation cannot be shortened (EVAL_TOKENS is a constant of the fixed "
                  f"{CONSTANTS_FILE}):", "# a smoke run would be a full evaluation, so there is none.",
                  "smoke = false"]
    else:
        lines += ["smoke = false            # no smoke run: a fork's evaluation has no short mode the swarm knows"]
    return "\n".join(lines) + "\n"


def assumptions(layout: Layout) -> list[str]:
    """What `swarm init` assumed, one line each."""
    out = [f"framework: {layout.framework or 'none found'}"
           + (f": {NEEDS[layout.framework]}" if layout.framework in NEEDS else ""),
           f"editable: {', '.join(layout.editable)}; fixed: {', '.join(layout.fixed) or 'nothing'}"]
    if layout.constants_module:
        out.append(f"budget: {layout.constants_module}.{BUDGET_CONSTANT} = {layout.budget:g} s (the launcher sets it "
                   "to each trial's budget)")
    out.append(f"seeding: {', '.join(layout.seeds) or 'none found'} (offset by each trial's seed; seed 0 is the "
               "fork's own run)")
    if layout.cache_dir:
        there = "prepared" if Path(layout.cache_dir).is_dir() else "NOT prepared yet: run the fork's own " \
                f"`uv run {CONSTANTS_FILE}` in {layout.root}"
        out.append(f"data cache: {layout.cache_dir} ({there}); read-only inside each trial's sandbox")
    if layout.val_file:
        out.append(f"validation shard: {layout.val_file}: the fork evaluates inside train.py, so the sandbox cannot "
                   "hide it from training (values are self-reported)")
    out += [f"note: {n}" for n in layout.notes]
    return out


def configure_parser(parser):
    parser.description = "Write a commented target.toml for an upstream-shaped autoresearch fork."
    parser.add_argument("--repo", default=".", help="the fork's folder (default: .)")
    parser.add_argument("--force", action="store_true", help="overwrite a target.toml that differs")
    return parser


def run(args) -> int:
    root = Path(args.repo).expanduser().resolve()
    try:
        layout = inspect(root)
    except ForkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = render(layout)
    try:
        Target.from_toml(text, "the generated target.toml")   # a bug here must never reach a campaign
    except TargetError as e:
        print(f"error: swarm init wrote an invalid target.toml ({e}); please report it", file=sys.stderr)
        return 2
    path = root / TARGET_FILE
    print(f"swarm init: {root}")
    for line in assumptions(layout):
        print(f"  {line}")
    old = path.read_text() if path.exists() else None
    if old == text:
        print(f"{path} is already up to date: nothing written")
    elif old is not None and not args.force:
        diff = difflib.unified_diff(old.splitlines(), text.splitlines(), "target.toml (yours)",
                                    "target.toml (swarm init)", lineterm="")
        print("\n".join(diff))
        print(f"{path} exists and differs (edited by hand, or the fork changed): left as it is. "
              "Apply the lines above yourself, or run `swarm init --force` to overwrite it.")
        return 1
    else:
        path.write_text(text)
        print(f"wrote {path}" + (" (overwrote the previous one)" if old is not None else ""))
    steps = []
    if not _committed(root, TARGET_FILE):
        steps.append(f"commit it (`git -C {root} add {TARGET_FILE} && git -C {root} commit -m 'swarm target'`: "
                     "a campaign starts from the last commit)")
    steps += [f"prepare the data with the fork's own `uv run {CONSTANTS_FILE}` in its folder on every worker",
              f"`uv run swarm doctor --repo {root}`", f"`uv run swarm run --repo {root}`"]
    print("next: " + "; ".join(steps))
    return 0


def _committed(root: Path, path: str) -> bool:
    """The file is in the fork's last commit, as it is on disk."""
    from safety.gitsafe import run_git
    p = run_git(["status", "--porcelain", "--untracked-files=all", "--", path], root, capture_output=True, text=True)
    return p.returncode == 0 and not p.stdout.strip()
