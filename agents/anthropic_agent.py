"""
Proposer and implementer on the Anthropic Messages API (the `anthropic` SDK).

AnthropicProposer asks the model for hypotheses through one tool,
propose_hypotheses, whose input is checked (prompts.validate_proposals); a
malformed input is answered with a tool error saying what to fix, and the model
tries again (bounded). Near-duplicates of what the journal holds for the same
mainline are refused (prompts.refuse_duplicates) and replacements asked for.

AnthropicImplementer lets the model edit the editable files of a workspace
through tools (view_file, replace_in_file, write_file: agents/tools.py), run a
smoke run of its change through a callback the coordinator gives, fix a crash
a bounded number of times, and call done.

The static context (role, program.md, the mainline's editable files) goes in
system blocks marked for prompt caching; the journal evidence follows in the
user turn. Every call is retried on rate limits, overload and connection
errors with exponential backoff and jitter, honouring retry-after, a bounded
number of times; a bad key or an unknown model fails at once with a message
saying what to fix. The API key is read from the environment only, when the
first call is made, and is never written anywhere.

Everything is a plain class constructible from a config dict, so an agent
actor can build it on another machine (agents/actor.py); the SDK client is
created lazily and dropped when pickled. `import anthropic` costs ~2 s, so it
happens inside the first call, not at import.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from agents import prompts
from agents.base import (AgentError, Hypothesis, ImplementationError, Implementer, Proposer, ResearchContext,
                         settings_from_dict)
from agents.tools import (
    DONE_TOOL_SPEC,
    FILE_TOOL_SPECS,
    SMOKE_TOOL_SPEC,
    FileTools,
    ToolError,
    editable_files,
    resolve_editable,
    run_file_tool,
)
from agents.usage import UsageMeter, usage_record

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Defaults (all overridable through the config dict)
# ---------------------------------------------------------------------------
DEFAULT_MODEL = "claude-sonnet-5-5"   # fast, good at code, $2/$10 per MTok
API_KEY_ENV = "ANTHROPIC_API_KEY"     # the only place the key is read from
BASE_URL_ENV = "ANTHROPIC_BASE_URL"   # proxies, gateways, the tests' local stand-in
MAX_TOKENS = 16000                    # per response, thinking included (train.py is ~7k tokens)
REQUEST_TIMEOUT_S = 600.0             # one HTTP request (16k output tokens at ~35 tok/s: ~460 s)
MAX_ATTEMPTS = 6                      # per call, on 429 / 529 / 5xx / connection errors
BACKOFF_BASE_S = 2.0                  # first retry waits ~this, doubling each time (with jitter)
BACKOFF_MAX_S = 60.0                  # cap of one wait (also caps a server's retry-after)
MAX_PROPOSE_ROUNDS = 3                # propose calls per propose(): malformed input / duplicates
MAX_TURNS = 30                        # implementer: model turns per hypothesis
MAX_SMOKE_FIXES = 2                   # implementer: failed smoke runs the model may fix

# Models that answer a forced tool_choice with a 400 (adaptive thinking always on).
# For other models the proposer forces its tool; on a 400 about tool_choice it
# switches to tool_choice=auto for the rest of the session anyway.
NO_FORCED_TOOL_PREFIXES = ("claude-sonnet-5-5", "claude-opus-5-5", "claude-fable-5-1",
                           "claude-mythos-5-1", "claude-haiku-5-5")


@dataclass
class AnthropicConfig:
    model: str = DEFAULT_MODEL
    max_tokens: int = MAX_TOKENS
    base_url: str | None = None           # None: $ANTHROPIC_BASE_URL, else the SDK's default
    api_key_env: str = API_KEY_ENV
    timeout_s: float = REQUEST_TIMEOUT_S
    max_attempts: int = MAX_ATTEMPTS
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_max_s: float = BACKOFF_MAX_S
    max_propose_rounds: int = MAX_PROPOSE_ROUNDS
    max_turns: int = MAX_TURNS
    max_smoke_fixes: int = MAX_SMOKE_FIXES
    force_tool_choice: bool | None = None  # None: by model (see NO_FORCED_TOOL_PREFIXES)
    editable: list[str] | None = None      # None: target.toml's editable list, else ["train.py"]
    request_extra: dict = field(default_factory=dict)  # passed to messages.create (e.g. output_config)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "AnthropicConfig" | None) -> "AnthropicConfig":
        if isinstance(d, AnthropicConfig):
            return d
        cfg = settings_from_dict(cls, d, "Anthropic agent")
        if not isinstance(cfg.model, str) or not cfg.model:
            raise AgentError("the Anthropic model must be a model id such as claude-sonnet-5-5: set --model",
                             kind="config")
        for name in ("max_tokens", "max_attempts", "max_propose_rounds", "max_turns"):
            if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
                raise AgentError(f"{name} must be a positive integer, got {getattr(cfg, name)!r}", kind="config")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def _retry_after(exc: Any) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms / retry-after headers), if any."""
    resp = getattr(exc, "response", None)
    headers = getattr(resp, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        v = headers.get(name)
        if v is None:
            continue
        try:
            return max(0.0, float(v) * scale)
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
    return None


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return f"{err.get('type', 'error')}: {err['message']}"
    return str(getattr(exc, "message", None) or exc)


def _error_type(exc: Any) -> str | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("type")
    return None


class AnthropicClient:
    """messages.create with our retry policy, error messages and usage accounting."""

    def __init__(self, config: AnthropicConfig | Mapping | None = None, agent: str = "anthropic",
                 usage: UsageMeter | None = None, sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[], float] = random.random):
        self.config = AnthropicConfig.from_dict(config)
        self.agent = agent
        self.usage = usage if usage is not None else UsageMeter()
        self.sleep = sleep
        self.jitter = jitter
        self._sdk = None
        self._force_tool: bool | None = self.config.force_tool_choice

    def __getstate__(self):  # the SDK client (connections, the key) is never pickled
        state = dict(self.__dict__)
        state["_sdk"] = None
        return state

    # -- the SDK client --------------------------------------------------------

    def _key(self) -> str:
        key = os.environ.get(self.config.api_key_env, "").strip()
        if not key:
            raise AgentError(
                f"{self.config.api_key_env} is not set: export your Anthropic API key to use the "
                f"Anthropic agent, or leave it unset to use the offline agent", kind="auth")
        return key

    def sdk(self):
        if self._sdk is None:
            key = self._key()
            import anthropic  # ~2 s: only when the first call is made

            self._sdk = anthropic.Anthropic(
                api_key=key,
                base_url=self.config.base_url or os.environ.get(BASE_URL_ENV) or None,
                max_retries=0,  # our own loop below: bounded, logged, honouring retry-after
                timeout=self.config.timeout_s,
            )
        return self._sdk

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.config.api_key_env, "").strip()
        return text.replace(key, "[API key]") if key and len(key) >= 8 else text

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.config.backoff_max_s)
        base = self.config.backoff_base_s * 2 ** (attempt - 1)
        return min(self.config.backoff_max_s, base * (0.5 + 0.5 * self.jitter()))

    # -- calls -----------------------------------------------------------------

    def create(self, purpose: str, **kwargs: Any):
        """One Messages API call (model and max_tokens from the config unless given); returns
        the SDK's Message. Raises AgentError with an actionable message."""
        cfg = self.config
        params = {"model": cfg.model, "max_tokens": cfg.max_tokens, **cfg.request_extra, **kwargs}
        model = params["model"]
        sdk = self.sdk()
        import anthropic

        last_kind, last_msg = "api", ""
        for attempt in range(1, cfg.max_attempts + 1):
            t0 = time.monotonic()
            retry_after = None
            try:
                resp = sdk.messages.create(**params)
            except anthropic.AuthenticationError:
                raise AgentError(f"bad API key: check {cfg.api_key_env} (the API answered 401)",
                                 kind="auth", status=401) from None
            except anthropic.PermissionDeniedError as e:
                raise AgentError(self._scrub(f"the API key in {cfg.api_key_env} may not use {model!r} "
                                             f"(403: {_api_message(e)})"), kind="auth", status=403) from None
            except anthropic.NotFoundError as e:
                raise AgentError(self._scrub(f"unknown model {model!r}: set --model to a model your key "
                                             f"can use (404: {_api_message(e)})"), kind="model", status=404) from None
            except anthropic.BadRequestError as e:
                msg = _api_message(e)
                if "model" in msg.lower() and any(w in msg.lower() for w in ("not found", "unknown", "invalid model",
                                                                             "does not exist")):
                    raise AgentError(self._scrub(f"unknown model {model!r}: set --model (400: {msg})"),
                                     kind="model", status=400) from None
                raise AgentError(self._scrub(f"the API rejected the {purpose} request (400: {msg})"),
                                 kind="bad_request", status=400) from None
            except anthropic.RateLimitError as e:
                last_kind, last_msg, retry_after = "rate_limit", _api_message(e), _retry_after(e)
            except anthropic.APIStatusError as e:
                status = getattr(e, "status_code", None)
                if status == 529 or _error_type(e) == "overloaded_error":
                    last_kind = "overloaded"
                elif status is not None and status >= 500:
                    last_kind = "server"
                else:
                    raise AgentError(self._scrub(f"the API answered {status} to the {purpose} request: "
                                                 f"{_api_message(e)}"), kind="api", status=status) from None
                last_msg, retry_after = f"{status} {_api_message(e)}", _retry_after(e)
            except anthropic.APIConnectionError as e:  # includes timeouts
                last_kind, last_msg = "connection", str(e)
            else:
                latency = time.monotonic() - t0
                self.usage.add(usage_record(self.agent, model, purpose, resp.usage, latency, attempts=attempt))
                return resp
            if attempt < cfg.max_attempts:
                delay = self._backoff(attempt, retry_after)
                log.warning("%s: %s on attempt %d/%d (%s); retrying in %.1f s", self.agent, last_kind, attempt,
                            cfg.max_attempts, self._scrub(last_msg)[:200], delay)
                self.sleep(delay)

        n = cfg.max_attempts
        last_msg = self._scrub(last_msg)[:300]
        if last_kind == "overloaded" or last_kind == "server":
            raise AgentError(f"Anthropic API overloaded after {n} attempts (last: {last_msg}); try again later",
                             kind="overloaded")
        if last_kind == "rate_limit":
            raise AgentError(f"Anthropic API rate limit still hit after {n} attempts (last: {last_msg}); "
                             f"run fewer agents or raise your rate limit", kind="rate_limit", status=429)
        base = cfg.base_url or os.environ.get(BASE_URL_ENV) or "https://api.anthropic.com"
        raise AgentError(f"could not reach the Anthropic API at {base} after {n} attempts ({last_msg})",
                         kind="connection")

    def create_with_tool(self, purpose: str, tool_name: str, **kwargs: Any):
        """create() asking for one tool: forced (tool_choice) where the model allows it, else
        tool_choice=auto. A 400 about forced tool use switches to auto for good."""
        if self._force_tool is None:
            self._force_tool = not self.config.model.startswith(NO_FORCED_TOOL_PREFIXES)
        if self._force_tool:
            try:
                return self.create(purpose, tool_choice={"type": "tool", "name": tool_name}, **kwargs)
            except AgentError as e:
                text = str(e).lower()
                if e.kind != "bad_request" or not ("tool_choice" in text or "forced tool" in text):
                    raise
                log.warning("%s: %s rejects forced tool use; using tool_choice=auto", self.agent,
                            self.config.model)
                self._force_tool = False
        return self.create(purpose, tool_choice={"type": "auto"}, **kwargs)


