"""
A stand-in research model behind the Messages API stand-in (tests/anthropic_standin.py),
so the real agent path (the `anthropic` SDK, the proposer's tool and its checks, the
implementer's file tools, the campaign) runs end to end without a language model.

It answers the way a competent model would, for any train.py whose tunable constants are
UPPER_CASE assignments (the synthetic target of tests/synthetic and the real train.py):

- propose (the request offers propose_hypotheses): reads the mainline train.py from the
  system blocks and answers with one propose_hypotheses call holding as many hypotheses as
  asked, each moving one numeric constant of its hyperparameter block (the first run of
  constant assignments: not the synthetic target's noise level further down) one step (floats x or / 1.2-2, small ints +-1..2,
  large ints x or / 2), never the same setting twice for one mainline. Every other one
  carries params; the others only name the change in their title, so only an implementer
  can make them.
- implement (the request offers replace_in_file): reads the hypothesis from the user turn
  and answers in one turn with replace_in_file on the constant's line, then done. A later
  turn (done was refused) ends with done, abandoning when a tool said it failed.
- anything else (the analyst's lab note): a short note as text.

Every reply carries plausible usage (input ~ request characters / 4, cache writes then
reads for the cached system blocks), so agent_usage records look like real ones.

    model = ResearchModel()
    with StandIn(responder=model, delay_s=20) as api: ...
    model.calls["propose"], model.calls["implement"], model.calls["other"]
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import threading
from collections import Counter
from typing import Any

from anthropic_standin import Reply, Request, _texts, message, text, tool_use, usage

from core.keys import params_key
from agents.constant_rewriter import coerce, format_value, read_constants
from agents.proposals import title_params

SEED = 0                         # same seed, same mainline text, same call order -> same hypotheses
FLOAT_FACTOR = (1.2, 2.0)        # a float constant is multiplied or divided by a factor in this range
INT_STEPS = (1, 2)               # a small int constant moves up or down by one of these
SMALL_INT = 16                   # ints from here on (sizes, dims) are doubled or halved instead
ZERO_TRIES = (0.05, 0.1, 0.2)    # values tried for a float constant at 0 (a warmup ratio)
SIG_DIGITS = 3                   # proposed floats are rounded to this many significant digits
DRAWS_PER_HYPOTHESIS = 50        # random draws before the model runs out of new ideas
OUTPUT_TOKENS = (200, 400)       # output tokens of one reply
CHARS_PER_TOKEN = 4
TRAIN_PY = "train.py"
FILE_HEADER = f"### {TRAIN_PY} (mainline)\n```python\n"   # how prompts.files_text embeds a file

_ASKED = re.compile(r"Propose (\d+) (?:new hypotheses|more)")


def _last_user(body: dict) -> dict:
    return next((m for m in reversed(body.get("messages") or []) if m.get("role") == "user"), {})


def _blocks(msg: dict) -> list:
    content = msg.get("content")
    return content if isinstance(content, list) else []


def mainline_file(body: dict) -> str | None:
    """The mainline train.py as embedded in the request's system blocks, or None."""
    system = body.get("system")
    for block in system if isinstance(system, list) else [{"text": system or ""}]:
        t = block.get("text") or ""
        at = t.find(FILE_HEADER)
        if at < 0:
            continue
        start = at + len(FILE_HEADER)
        end = t.find("\n```\n\n### ", start)   # the next file's header, else the block's last fence
        return t[start:end if end >= 0 else t.rfind("\n```")]
    return None


def tunable(train: str) -> dict:
    """{name: Constant} of the numeric constants in the first run of consecutive module-level
    constant assignments: the hyperparameter block."""
    by_line = {c.lineno: c for c in read_constants(train).values()}
    block, started = {}, False
    for stmt in ast.parse(train).body:
        c = by_line.get(stmt.lineno) if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
        if c is None:
            if started:
                break
            continue
        started = True
        if isinstance(c.value, (int, float)) and not isinstance(c.value, bool):
            block[c.name] = c
    return block


