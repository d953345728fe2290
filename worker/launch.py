"""The launcher for upstream-shaped forks: the trial's seed and budget, no file of the fork changed.

An upstream-shaped train.py takes no flags: its budget is a constant it imports from prepare.py
(`from prepare import TIME_BUDGET`) and its seed a hard-coded call (`mx.random.seed(42)`,
`torch.manual_seed(42)`). The worker runs it through this module instead (target.toml's `run`):

    python -m worker.launch --seed 3 --budget 60 [--constants prepare] [--budget-name TIME_BUDGET] train.py

1. imports the fork's constants module (its own prepare.py: the fork's folder is first on the
   path) and sets its budget constant to --budget, before train.py imports it;
2. wraps the seeding functions of the frameworks the fork imports, so that seed(s) becomes
   seed(s + trial seed): seed 0 is the fork's own run, every other seed a different one;
3. runs train.py as __main__ (runpy), with its own name as argv[0].

It runs inside the trial's sandbox like the fork itself and writes nothing; a line on stderr
says what it set, and one at exit how many seeding calls it offset.
"""

import argparse
import atexit
import functools
import importlib
import numbers
import runpy
import sys
from pathlib import Path

from worker.fork import imported_modules

# Seeding functions offset by the trial's seed, by the module that holds them (attribute paths).
# Only modules the fork imports are touched: the launcher never imports torch for an MLX fork.
SEEDERS = {
    "mlx.core": ("random.seed",),
    "torch": ("manual_seed", "random.manual_seed", "cuda.manual_seed", "cuda.manual_seed_all"),
    "numpy": ("random.seed",),
    "random": ("seed",),
}
# Seeds numpy accepts: [0, 2**32); an offset seed wraps around instead of failing.
NUMPY_SEED_RANGE = 2 ** 32
# Keyword names the seeding functions above take the seed by.
SEED_KEYWORDS = ("seed", "a")


def offset_seeding(fn, by: int, modulo: int | None = None, calls: list | None = None):
    """fn wrapped so that an integer seed s becomes s + by (mod `modulo`); other seeds pass unchanged."""
    if getattr(fn, "__launch_offset__", None) is not None:      # wrapped twice (an alias): once is enough
        return fn

    @functools.wraps(fn)
    def seeded(*args, **kwargs):
        args, kwargs = list(args), dict(kwargs)
        key = 0 if args else next((k for k in SEED_KEYWORDS if k in kwargs), None)
        holder = args if args else kwargs
        if key is not None and isinstance(holder[key], numbers.Integral) and not isinstance(holder[key], bool):
            value = int(holder[key]) + by
            holder[key] = value % modulo if modulo else value
            if calls is not None:
                calls.append(f"{fn.__module__}.{fn.__name__}" if hasattr(fn, "__name__") else repr(fn))
        return fn(*args, **kwargs)

    seeded.__launch_offset__ = by
    return seeded


def patch_seeders(module_name: str, module, by: int, calls: list) -> list:
    """Wrap the seeding functions of one imported module; returns the dotted names wrapped."""
    done = []
    for path in SEEDERS[module_name]:
        *parents, name = path.split(".")
        owner = module
        try:
            for p in parents:
                owner = getattr(owner, p)
            fn = getattr(owner, name)
        except AttributeError:          # an older version without it (or no CUDA build)
            continue
        modulo = NUMPY_SEED_RANGE if module_name == "numpy" else None
        setattr(owner, name, offset_seeding(fn, by, modulo, calls))
        done.append(f"{module_name}.{path}")
    return done


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m worker.launch",
                                description="Run an upstream-shaped train.py with the trial's seed and budget.")
    p.add_argument("--seed", type=int, required=True, help="the trial's seed: added to every seed the fork sets")
    p.add_argument("--budget", type=float, required=True, help="seconds of training (sets the budget constant)")
    p.add_argument("--constants", default="prepare", help="module that holds the budget constant (default prepare)")
    p.add_argument("--budget-name", default="TIME_BUDGET", help="the budget constant's name (default TIME_BUDGET)")
    p.add_argument("script", help="the fork's training script, e.g. train.py")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its own arguments")
    a = p.parse_args(argv)

    script = Path(a.script)
    if not script.is_file():
        p.error(f"no {script} in {Path.cwd()}")
    sys.path.insert(0, str(script.resolve().parent))   # the fork's own modules come first
    budget = int(a.budget) if float(a.budget).is_integer() else a.budget
    said = []
    if a.constants:
        consts = importlib.import_module(a.constants)
        if not hasattr(consts, a.budget_name):
            sys.exit(f"launch: {a.constants} has no {a.budget_name}: set `run` in target.toml to pass the "
                     "budget another way (--budget-name NAME names the constant)")
        setattr(consts, a.budget_name, budget)
        said.append(f"{a.constants}.{a.budget_name} = {budget}")

    calls: list = []
    roots = imported_modules(script, *(m.__file__ for m in [sys.modules.get(a.constants)] if m and m.__file__))
    wrapped = []
    for name in SEEDERS:
        if name.split(".")[0] in roots:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue                 # the fork will fail on its own import, with its own message
            wrapped += patch_seeders(name, module, a.seed, calls)
    said.append(f"seed offset +{a.seed} on {', '.join(wrapped) or 'nothing (no seeding function imported)'}")
    print(f"launch: {'; '.join(said)}", file=sys.stderr, flush=True)
    atexit.register(lambda: print(f"launch: {len(calls)} seeding call(s) offset by +{a.seed}"
                                  f"{' (' + ', '.join(sorted(set(calls))) + ')' if calls else ''}",
                                  file=sys.stderr, flush=True))

    sys.argv = [str(script), *a.args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
