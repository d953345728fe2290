"""
The coding-agent command backend: an external agent (Claude Code, Codex, ...)
run non-interactively as a subprocess.

CommandImplementer runs the user's command in the workspace (a scratch git
checkout of the mainline) with the hypothesis as the prompt: on stdin, in the
environment as SWARM_PROMPT, and in a file named by SWARM_PROMPT_FILE (also
substituted for {prompt_file} in the command; {prompt} substitutes the text).
The command runs in its own process group under a time limit; on timeout the
whole group is killed. Afterwards only changes to the editable files are kept:
every other change (fixed files, new files, commits, a switched branch) is
undone with git and reported as discarded. The coordinator then commits the
editable files as the candidate.

CommandProposer runs the same command in a scratch copy of the mainline's
files with a prompt asking for hypotheses as JSON in SWARM_OUTPUT_FILE; they
are checked and deduplicated like the Anthropic proposer's.

The command's environment is the coordinator's without the swarm's own
credentials (SWARM_JOURNAL, Redis, the Ray token, any URL with a password):
its own login (ANTHROPIC_API_KEY for `claude -p`, OPENAI_API_KEY, ...) stays.

Examples of commands (non-interactive modes; the command is split like a shell
would, but not run by one):
    claude -p --permission-mode acceptEdits      Claude Code, the prompt on stdin
    codex exec --full-auto {prompt}              Codex, the prompt as an argument
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from agents import prompts, proposals
from agents.base import AgentError, settings_from_dict
from agents.base import Hypothesis, ImplementationError, Implementer, Proposer, ResearchContext
from agents.tools import resolve_editable
from core.paths import is_editable
from core.proc import kill_tree, signal_group
from safety.gitsafe import agent_git_env, run_git
from safety.redact import agent_env

log = logging.getLogger(__name__)

TIMEOUT_S = 900.0            # one agent run (implement or propose)
KILL_GRACE_S = 3.0           # SIGTERM -> SIGKILL
OUTPUT_TAIL_CHARS = 4000     # of the agent's stdout+stderr kept for reports and errors
ENV_PROMPT_MAX = 100_000     # SWARM_PROMPT longer than this is replaced by a pointer to the file
                             # (Linux limits one environment string to 128 KiB)


@dataclass
class CommandConfig:
    command: str | list[str] = ""
    timeout_s: float = TIMEOUT_S
    editable: list[str] | None = None     # None: target.toml's editable list, else ["train.py"]
    env: dict = field(default_factory=dict)  # extra environment for the command
    name: str = "command"
    propose: bool = True                  # the factory also uses the command as the proposer

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | str | list | "CommandConfig" | None) -> "CommandConfig":
        if isinstance(d, CommandConfig):
            return d
        if isinstance(d, (str, list)):
            d = {"command": d}
        cfg = settings_from_dict(cls, d, "agent command")
        if not cfg.command or (isinstance(cfg.command, str) and not cfg.command.strip()):
            raise AgentError("no agent command configured: give one, e.g. 'claude -p'", kind="config")
        if not isinstance(cfg.timeout_s, (int, float)) or cfg.timeout_s <= 0:
            raise AgentError(f"agent command timeout must be > 0 seconds, got {cfg.timeout_s!r}", kind="config")
        return cfg

    def argv(self, prompt: str, prompt_file: str) -> list[str]:
        args = shlex.split(self.command) if isinstance(self.command, str) else [str(a) for a in self.command]
        return [a.replace("{prompt_file}", prompt_file).replace("{prompt}", prompt) for a in args]


@dataclass
class RunResult:
    returncode: int | None
    seconds: float
    output_tail: str
    timed_out: bool


def _env_prompt(prompt: str) -> str:
    if len(prompt) <= ENV_PROMPT_MAX:
        return prompt
    return "(the prompt is too long for the environment: read the file named by SWARM_PROMPT_FILE)"


def command_env(extra: Mapping[str, Any], **job: str) -> dict:
    """The command's environment: this process's plus the configured `extra`, without the swarm's
    own credentials (the journal URL, Redis, the Ray token: safety.redact.agent_env; the command's
    own API key stays), git set to run no hooks, then the job's SWARM_* variables."""
    env = agent_env({**os.environ, **{str(k): str(v) for k, v in extra.items()}})
    return {**env, **agent_git_env(), **job}


