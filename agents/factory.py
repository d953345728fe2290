"""
Pick the agent backend from the configuration and build its proposer,
implementer and analyst.

- anthropic: ANTHROPIC_API_KEY is set in the environment (and the config does
  not turn the Anthropic backend off with `anthropic = false`);
- command: an agent command is configured (e.g. "claude -p");
- offline: otherwise, with a printed message saying so and what to set.

`backend` in the config forces one ("anthropic", "command", "offline"); the
default "auto" applies the order above.

The config is a plain dict (from the CLI or a campaign file, and what an agent
actor receives):

    {"backend": "auto",
     "model": "claude-sonnet-5-5",                 # shortcut for anthropic.model (--model)
     "anthropic": {"max_turns": 30, ...},          # AnthropicConfig fields, or false
     "command": "claude -p" | {"command": ..., "timeout_s": 900, "propose": true},
     "offline": {"seed": 0},
     "analyst": {"every": 10},
     "editable": ["train.py"],                     # default: target.toml's list
     "program_md": "..."}                          # for the analyst (proposers get it per call)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from agents.analyst import Analyst
from agents.anthropic_agent import AnthropicImplementer, AnthropicProposer
from agents.anthropic_client import API_KEY_ENV, AnthropicClient, AnthropicConfig
from agents.base import AgentError, Implementer, Proposer
from agents.usage import UsageMeter

BACKENDS = ("auto", "anthropic", "command", "offline")
CONFIG_KEYS = ("backend", "model", "anthropic", "command", "offline", "analyst", "editable", "program_md")

OFFLINE_MESSAGE = (
    "agents: no {env} set and no agent command configured: using the offline mutation agent "
    "(no language model; it tunes train.py's constants). Export {env} to use the Anthropic API, "
    "or configure an agent command (e.g. \"claude -p\") to use a coding agent."
)


@dataclass
class AgentSet:
    backend: str            # "anthropic" | "command" | "offline"
    proposer: Proposer
    implementer: Implementer
    analyst: Analyst
    message: str            # one line saying which backend and why

    def drain_usage(self) -> list[dict]:
        """Usage records of all three since the last drain (one API call each)."""
        out: list[dict] = []
        seen: set[int] = set()
        for part in (self.proposer, self.implementer, self.analyst):
            meter = getattr(part, "usage", None)
            if isinstance(meter, UsageMeter) and id(meter) not in seen:
                seen.add(id(meter))
                out += meter.drain()
        return out


def _check(config: Mapping[str, Any]) -> None:
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise AgentError(f"unknown agent setting(s) {unknown}; known: {list(CONFIG_KEYS)}", kind="config")
    backend = config.get("backend") or "auto"
    if backend not in BACKENDS:
        raise AgentError(f"agent backend must be one of {', '.join(BACKENDS)}, got {backend!r}", kind="config")


def choose_backend(config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(backend, message) for this config and environment; AgentError when a forced backend
    cannot run."""
    config = dict(config or {})
    _check(config)
    env = os.environ if env is None else env
    anthropic_cfg = config.get("anthropic")
    a = anthropic_cfg if isinstance(anthropic_cfg, Mapping) else {}
    key_env = a.get("api_key_env") or API_KEY_ENV
    has_key = bool(str(env.get(key_env, "")).strip())
    command = config.get("command")
    backend = config.get("backend") or "auto"
    model = config.get("model") or a.get("model") or AnthropicConfig().model

    if backend == "anthropic" or (backend == "auto" and has_key and anthropic_cfg is not False):
        if not has_key:
            raise AgentError(f"the anthropic agent backend needs {key_env} in the environment: export it, "
                             f"or choose another backend", kind="auth")
        return "anthropic", f"agents: Anthropic API, model {model} (key from ${key_env})"
    if backend == "command" or (backend == "auto" and command):
        if not command:
            raise AgentError("the command agent backend needs an agent command, e.g. \"claude -p\"", kind="config")
        cmd = command.get("command") if isinstance(command, Mapping) else command
        return "command", f"agents: coding-agent command {cmd!r}"
    if backend == "offline":
        return "offline", "agents: offline mutation agent (no language model), as configured"
    return "offline", OFFLINE_MESSAGE.format(env=key_env)


def make_agents(config: Mapping[str, Any] | None = None, journal: Any = None, *,
                smoke: Callable | None = None, env: Mapping[str, str] | None = None,
                announce: Callable[[str], None] | None = None) -> AgentSet:
    """The proposer, implementer and analyst of the chosen backend. The choice is announced
    on stderr (or through `announce`)."""
    config = dict(config or {})
    backend, message = choose_backend(config, env)
    (announce or (lambda m: print(m, file=sys.stderr, flush=True)))(message)
    editable = config.get("editable")
    analyst_cfg = dict(config.get("analyst") or {})
    program_md = config.get("program_md") or ""

    if backend == "anthropic":
        a_cfg = dict(config.get("anthropic") or {})
        if config.get("model"):
            a_cfg["model"] = config["model"]
        if editable and "editable" not in a_cfg:
            a_cfg["editable"] = list(editable)
        a_cfg = AnthropicConfig.from_dict(a_cfg)
        proposer = AnthropicProposer(a_cfg, journal)
        implementer = AnthropicImplementer(a_cfg, journal, smoke=smoke)
        client = AnthropicClient(a_cfg, agent="analyst", usage=UsageMeter(journal))
        analyst = Analyst(analyst_cfg, journal, client=client, program_md=program_md)
        return AgentSet(backend, proposer, implementer, analyst, message)

    if backend == "command":
        from agents.command_agent import CommandConfig, CommandImplementer, CommandProposer

        c = config["command"]
        c_cfg = dict(c) if isinstance(c, Mapping) else {"command": c}
        if editable and "editable" not in c_cfg:
            c_cfg["editable"] = list(editable)
        c_cfg = CommandConfig.from_dict(c_cfg)
        implementer = CommandImplementer(c_cfg, journal)
        proposer = CommandProposer(c_cfg, journal) if c_cfg.propose else _offline_proposer(config)
        return AgentSet(backend, proposer, implementer, Analyst(analyst_cfg, journal, program_md=program_md), message)

    from agents.offline import OfflineImplementer

    return AgentSet(backend, _offline_proposer(config), OfflineImplementer(),
                    Analyst(analyst_cfg, journal, program_md=program_md), message)


def _offline_proposer(config: Mapping[str, Any]) -> Proposer:
    from agents.offline import OfflineProposer

    return OfflineProposer(**dict(config.get("offline") or {}))


def coordinator_agents(cfg: Any, journal: Any = None) -> tuple[Proposer, Implementer]:
    """(proposer, implementer) in the shape the coordinator (coordinator/pipeline.py) loads with
    agent = "agents.factory:coordinator_agents". The agent settings come from cfg.agents
    (a dict as above) when the coordinator config has one; the offline agent gets cfg.seed.
    The coordinator drains and emits usage itself, so no journal is handed down (each
    record would otherwise be written twice)."""
    config = dict(getattr(cfg, "agents", None) or {})
    config.setdefault("offline", {"seed": getattr(cfg, "seed", 0)})
    agents = make_agents(config, None)
    return agents.proposer, agents.implementer
