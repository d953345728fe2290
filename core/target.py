"""The research target: which files a candidate may edit, how to run it, how to read its result.

A target is described by target.toml at the root of the research repository.
A missing file means this project's own target (train.py / prepare.py), so
upstream-style autoresearch forks work unchanged; a user pointing the swarm at
their own fork writes a few lines of TOML instead of changing the worker.
"""

import json
import re
import shlex
import sys
try:
    import tomllib
except ImportError:  # Python 3.10: the same parser from PyPI (a declared dependency there)
    import tomli as tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from core.paths import is_editable

# File name of the target config at the repository root.
TARGET_FILE = "target.toml"

# The defaults (CONTRACTS.md): what a missing target.toml means.
DEFAULTS = {
    "name": "autoresearch-mlx",
    "editable": ["train.py"],                      # paths (or glob patterns) a candidate may change
    "fixed": ["prepare.py", "evaluate.py"],        # paths that must be byte-identical to the campaign's
    "run": "{python} train.py --seed {seed} --time-budget {budget} --checkpoint {checkpoint}",
    # the fixed evaluator: scores the saved model in a process of its own (None: the metric is
    # read from the run's own output instead, "self-reported", as for upstream-shaped forks)
    "evaluate": "{python} evaluate.py --checkpoint {checkpoint} --split {split} --result {result}",
    "metric": r"^val_bpb:\s*([-+0-9.eE]+|nan|inf)",  # first group = the metric value (self-reported)
    "direction": "minimize",
    "fingerprint": "{python} prepare.py --fingerprint",
    "smoke_budget": 2,                             # seconds of training for the smoke run
    "smoke_env": {"AUTORESEARCH_EVAL_TOKENS": "2048"},
    # Additions beyond CONTRACTS.md (optional keys, same defaults for every target):
    "time_budget": None,       # budget when the fingerprint command does not say (foreign targets)
    "grace": 300,              # seconds of start-up allowed on top of the budget until the worker has
                               # measured its mainline's start-up (the worker's clock, see worker.py):
                               # it covers the untimed first step and the last step's overrun, 30-85 s
                               # each for a tiny-profile step on 2 busy CPU cores
    "data": [],                # further folders a trial may read in the sandbox (e.g. a fork's data cache)
    "smoke": True,             # false: no smoke run (a fork whose evaluation cannot be shortened would
                               # run a full evaluation as its smoke run)
}

# The run command of a target.toml that names no evaluator (and no run): upstream's own flags.
SELF_REPORTED_RUN = "{python} train.py --seed {seed} --time-budget {budget}"

# Placeholders a command template may use.
RUN_FIELDS = {"python", "seed", "budget", "checkpoint"}
EVALUATE_FIELDS = {"python", "checkpoint", "split", "result"}
FINGERPRINT_FIELDS = {"python"}


class TargetError(ValueError):
    """target.toml is malformed: the message names the key and what to write instead."""


