"""
The Anthropic Messages API client the proposer and implementer share (agents/anthropic_agent.py):
settings, retries and errors.

Every call is retried on rate limits, overload and connection errors with exponential backoff
and jitter, honouring retry-after, a bounded number of times; a bad key or an unknown model
fails at once with an AgentError saying what to fix. The API key is read from the environment
only, when the first call is made, and is never written anywhere (nor pickled: an agent actor
builds its client on its own machine). `import anthropic` costs ~2 s, so it happens inside the
first call, not at import.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from agents.base import AgentError, settings_from_dict
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