# ---------------------------------------------------------------------------
# Conversation helpers
# ---------------------------------------------------------------------------


def _blocks(resp: Any, kind: str) -> list:
    return [b for b in (resp.content or []) if getattr(b, "type", None) == kind]


def _text(resp: Any) -> str:
    return "\n".join(getattr(b, "text", "") or "" for b in _blocks(resp, "text")).strip()


def _tool_result(use_id: str, content: str, is_error: bool = False) -> dict:
    block = {"type": "tool_result", "tool_use_id": use_id, "content": content}
    if is_error:
        block["is_error"] = True
    return block


def _with_rolling_cache(messages: list[dict]) -> list[dict]:
    """The messages with one cache breakpoint on the last block of the last user turn, so each
    turn of a long tool conversation reads the previous turns from the cache. (System blocks
    hold two breakpoints; the API allows four.)"""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        m = out[i]
        if m["role"] != "user":
            continue
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        content = [dict(b) if isinstance(b, dict) else b for b in content]
        if content and isinstance(content[-1], dict):
            content[-1]["cache_control"] = {"type": "ephemeral"}
        out[i] = {"role": "user", "content": content}
        break
    return out


# ---------------------------------------------------------------------------
# Proposer
# ---------------------------------------------------------------------------


class AnthropicProposer(Proposer):
    """Hypotheses from a model through the propose_hypotheses tool.

    config: AnthropicConfig fields (dict). journal: optional, gets agent_usage events.
    """

    name = "anthropic"

    def __init__(self, config: Mapping | AnthropicConfig | None = None, journal: Any = None, *,
                 client: AnthropicClient | None = None, name: str | None = None):
        if name:
            self.name = name
        self.usage = client.usage if client is not None else UsageMeter(journal)
        self.client = client or AnthropicClient(config, agent=self.name, usage=self.usage)
        self.config = self.client.config
        self._proposed: dict[tuple, set[str]] = {}  # keys proposed per (track, mainline)

    def drain_usage(self) -> list[dict]:
        return self.usage.drain()

    def propose(self, ctx: ResearchContext, n: int) -> list[Hypothesis]:
        if n <= 0:
            return []
        mine = self._proposed.setdefault((ctx.track, ctx.mainline_commit), set())
        system = prompts.system_blocks(prompts.PROPOSER_ROLE, ctx.program_md, ctx.files)
        messages: list[dict] = [{"role": "user", "content": prompts.propose_request(ctx, n)}]
        accepted: list[Hypothesis] = []
        last_error = None
        rounds = self.config.max_propose_rounds
        for rnd in range(1, rounds + 1):
            resp = self.client.create_with_tool("propose", prompts.PROPOSE_TOOL["name"], system=system,
                                                messages=_with_rolling_cache(messages),
                                                tools=[prompts.PROPOSE_TOOL])
            messages.append({"role": "assistant", "content": resp.content})
            uses = [b for b in _blocks(resp, "tool_use") if b.name == prompts.PROPOSE_TOOL["name"]]
            others = [b for b in _blocks(resp, "tool_use") if b.name != prompts.PROPOSE_TOOL["name"]]
            results = [_tool_result(b.id, f"unknown tool {b.name!r}: call propose_hypotheses", True)
                       for b in others]
            if not uses:
                last_error = "the model answered without calling propose_hypotheses"
                if rnd == rounds:
                    break
                results.append({"type": "text", "text": "Answer by calling propose_hypotheses with your hypotheses."})
                messages.append({"role": "user", "content": results})
                continue
            refused: list[tuple[Hypothesis, str]] = []
            had_error = False
            for use in uses:
                try:
                    hyps = prompts.validate_proposals(use.input, ctx, self.name)
                except prompts.ProposalError as e:
                    had_error, last_error = True, str(e)
                    results.append(_tool_result(use.id, str(e), is_error=True))
                    continue
                taken = mine | {k for h in accepted for k in prompts.dedup_keys(h)}
                kept, ref = prompts.refuse_duplicates(hyps, ctx, taken=taken)
                accepted += kept
                refused += ref
                results.append(_tool_result(use.id, self._receipt(kept, ref)))
            missing = n - len(accepted)
            if missing <= 0 or (not had_error and not refused) or rnd == rounds:
                break
            if refused and not had_error:
                results.append({"type": "text", "text": f"Propose {missing} more, different from everything "
                                                        f"judged or proposed on this mainline."})
            messages.append({"role": "user", "content": results})
        if not accepted and last_error:
            raise AgentError(f"no usable hypotheses from {self.config.model} after {rounds} rounds: {last_error}",
                             kind="output")
        accepted = accepted[:n]
        for h in accepted:  # only what is handed out: extras may be proposed again later
            mine.update(prompts.dedup_keys(h))
            log.info("%s proposed %r", self.name, h.title)
        return accepted

    @staticmethod
    def _receipt(kept: list[Hypothesis], refused: list[tuple[Hypothesis, str]]) -> str:
        lines = [f"recorded {len(kept)} hypotheses"]
        for h, why in refused:
            lines.append(f"refused {h.title!r}: near-duplicate, {why}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Implementer
# ---------------------------------------------------------------------------

SmokeFn = Callable[[Path], Any]


def smoke_outcome(result: Any) -> tuple[bool, str, str]:
    """(ok, reason, log) from what a smoke callback returned: a bool, (ok, log), a dict with
    ok/status, reason, log_tail/log, or an object like worker.TrialResult (status == "ok")."""
    if isinstance(result, bool):
        return result, "" if result else "smoke run failed", ""
    if isinstance(result, tuple) and result and isinstance(result[0], bool):
        text = str(result[1]) if len(result) > 1 and result[1] is not None else ""
        return result[0], "" if result[0] else "smoke run failed", text
    get = (lambda k: result.get(k)) if isinstance(result, Mapping) else (lambda k: getattr(result, k, None))
    ok = get("ok")
    if ok is None:
        ok = get("status") == "ok"
    reason = get("reason") or get("crash_class") or ("" if ok else "smoke run failed")
    text = get("log_tail") or get("log") or ""
    return bool(ok), str(reason), str(text)


class AnthropicImplementer(Implementer):
    """Edits the editable files of a workspace through file tools driven by a model.

    smoke: optional callback(workspace) -> smoke result (see smoke_outcome), given by the
    coordinator; without it run_smoke tells the model that none is available here.
    """

    name = "anthropic"

    def __init__(self, config: Mapping | AnthropicConfig | None = None, journal: Any = None, *,
                 client: AnthropicClient | None = None, smoke: SmokeFn | None = None, name: str | None = None):
        if name:
            self.name = name
        self.usage = client.usage if client is not None else UsageMeter(journal)
        self.client = client or AnthropicClient(config, agent=self.name, usage=self.usage)
        self.config = self.client.config
        self.smoke = smoke
        self.last_report: dict | None = None

    def drain_usage(self) -> list[dict]:
        return self.usage.drain()

    def implement(self, h: Hypothesis, workspace: Path, smoke: SmokeFn | None = None) -> dict:
        workspace = Path(workspace)
        if not workspace.is_dir():
            raise ImplementationError(f"workspace {workspace} is not a directory: give a checkout of the mainline")
        smoke = smoke or self.smoke
        editable = resolve_editable(self.config.editable, workspace)
        tools = FileTools(workspace, editable)
        files = {p: tools.original[p] for p in editable_files(workspace, editable) if tools.original.get(p) is not None}
        program_path = workspace / "program.md"
        program_md = program_path.read_text(encoding="utf-8") if program_path.is_file() else ""
        system = prompts.system_blocks(prompts.IMPLEMENTER_ROLE, program_md, files)
        specs = FILE_TOOL_SPECS + [SMOKE_TOOL_SPEC, DONE_TOOL_SPEC]
        messages: list[dict] = [{"role": "user", "content": prompts.implement_request(h, editable, smoke is not None)}]

        run = _SmokeBook(self.config.max_smoke_fixes)
        for turn in range(1, self.config.max_turns + 1):
            resp = self.client.create("implement", system=system, messages=_with_rolling_cache(messages), tools=specs)
            messages.append({"role": "assistant", "content": resp.content})
            uses = _blocks(resp, "tool_use")
            if not uses:
                if resp.stop_reason == "max_tokens":
                    messages.append({"role": "user", "content": "Your answer was cut off. Continue with the tools; "
                                                                "make edits with replace_in_file."})
                    continue
                # The model stopped talking without done: accept a complete change, else give up.
                return self._finish(h, tools, smoke, workspace, run, turn, _text(resp) or "(no summary)")
            results = []
            for use in uses:
                args = use.input if isinstance(use.input, dict) else {}
                if use.name == "done" and args.get("abandon") is True:
                    raise ImplementationError(f"the model abandoned the hypothesis: "
                                              f"{prompts.truncate(str(args.get('summary') or ''), 300)}")
                if use.name == "done":
                    outcome = self._try_done(h, tools, smoke, workspace, run, turn, str(args.get("summary") or ""))
                    if isinstance(outcome, dict):
                        return outcome
                    results.append(_tool_result(use.id, outcome, is_error=True))
                elif use.name == "run_smoke":
                    text, is_error = self._run_smoke(h, tools, smoke, workspace, run)
                    results.append(_tool_result(use.id, text, is_error))
                else:
                    try:
                        results.append(_tool_result(use.id, run_file_tool(tools, use.name, args)))
                    except ToolError as e:
                        results.append(_tool_result(use.id, str(e), is_error=True))
            messages.append({"role": "user", "content": results})
        raise ImplementationError(f"no finished change after {self.config.max_turns} model turns "
                                  f"(hypothesis {h.hypothesis_id}: {h.title})")

    # -- smoke runs and finishing --------------------------------------------

    def _run_smoke(self, h: Hypothesis, tools: FileTools, smoke: SmokeFn | None, workspace: Path,
                   run: "_SmokeBook") -> tuple[str, bool]:
        """(tool result text, is_error). Raises ImplementationError when the fixes are used up."""
        if smoke is None:
            return "No smoke run is available here; the swarm runs one before training. Call done when finished.", False
        if not tools.changed():
            return "Nothing changed yet: edit the file first, then run the smoke run.", True
        errors = tools.compile_errors()
        if errors:
            ok, reason, text = False, "does not compile", "\n".join(f"{p}: {e}" for p, e in errors.items())
        else:
            try:
                ok, reason, text = smoke_outcome(smoke(workspace))
            except Exception as e:  # the callback's own failure is infrastructure, not the change
                raise AgentError(f"the smoke runner failed: {e}", kind="config") from e
        state = tools.state_hash()
        if ok:
            run.passed = state
            return "Smoke run passed.\n" + prompts.fence(text, "run-log", 1500), False
        run.failures += 1
        run.last_reason = reason
        if run.failures > run.max_fixes:
            raise ImplementationError(
                f"smoke run still failing after {run.max_fixes} fix attempt(s) ({reason}) "
                f"for hypothesis {h.hypothesis_id}: {h.title}")
        left = run.max_fixes - run.failures + 1
        return (f"Smoke run FAILED ({reason}). Log tail:\n" + prompts.fence(text, "run-log")
                + f"\nFix the cause and call run_smoke again ({left} more smoke run(s) allowed), or "
                  f"call done with abandon=true if the hypothesis cannot be implemented."), True

    def _try_done(self, h, tools, smoke, workspace, run, turn, summary) -> dict | str:
        """The report when the change is complete, else the reason (a tool error for the model)."""
        changed = tools.changed()
        if not changed:
            raise ImplementationError(f"the model finished without changing any editable file: "
                                      f"{prompts.truncate(summary, 300) or '(no reason given)'}")
        errors = tools.compile_errors()
        if errors:
            return "Not done: " + "; ".join(f"{p} does not compile ({e})" for p, e in errors.items()) + ". Fix it."
        if smoke is not None and run.passed != tools.state_hash():
            text, is_error = self._run_smoke(h, tools, smoke, workspace, run)
            if is_error:
                return "Not done: the smoke run of the current change failed.\n" + text
        return self._report(h, tools, run, turn, summary)

    def _finish(self, h, tools, smoke, workspace, run, turn, summary) -> dict:
        outcome = self._try_done(h, tools, smoke, workspace, run, turn, summary)
        if isinstance(outcome, dict):
            return outcome
        raise ImplementationError(f"the model stopped with an unfinished change: {outcome}")

    def _report(self, h, tools, run, turn, summary) -> dict:
        report = {
            "hypothesis_id": h.hypothesis_id,
            "changed": sorted(tools.changed()),
            "summary": prompts.truncate(summary, 500),
            "turns": turn,
            "smoke_failures": run.failures,
            "smoke_passed": run.passed is not None,
        }
        self.last_report = report
        log.info("%s implemented %r in %d turns (%s)", self.name, h.title, turn, ", ".join(report["changed"]))
        return report


@dataclass
class _SmokeBook:
    max_fixes: int
    failures: int = 0
    passed: str | None = None      # state hash of the last change that passed a smoke run
    last_reason: str = ""