@dataclass(frozen=True)
class Target:
    name: str = DEFAULTS["name"]
    editable: tuple = tuple(DEFAULTS["editable"])
    fixed: tuple = tuple(DEFAULTS["fixed"])
    run: str = DEFAULTS["run"]
    evaluate: str | None = DEFAULTS["evaluate"]
    metric: str = DEFAULTS["metric"]
    direction: str = DEFAULTS["direction"]
    fingerprint: str = DEFAULTS["fingerprint"]
    smoke_budget: float = DEFAULTS["smoke_budget"]
    smoke_env: dict = field(default_factory=lambda: dict(DEFAULTS["smoke_env"]))
    time_budget: float | None = DEFAULTS["time_budget"]
    grace: float = DEFAULTS["grace"]
    data: tuple = tuple(DEFAULTS["data"])
    smoke: bool = DEFAULTS["smoke"]

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict, where: str = TARGET_FILE) -> "Target":
        """Build and validate a target from parsed TOML; missing keys take the defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TargetError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        # a target.toml that names no evaluator reads its metric from the run's output (self-reported):
        # only this project's own target (no file, or a file that names it) has the fixed evaluator
        merged = {**DEFAULTS, "evaluate": None, **d}
        if merged["evaluate"] == "":
            merged["evaluate"] = None
        if merged["evaluate"] is None and "run" not in d:
            merged["run"] = SELF_REPORTED_RUN

        def need(key, ok, what):
            if not ok(merged[key]):
                raise TargetError(f"{where}: {key} = {merged[key]!r} is not valid; expected {what}")

        is_str_list = lambda v: isinstance(v, list | tuple) and all(isinstance(x, str) and x for x in v)
        is_num = lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        need("name", lambda v: isinstance(v, str) and v, "a non-empty string")
        need("editable", lambda v: is_str_list(v) and v, "a non-empty list of paths, e.g. [\"train.py\"]")
        need("fixed", is_str_list, "a list of paths, e.g. [\"prepare.py\"]")
        need("direction", lambda v: v in ("minimize", "maximize"), "\"minimize\" or \"maximize\"")
        need("smoke_budget", is_num, "a number of seconds > 0")
        need("grace", is_num, "a number of seconds > 0")
        need("smoke", lambda v: isinstance(v, bool), "true or false")
        need("time_budget", lambda v: v is None or is_num(v), "a number of seconds > 0")
        need("smoke_env", lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
             "a table of string values, e.g. { AUTORESEARCH_EVAL_TOKENS = \"2048\" }")
        for p in list(merged["editable"]) + list(merged["fixed"]):
            if p.startswith("/") or ".." in Path(p).parts:
                raise TargetError(f"{where}: path {p!r} must be relative to the repository root, without '..'")
        for p in merged["fixed"]:
            if any(ch in p for ch in "*?["):
                raise TargetError(f"{where}: fixed path {p!r} must be a plain path (it is hashed), not a pattern")
        clash = [p for p in merged["fixed"] if is_editable(p, merged["editable"])]
        if clash:
            raise TargetError(f"{where}: {clash} are both fixed and editable; a file is one or the other")
        try:
            pattern = re.compile(merged["metric"], re.MULTILINE)
        except (re.error, TypeError) as e:
            raise TargetError(f"{where}: metric = {merged['metric']!r} is not a regular expression: {e}") from None
        if pattern.groups < 1:
            raise TargetError(f"{where}: metric regex needs one group capturing the value, e.g. '^val_bpb:\\s*(\\S+)'")
        need("data", lambda v: isinstance(v, list | tuple) and all(isinstance(x, str) and x for x in v),
             "a list of folders, e.g. [\"~/.cache/autoresearch\"]")
        _check_template(where, "run", merged["run"], RUN_FIELDS)
        if merged["evaluate"] is not None:
            _check_template(where, "evaluate", merged["evaluate"], EVALUATE_FIELDS)
            if "{checkpoint}" not in merged["run"] or "{checkpoint}" not in merged["evaluate"]:
                raise TargetError(f"{where}: with an evaluate command, run and evaluate must both name "
                                  "{checkpoint} (the folder the run saves its model to and the evaluator reads)")
        _check_template(where, "fingerprint", merged["fingerprint"], FINGERPRINT_FIELDS)
        return cls(name=merged["name"], editable=tuple(merged["editable"]), fixed=tuple(merged["fixed"]),
                   run=merged["run"], evaluate=merged["evaluate"], metric=merged["metric"],
                   direction=merged["direction"],
                   fingerprint=merged["fingerprint"], smoke_budget=merged["smoke_budget"],
                   smoke_env=dict(merged["smoke_env"]), time_budget=merged["time_budget"],
                   grace=merged["grace"], data=tuple(merged["data"]), smoke=merged["smoke"])

    @classmethod
    def from_toml(cls, text: str, where: str = TARGET_FILE) -> "Target":
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise TargetError(f"{where}: not valid TOML: {e}") from None
        return cls.from_dict(d, where)

    @classmethod
    def load(cls, repo_dir) -> "Target":
        """The target of a checked-out repository: its target.toml, or the defaults when absent."""
        path = Path(repo_dir) / TARGET_FILE
        if not path.exists():
            return cls()
        return cls.from_toml(path.read_text(), str(path))

    # ---- use -----------------------------------------------------------------------------

    def is_editable(self, path: str) -> bool:
        return is_editable(path, self.editable)

    def run_command(self, seed: int, budget: float, python: str = sys.executable, checkpoint: str = "") -> list[str]:
        return _render(self.run, python=python, seed=int(seed), budget=fmt_seconds(budget), checkpoint=checkpoint)

    def evaluate_command(self, checkpoint: str, split: str, result: str, python: str = sys.executable) -> list[str]:
        return _render(self.evaluate, python=python, checkpoint=checkpoint, split=split, result=result)

    @property
    def self_reported(self) -> bool:
        """True when the metric comes from the run's own output (no fixed evaluator)."""
        return self.evaluate is None

    def fingerprint_command(self, python: str = sys.executable) -> list[str]:
        return _render(self.fingerprint, python=python)

    def metric_value(self, log_text: str) -> float | None:
        """The metric from a run's output (the last match wins), None when there is no metric line."""
        matches = re.findall(self.metric, log_text, re.MULTILINE)
        if not matches:
            return None
        last = matches[-1]
        value = last[0] if isinstance(last, tuple) else last
        try:
            return float(value)
        except ValueError:
            return None

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


def parse_fingerprint(stdout: str) -> dict:
    """What a fingerprint command printed: its last non-empty line, a JSON object with at least
    "fingerprint" (optionally "profile", "time_budget", "data_dirs", "eval_files"), or a bare
    value taken as the fingerprint. {} when it printed none."""
    lines = [line.strip() for line in (stdout or "").splitlines() if line.strip()]
    if not lines:
        return {}
    try:
        fp = json.loads(lines[-1])
    except ValueError:
        fp = lines[-1]
    if not isinstance(fp, dict):
        fp = {"fingerprint": str(fp)}
    return fp if fp.get("fingerprint") else {}


def track_name(hardware_class: str, profile: str, budget: float, fingerprint: str) -> str:
    """A track: results are compared only within one (same hardware class, data, profile, budget)."""
    return f"{hardware_class}/{profile}/{fmt_seconds(budget)}s/{fingerprint[:12]}"


def fmt_seconds(x: float) -> str:
    """60 -> '60', 2.5 -> '2.5': what a command line and a track name show."""
    return f"{float(x):g}"


def _render(template: str, **values) -> list[str]:
    # split first, then fill each word: a python path with spaces stays one argument
    return [word.format(**values) for word in shlex.split(template)]


def _check_template(where, key, template, allowed):
    if not isinstance(template, str) or not template.strip():
        raise TargetError(f"{where}: {key} must be a command line, e.g. {DEFAULTS[key]!r}")
    try:
        words = shlex.split(template)
        for w in words:
            w.format(**{k: "x" for k in allowed})
    except (ValueError, KeyError, IndexError) as e:
        raise TargetError(f"{where}: {key} = {template!r}: bad placeholder ({e}); "
                          f"available: {', '.join('{' + a + '}' for a in sorted(allowed))}") from None