def run_command(argv: list[str], cwd: Path, prompt: str, env: Mapping[str, str], timeout_s: float) -> RunResult:
    """Run argv in cwd, prompt on stdin, output to a temp file, in its own process group,
    killed as a group after timeout_s."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                    env=dict(env), start_new_session=True)
        except FileNotFoundError:
            raise AgentError(f"agent command not found: {argv[0]!r} (is it installed and on PATH?)",
                             kind="config") from None
        except PermissionError:
            raise AgentError(f"agent command {argv[0]!r} is not executable", kind="config") from None
        except OSError as e:  # e.g. E2BIG: a {prompt} argument beyond the system's limit
            raise AgentError(f"could not start agent command {argv[0]!r}: {e} (pass the prompt on stdin "
                             f"or as {{prompt_file}} instead of {{prompt}})", kind="config") from None
        timed_out = False
        try:
            proc.communicate(input=prompt.encode("utf-8"), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_tree(proc, KILL_GRACE_S)
            try:
                proc.stdin.close()
            except OSError:
                pass
        else:
            # the leader exited; background children it left behind must not outlive the run
            signal_group(proc.pid, signal.SIGKILL)
        out.seek(0, os.SEEK_END)
        size = out.tell()
        out.seek(max(0, size - OUTPUT_TAIL_CHARS * 4))
        tail = out.read().decode("utf-8", errors="replace")[-OUTPUT_TAIL_CHARS:]
    return RunResult(proc.returncode, time.monotonic() - t0, tail, timed_out)


# ---------------------------------------------------------------------------
# git helpers for the scratch checkout
# ---------------------------------------------------------------------------


def _git(ws: Path, *args: str, check: bool = True) -> str:
    r = run_git(["-c", "core.quotepath=off", *args], ws, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AgentError(f"git {' '.join(args)} failed in {ws}: {r.stderr.strip()[:500]}", kind="config")
    return r.stdout


def _z(text: str) -> list[str]:
    return [p for p in text.split("\0") if p]


def _changed_paths(ws: Path, base: str) -> list[str]:
    """Paths that differ from commit `base`: committed or not, staged or not, deleted, and
    untracked files that .gitignore does not ignore."""
    paths = set(_z(_git(ws, "diff", "--name-only", "-z", "--no-renames", base)))
    paths |= set(_z(_git(ws, "ls-files", "--others", "--exclude-standard", "-z")))
    return sorted(paths)


# ---------------------------------------------------------------------------
# Implementer
# ---------------------------------------------------------------------------


class CommandImplementer(Implementer):
    """Runs an external coding agent on one hypothesis in a scratch git checkout."""

    name = "command"

    def __init__(self, config: Mapping | str | list | CommandConfig | None = None, journal: Any = None):
        self.config = CommandConfig.from_dict(config)
        self.name = self.config.name
        self.journal = journal
        self.last_report: dict | None = None

    def drain_usage(self) -> list[dict]:
        return []  # an external agent's tokens are not visible here

    def implement(self, h: Hypothesis, workspace: Path) -> dict:
        ws = Path(workspace).resolve()
        if not (ws / ".git").exists():
            raise AgentError(f"workspace {ws} is not a git checkout: the command backend needs one to tell "
                             f"what the agent changed", kind="config")
        editable = resolve_editable(self.config.editable, ws)
        base = _git(ws, "rev-parse", "HEAD").strip()
        dirty = _changed_paths(ws, base)
        if dirty:
            raise AgentError(f"workspace {ws} has uncommitted changes ({', '.join(dirty[:5])}): the command "
                             f"backend needs a clean checkout of the mainline", kind="config")
        branch = _git(ws, "symbolic-ref", "-q", "HEAD", check=False).strip()
        program = ws / "program.md"
        prompt = prompts.command_prompt(h, program.read_text(encoding="utf-8") if program.is_file() else "", editable)

        with tempfile.TemporaryDirectory(prefix="swarm-agent-") as tmp:
            prompt_file = Path(tmp) / "prompt.md"
            prompt_file.write_text(prompt, encoding="utf-8")
            env = command_env(self.config.env, SWARM_PROMPT=_env_prompt(prompt),
                              SWARM_PROMPT_FILE=str(prompt_file), SWARM_EDITABLE=" ".join(editable),
                              SWARM_HYPOTHESIS_ID=h.hypothesis_id, SWARM_WORKSPACE=str(ws))
            argv = self.config.argv(prompt, str(prompt_file))
            log.info("%s: running %s on %r", self.name, argv[0], h.title)
            result = run_command(argv, ws, prompt, env, self.config.timeout_s)

        kept, discarded = self._keep_editable(ws, base, branch, editable)
        report = {
            "hypothesis_id": h.hypothesis_id,
            "changed": sorted(kept),
            "discarded": discarded,
            "returncode": result.returncode,
            "seconds": round(result.seconds, 1),
            "output_tail": result.output_tail,
        }
        self.last_report = report
        if discarded:
            log.warning("%s: discarded changes to non-editable paths: %s", self.name, ", ".join(discarded))
        if result.timed_out:
            self._restore_all(ws, base)
            raise ImplementationError(f"agent command timed out after {self.config.timeout_s:g} s "
                                      f"(hypothesis {h.hypothesis_id}: {h.title})")
        if result.returncode != 0:
            self._restore_all(ws, base)
            raise ImplementationError(
                f"agent command exited with status {result.returncode}; output tail:\n"
                + prompts.truncate(prompts.clean(result.output_tail), 1500))
        if not kept:
            extra = f" (discarded changes to: {', '.join(discarded)})" if discarded else ""
            raise ImplementationError(f"the agent command changed no editable file ({', '.join(editable)}){extra}")
        return report

    @staticmethod
    def _keep_editable(ws: Path, base: str, branch: str, editable: list[str]) -> tuple[dict, list[str]]:
        """Undo everything but the editable files' new contents; (kept: path -> bytes|None,
        discarded paths)."""
        changed = _changed_paths(ws, base)
        keep = [p for p in changed if is_editable(p, editable)]
        discarded = [p for p in changed if not is_editable(p, editable)]
        saved = {p: ((ws / p).read_bytes() if (ws / p).is_file() and not (ws / p).is_symlink() else None)
                 for p in keep}
        # back to the checkout as handed over: same branch (if the agent switched), same commit
        # (if it committed), clean tree; ignored files (caches, a venv) stay
        now = _git(ws, "symbolic-ref", "-q", "HEAD", check=False).strip()
        if branch and now != branch:
            _git(ws, "checkout", "-q", "-f", branch.removeprefix("refs/heads/"))
        elif not branch:
            _git(ws, "checkout", "-q", "-f", "--detach", base)
        _git(ws, "reset", "-q", "--hard", base)
        _git(ws, "clean", "-q", "-fd")
        for p, data in saved.items():
            target = ws / p
            if data is None:
                if target.exists():
                    target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return saved, discarded

    @staticmethod
    def _restore_all(ws: Path, base: str) -> None:
        _git(ws, "reset", "-q", "--hard", base, check=False)
        _git(ws, "clean", "-q", "-fd", check=False)


# ---------------------------------------------------------------------------
# Proposer
# ---------------------------------------------------------------------------


class CommandProposer(Proposer):
    """Asks an external coding agent for hypotheses as JSON in $SWARM_OUTPUT_FILE."""

    name = "command"

    def __init__(self, config: Mapping | str | list | CommandConfig | None = None, journal: Any = None):
        self.config = CommandConfig.from_dict(config)
        self.name = self.config.name
        self._proposed: dict[tuple, set[str]] = {}

    def drain_usage(self) -> list[dict]:
        return []

    def propose(self, ctx: ResearchContext, n: int) -> list[Hypothesis]:
        if n <= 0:
            return []
        mine = self._proposed.setdefault((ctx.track, ctx.mainline_commit), set())
        with tempfile.TemporaryDirectory(prefix="swarm-propose-") as tmp:
            scratch = Path(tmp) / "repo"
            scratch.mkdir()
            for path, text in (ctx.files or {}).items():
                f = scratch / path
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(text, encoding="utf-8")
            (scratch / "program.md").write_text(ctx.program_md or "", encoding="utf-8")
            output = Path(tmp) / "hypotheses.json"
            prompt = prompts.command_propose_prompt(ctx, n, str(output))
            prompt_file = Path(tmp) / "prompt.md"
            prompt_file.write_text(prompt, encoding="utf-8")
            env = command_env(self.config.env, SWARM_PROMPT=_env_prompt(prompt),
                              SWARM_PROMPT_FILE=str(prompt_file), SWARM_OUTPUT_FILE=str(output),
                              SWARM_WORKSPACE=str(scratch))
            result = run_command(self.config.argv(prompt, str(prompt_file)), scratch, prompt, env,
                                 self.config.timeout_s)
            if result.timed_out:
                raise AgentError(f"agent command timed out after {self.config.timeout_s:g} s while proposing",
                                 kind="output")
            if result.returncode != 0:
                raise AgentError(f"agent command exited with status {result.returncode} while proposing; "
                                 f"output tail:\n" + prompts.truncate(prompts.clean(result.output_tail), 1500),
                                 kind="output")
            if not output.is_file():
                raise AgentError(f"the agent command wrote no hypotheses to $SWARM_OUTPUT_FILE ({output}); "
                                 f"make sure it can write files there", kind="output")
            raw = output.read_text(encoding="utf-8", errors="replace")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise AgentError(f"the agent's hypotheses file is not JSON ({e})", kind="output") from None
        if isinstance(data, list):
            data = {"hypotheses": data}
        try:
            hyps = proposals.validate_proposals(data, ctx, self.name)
        except proposals.ProposalError as e:
            raise AgentError(f"the agent's hypotheses are malformed: {e}", kind="output") from None
        kept, refused = proposals.refuse_duplicates(hyps, ctx, taken=mine)
        for h, why in refused:
            log.info("%s: refused %r: near-duplicate, %s", self.name, h.title, why)
        kept = kept[:n]
        for h in kept:
            mine.update(proposals.dedup_keys(h))
        return kept