def _round(v: float) -> float:
    return float(f"{v:.{SIG_DIGITS}g}")


class ResearchModel:
    """Callable Request -> Reply for StandIn(responder=...); thread-safe."""

    def __init__(self, seed: int = SEED):
        self.seed = seed
        self.calls: Counter = Counter()             # "propose" | "implement" | "other"
        self._lock = threading.Lock()
        self._rngs: dict[str, random.Random] = {}   # per mainline text
        self._proposed: dict[str, set[str]] = {}    # params keys proposed per mainline text
        self._made = 0                              # hypotheses proposed (alternates params / none)
        self._cached: set[str] = set()              # cached prefixes already written
        self._tokens = random.Random(seed)

    def __call__(self, request: Request) -> Reply:
        tools = {t.get("name") for t in request.body.get("tools") or []}
        kind = ("propose" if "propose_hypotheses" in tools else
                "implement" if "replace_in_file" in tools else "other")
        with self._lock:
            self.calls[kind] += 1
            content = {"propose": self._propose, "implement": self._implement, "other": self._note}[kind](request)
            return message(content, model=request.body.get("model") or "claude-standin", use=self._usage(request))

    # -- proposing -----------------------------------------------------------------

    def _propose(self, request: Request) -> list[dict]:
        body = request.body
        train = mainline_file(body)
        if train is None:
            raise ValueError(f"no '{FILE_HEADER.splitlines()[0]}' block in the system prompt")
        asked = (_ASKED.search("\n".join(_texts(_last_user(body))))
                 or _ASKED.search("\n".join(_texts((body.get("messages") or [{}])[0]))))
        if asked is None:
            raise ValueError("the request does not say how many hypotheses to propose")
        digest = hashlib.sha256(train.encode()).hexdigest()
        rng = self._rngs.setdefault(digest, random.Random(f"{self.seed}:{digest}"))
        taken = self._proposed.setdefault(digest, set())
        constants = tunable(train)
        hyps = []
        for _ in range(int(asked.group(1))):
            step = self._new_step(rng, constants, taken)
            if step is None:
                break
            hyps.append(self._hypothesis(constants[step[0]], step[1]))
        if not hyps:
            return [text("I have no new single-constant hypotheses for this mainline.")]
        return [tool_use("propose_hypotheses", {"hypotheses": hyps})]

    def _new_step(self, rng: random.Random, constants: dict, taken: set[str]) -> tuple[str, Any] | None:
        """(name, new value) not proposed before for this mainline, or None when out of ideas."""
        for _ in range(DRAWS_PER_HYPOTHESIS if constants else 0):
            name = rng.choice(sorted(constants))
            new = self._step(rng, name, constants[name].value)
            if new is None or new == constants[name].value or params_key({name: new}) in taken:
                continue
            taken.add(params_key({name: new}))
            return name, new
        return None

    @staticmethod
    def _step(rng: random.Random, name: str, v: int | float) -> int | float | None:
        up = rng.random() < 0.5
        if isinstance(v, float):
            if v == 0:
                return rng.choice(ZERO_TRIES)
            f = rng.uniform(*FLOAT_FACTOR)
            new = _round(v * f if up else v / f)
            return min(new, 1.0) if ("RATIO" in name or "FRAC" in name) and v <= 1 else new
        if abs(v) >= SMALL_INT:
            return v * 2 if up else v // 2
        new = v + rng.choice(INT_STEPS) * (1 if up else -1)
        return new if new >= 1 or v < 1 else None

    def _hypothesis(self, c, new: Any) -> dict:
        old_src, new_src = c.source, format_value(new, c.source)
        small = isinstance(new, float) and abs(new) < 1.5 * abs(c.value) and abs(c.value) < 1.5 * abs(new)
        self._made += 1
        h = {"rationale": f"{c.name} is {old_src} on this mainline; {new_src} tests whether its optimum lies "
                          f"{'above' if new > c.value else 'below'}, the cheapest single-constant probe.",
             "expected_effect": "-0.005 bpb", "risk": "low" if small else "medium"}
        if self._made % 2:
            return {"title": f"{c.name} {old_src} -> {new_src}", **h, "params": {c.name: new}}
        return {"title": f"Rewrite {c.name}: {old_src} -> {new_src} in {TRAIN_PY}", **h}

    # -- implementing --------------------------------------------------------------

    def _implement(self, request: Request) -> list[dict]:
        body = request.body
        results = [b for b in _blocks(_last_user(body)) if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:  # a later turn: done was refused (compile error, failed smoke run)
            failed = [r for r in results if r.get("is_error")]
            if failed:
                why = " ".join(_texts(failed[-1]))[:300]
                return [tool_use("done", {"summary": f"giving up: {why}", "abandon": True})]
            return [tool_use("done", {"summary": "the change is complete"})]
        train = mainline_file(body)
        if train is None:
            raise ValueError(f"no '{FILE_HEADER.splitlines()[0]}' block in the system prompt")
        constants = read_constants(train)
        name, value = self._wanted("\n".join(_texts((body.get("messages") or [{}])[0])), constants)
        if name is None:
            return [tool_use("done", {"summary": "the hypothesis names no constant of train.py", "abandon": True})]
        c = constants[name]
        new_value = coerce(name, c.value, value)
        if new_value == c.value:
            return [tool_use("done", {"summary": f"{name} is already {c.source} on this mainline",
                                      "abandon": True})]
        line_start = train.rfind("\n", 0, c.start) + 1
        old = train[line_start:c.end]
        if train.count(old) != 1:  # make it unique: the whole line
            line_end = train.find("\n", c.end)
            old = train[line_start:line_end if line_end >= 0 else len(train)]
        new = train[line_start:c.start] + format_value(new_value, c.source) + old[c.end - line_start:]
        return [tool_use("replace_in_file", {"path": TRAIN_PY, "old": old, "new": new}),
                tool_use("done", {"summary": f"set {name} from {c.source} to {format_value(new_value, c.source)}"})]

    @staticmethod
    def _wanted(request_text: str, constants: dict) -> tuple[str | None, Any]:
        """(constant name, new value) from the hypothesis: its params, else its title."""
        params = re.search(r"^Params \(constant -> new value\): (.*)$", request_text, re.MULTILINE)
        title = re.search(r"^Title: (.*)$", request_text, re.MULTILINE)
        wanted = json.loads(params.group(1)) if params else title_params(title.group(1) if title else "")
        return next(((k, v) for k, v in wanted.items() if k in constants), (None, None))

    # -- anything else (the analyst) -----------------------------------------------

    @staticmethod
    def _note(request: Request) -> list[dict]:
        return [text("Lab note from the stand-in model\n\n"
                     "## Load-bearing\n- Nothing is confirmed yet beyond the noise floor.\n"
                     "## Kept failing\n- No repeated failure in the recent entries.\n"
                     "## Second-order effects\n- The evidence is too thin to tell.\n"
                     "## Try next\n- Keep probing one constant at a time, around the latest near-wins.")]

    # -- usage -----------------------------------------------------------------

    def _usage(self, request: Request) -> dict:
        """Input ~ characters / 4; the cached system blocks are a cache write the first time this
        prefix (tools and system) is seen, then reads."""
        system = request.body.get("system")
        cached = [b.get("text") or "" for b in system if b.get("cache_control")] if isinstance(system, list) else []
        prefix = hashlib.sha256(json.dumps([request.body.get("tools"), system], sort_keys=True).encode()).hexdigest()
        cached_tokens = sum(len(t) for t in cached) // CHARS_PER_TOKEN
        fresh = max(1, len(request.text()) // CHARS_PER_TOKEN - cached_tokens)
        write = cached_tokens if cached and prefix not in self._cached else 0
        self._cached.add(prefix)
        return usage(fresh, self._tokens.randint(*OUTPUT_TOKENS),
                     cache_read=cached_tokens - write, cache_write=write)
