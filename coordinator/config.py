"""
The coordinator's configuration: one SwarmConfig, from flags over an optional
swarm.toml over the defaults below.

    cfg = load_config(flags={"workers": 2}, toml_path=None)   # None: <repo>/swarm.toml if present

Every key of swarm.toml is a field name of SwarmConfig (dashes or underscores).
Values are checked here, once, with errors that say what to write instead; the
rest of the coordinator trusts a SwarmConfig.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from core.stats import StatsConfig

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser from PyPI (a declared dependency there)
    import tomli as tomllib

CONFIG_FILE = "swarm.toml"          # looked up at the repo root when no --config is given
SWARM_DIR = ".swarm"                # coordinator files inside the research repo (git-ignored locally)
JOURNAL_ENV = "SWARM_JOURNAL"       # default journal location when --journal is not given
PASSED_ENV = ("AUTORESEARCH_PROFILE", "AUTORESEARCH_CACHE")  # handed to every worker's trials
AGENT_BACKENDS = ("offline", "auto", "anthropic", "command")   # agents/factory.py backends
SANDBOX_MODES = ("auto", "bwrap", "sandbox-exec", "off")      # worker/sandbox.py modes


class CampaignError(RuntimeError):
    """The campaign cannot start or go on; the message says what to do."""


class ConfigError(ValueError):
    """Bad configuration: the message names the key, the value and what to write instead."""


@dataclass
class SwarmConfig:
    campaign: str | None = None     # campaign tag; None: a new date tag (run) or the latest one (resume)
    repo: str = "."                 # the research repository (its git repo holds the mainlines)
    journal: str | None = None      # redis://:PW@host:port/db or a file; None: $SWARM_JOURNAL or .swarm/journal.db
    address: str | None = None      # Ray cluster address; None: start a local Ray
    workers: int | None = None      # local Ray: worker actors (default 1); cluster: cap (default: one per mlx)
    env: dict = field(default_factory=dict)  # extra env for trials (AUTORESEARCH_PROFILE/CACHE by default)
    time_budget: float | None = None  # seconds of training per trial; None: the profile's
    baseline_trials: int = 5        # ok trials of a new mainline before it judges anything (its noise floor);
                                    # fewer costs power: 3 finds 83% of true 2σ wins, 5 finds 88% (docs/statistics.md)
    retest_trials: int = 4          # fresh seed pairs (merge, previous mainline) of a re-test's first look
    confidence: float = 0.9         # one-sided, per candidate: P(a null change is merged) <= 1 - confidence
    retest_confidence: float = 0.9  # one-sided, per re-test: P(a null change is promoted) <= the product of the
                                    # two alphas (0.1 x 0.1 = 1%); a second independent test (docs/statistics.md)
    min_effect: float = 0.0         # smallest improvement worth a merge (metric units)
    max_seeds: int = 8              # trials per candidate (and per re-test) at most: the final look
    lease_s: float = 60.0           # a worker silent this long loses its trial (re-run elsewhere)
    until: float | None = None      # unix time to stop at (flags take "07:00", "8h", ISO dates)
    max_trials: int | None = None   # stop after this many trials finished in this run
    agent: str = "auto"             # auto (Anthropic with ANTHROPIC_API_KEY, else a configured command,
                                    # else offline) | offline | anthropic | command | package.module:factory
    agents: dict = field(default_factory=dict)  # backend settings (agents/factory.py): model, command, ...
    seed: int = 0                   # agent seed (same seed + same journal -> same hypotheses)
    buffer: int = 2                 # candidates kept ready per track beyond one per worker
    agent_threads: int | None = None  # agent calls in flight at once (a model backend: in its Ray actor);
                                      # 0: in the loop; None: 0 for the offline agent (milliseconds), else 8
    analyst_every: int = 10         # a lab note after this many verdicts; 0: no analyst
    workdir: str | None = None      # worker clones; None: <repo>/.swarm/workers
    smoke: bool = True              # short smoke run before a candidate's first trial
    heldout: bool = True            # evaluate the test split once per promotion
    sandbox: str = "auto"           # how trials are confined: auto (bubblewrap on Linux, sandbox-exec on
                                    # macOS) | bwrap | sandbox-exec | off (debugging only; journaled)
    poll_s: float = 0.5             # longest wait of the loop for a result before it looks around

    # -- derived -----------------------------------------------------------------
    @property
    def repo_path(self) -> Path:
        return Path(self.repo).expanduser().resolve()

    @property
    def swarm_dir(self) -> Path:
        return self.repo_path / SWARM_DIR

    @property
    def journal_url(self) -> str:
        if self.journal:
            return self.journal
        return str(self.swarm_dir / "journal.db")

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve() if self.workdir else self.swarm_dir / "workers"

    def stats_config(self, direction: str = "minimize"):
        looks = tuple(n for n in StatsConfig().looks if n < self.max_seeds)
        return StatsConfig(confidence=self.confidence, min_effect=self.min_effect,
                           max_trials=self.max_seeds, direction=direction, looks=looks)

    def to_dict(self) -> dict:
        """JSON-ready (the campaign_started event records it)."""
        return dataclasses.asdict(self)


# -----------------------------------------------------------------------------
# Parsing helpers

def parse_until(value, now: float | None = None) -> float | None:
    """'07:00' (next such time today/tomorrow), '8h'/'90m'/'45s' (from now), an ISO date-time,
    or a unix time -> unix time."""
    if value is None or value == "":
        return None
    now = time.time() if now is None else now
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, _dt.datetime):
        return value.timestamp()
    text = str(value).strip()
    m = re.fullmatch(r"\+?(\d+(?:\.\d+)?)\s*([hms])", text)
    if m:
        return now + float(m.group(1)) * {"h": 3600, "m": 60, "s": 1}[m.group(2)]
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if m:
        h, mi = int(m.group(1)), int(m.group(2))
        if h > 23 or mi > 59:
            raise ConfigError(f"until = {text!r}: not a time of day (HH:MM, 00:00-23:59)")
        today = _dt.datetime.fromtimestamp(now).replace(hour=h, minute=mi, second=0, microsecond=0)
        t = today.timestamp()
        return t if t > now else (today + _dt.timedelta(days=1)).timestamp()
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"until = {text!r}: write a time of day ('07:00'), a duration ('8h', '90m') "
                          "or an ISO date-time ('2026-03-05T07:00')") from None


def default_campaign_tag(now: float | None = None) -> str:
    """Upstream autoresearch style: the date, e.g. 'mar5'."""
    d = _dt.datetime.fromtimestamp(time.time() if now is None else now)
    return f"{d.strftime('%b').lower()}{d.day}"


def _norm_key(key: str) -> str:
    return key.replace("-", "_")


def _check(cfg: SwarmConfig) -> SwarmConfig:
    def need(ok, key, what):
        if not ok:
            raise ConfigError(f"{key} = {getattr(cfg, key)!r} is not valid: {what}")

    def is_int(v, lo):
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo

    def is_num(v, lo):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v > lo

    if cfg.campaign is not None:
        need(isinstance(cfg.campaign, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", cfg.campaign),
             "campaign", "use 1-100 letters, digits, '.', '_' or '-' (e.g. 'mar5')")
    need(cfg.workers is None or is_int(cfg.workers, 1), "workers", "a whole number >= 1")
    need(cfg.time_budget is None or is_num(cfg.time_budget, 0), "time_budget", "seconds > 0")
    need(is_int(cfg.baseline_trials, 2), "baseline_trials",
         "a whole number >= 2 (the noise floor needs repeated trials of the mainline)")
    need(is_int(cfg.retest_trials, 1), "retest_trials", "a whole number >= 1")
    need(is_num(cfg.confidence, 0.5) and cfg.confidence < 1, "confidence", "a number in (0.5, 1), e.g. 0.9")
    need(is_num(cfg.retest_confidence, 0.5) and cfg.retest_confidence < 1, "retest_confidence",
         "a number in (0.5, 1), e.g. 0.9")
    need(isinstance(cfg.min_effect, (int, float)) and cfg.min_effect >= 0, "min_effect", "a number >= 0 (bpb)")
    need(is_int(cfg.max_seeds, 2), "max_seeds", "a whole number >= 2")
    need(cfg.retest_trials <= cfg.max_seeds, "retest_trials", f"at most max_seeds ({cfg.max_seeds})")
    need(is_num(cfg.lease_s, 0), "lease_s", "seconds > 0")
    need(cfg.max_trials is None or is_int(cfg.max_trials, 1), "max_trials", "a whole number >= 1")
    need(isinstance(cfg.agent, str) and (cfg.agent in AGENT_BACKENDS or re.fullmatch(r"[\w.]+:\w+", cfg.agent)),
         "agent", f"one of {', '.join(AGENT_BACKENDS)} or 'package.module:factory'")
    need(isinstance(cfg.agents, dict), "agents", "a table of agent settings, e.g. { model = \"...\" }")
    need(is_int(cfg.seed, 0), "seed", "a whole number >= 0")
    need(is_int(cfg.buffer, 0), "buffer", "a whole number >= 0")
    need(cfg.agent_threads is None or is_int(cfg.agent_threads, 0), "agent_threads", "a whole number >= 0")
    need(is_int(cfg.analyst_every, 0), "analyst_every", "a whole number >= 0 (0: no lab notes)")
    need(is_num(cfg.poll_s, 0), "poll_s", "seconds > 0")
    need(cfg.sandbox in SANDBOX_MODES, "sandbox", f"one of {', '.join(SANDBOX_MODES)}")
    need(isinstance(cfg.env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in cfg.env.items()),
         "env", "a table of strings, e.g. { AUTORESEARCH_PROFILE = \"tiny\" }")
    if not cfg.repo_path.is_dir():
        raise ConfigError(f"repo = {cfg.repo!r}: no such directory (the research repository, e.g. '.')")
    return cfg


def load_config(flags: dict | None = None, toml_path: str | os.PathLike | None = None,
                environ: dict | None = None) -> SwarmConfig:
    """Defaults, then swarm.toml (toml_path, or <repo>/swarm.toml when present), then flags
    (keys whose value is None are 'not given'). Raises ConfigError on bad input."""
    environ = os.environ if environ is None else environ
    flags = {_norm_key(k): v for k, v in (flags or {}).items() if v is not None}
    names = {f.name for f in fields(SwarmConfig)}
    unknown = sorted(set(flags) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(names)}")

    repo = Path(flags.get("repo", ".")).expanduser()
    path = Path(toml_path).expanduser() if toml_path else repo / CONFIG_FILE
    from_file: dict = {}
    if toml_path and not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if path.is_file():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        raw = raw.get("swarm", raw)  # a [swarm] table or top-level keys
        from_file = {_norm_key(k): v for k, v in raw.items()}
        bad = sorted(set(from_file) - names)
        if bad:
            raise ConfigError(f"{path}: unknown key(s) {bad}; known keys: {sorted(names)}")
        if "repo" in from_file and "repo" not in flags:
            from_file["repo"] = str((path.parent / from_file["repo"]).resolve())

    values = {**from_file, **flags}
    values["agents"] = {**(from_file.get("agents") or {}), **(flags.get("agents") or {})}
    if "until" in values:
        values["until"] = parse_until(values["until"])
    for key in ("time_budget", "lease_s", "confidence", "retest_confidence", "min_effect", "poll_s"):
        if isinstance(values.get(key), int) and not isinstance(values.get(key), bool):
            values[key] = float(values[key])
    if values.get("journal") is None and environ.get(JOURNAL_ENV):
        values["journal"] = environ[JOURNAL_ENV]
    # a cluster's Macs keep their own cache paths (user names differ): only the profile travels
    passed = PASSED_ENV if values.get("address") is None else ("AUTORESEARCH_PROFILE",)
    env = {k: environ[k] for k in passed if environ.get(k)}
    env.update(values.get("env") or {})
    values["env"] = env
    return _check(SwarmConfig(**values))


def config_from_dict(d: dict) -> SwarmConfig:
    """A SwarmConfig recorded in the journal (campaign_started.config); unknown keys ignored."""
    names = {f.name for f in fields(SwarmConfig)}
    return SwarmConfig(**{k: v for k, v in d.items() if k in names})
