"""
Proposer and implementer on the Anthropic Messages API (the `anthropic` SDK).

AnthropicProposer asks the model for hypotheses through one tool,
propose_hypotheses, whose input is checked (proposals.validate_proposals); a
malformed input is answered with a tool error saying what to fix, and the model
tries again (bounded). Near-duplicates of what the journal holds for the same
mainline are refused (proposals.refuse_duplicates) and replacements asked for.

AnthropicImplementer lets the model edit the editable files of a workspace
through tools (view_file, replace_in_file, write_file: agents/tools.py), run a
smoke run of its change through a callback the coordinator gives, fix a crash
a bounded number of times, and call done.

The static context (role, program.md, the mainline's editable files) goes in
system blocks marked for prompt caching; the journal evidence follows in the
user turn.

Everything is a plain class constructible from a config dict, so an agent
actor can build it on another machine (agents/actor.py); the client, its
settings and its retries are agents/anthropic_client.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from agents import prompts, proposals
from agents.base import AgentError, Hypothesis, ImplementationError, Implementer, Proposer, ResearchContext
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
from agents.anthropic_client import AnthropicClient, AnthropicConfig
from agents.usage import UsageMeter

log = logging.getLogger(__name__)

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
            resp = self.client.create_with_tool("propose", proposals.PROPOSE_TOOL["name"], system=system,
                                                messages=_with_rolling_cache(messages),
                                                tools=[proposals.PROPOSE_TOOL])
            messages.append({"role": "assistant", "content": resp.content})
            uses = [b for b in _blocks(resp, "tool_use") if b.name == proposals.PROPOSE_TOOL["name"]]
            others = [b for b in _blocks(resp, "tool_use") if b.name != proposals.PROPOSE_TOOL["name"]]
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
                    hyps = proposals.validate_proposals(use.input, ctx, self.name)
                except proposals.ProposalError as e:
                    had_error, last_error = True, str(e)
                    results.append(_tool_result(use.id, str(e), is_error=True))
                    continue
                taken = mine | {k for h in accepted for k in proposals.dedup_keys(h)}
                kept, ref = proposals.refuse_duplicates(hyps, ctx, taken=taken)
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
            mine.update(proposals.dedup_keys(h))
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
