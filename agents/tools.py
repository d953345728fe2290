"""
The implementer's file tools, confined to the target's editable files.

A language model edits a workspace (a checkout of the mainline) only through
these: view a file, replace a snippet that occurs exactly once, write a whole
file. Every path is checked before it is touched: relative, no "..", no
symlink, inside the workspace, and matching one of the target's editable
patterns (target.toml `editable`, e.g. ["train.py"]). Anything else is a
ToolError whose message goes back to the model as a tool error, so it can
correct itself; nothing outside the editable files is ever read or written.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path, PurePosixPath
from typing import Iterable

from core.paths import compile_error, escapes, inside, is_editable
from core.target import DEFAULTS, Target, TargetError

log = logging.getLogger(__name__)

MAX_VIEW_CHARS = 120_000   # view_file returns at most this much (train.py is ~25k)
MAX_WRITE_CHARS = 400_000  # write_file refuses larger contents


class ToolError(Exception):
    """A tool call that cannot be done; the message tells the model what to do instead."""


def editable_files(workspace: Path, patterns: Iterable[str]) -> list[str]:
    """Existing files in `workspace` that the patterns allow, as relative posix paths."""
    root = Path(workspace)
    found: set[str] = set()
    for p in patterns:
        if any(ch in p for ch in "*?["):
            for f in root.glob(p):
                rel = f.relative_to(root).as_posix()
                if f.is_file() and not f.is_symlink() and ".git" not in f.relative_to(root).parts:
                    found.add(rel)
        elif (root / p).is_file() and not (root / p).is_symlink():
            found.add(p)
    return sorted(found)


def resolve_editable(configured: Iterable[str] | None, workspace: Path | str | None = None) -> list[str]:
    """The editable patterns: the configured list, else target.toml's `editable` in the
    workspace, else ["train.py"] (what a missing target.toml means)."""
    if configured:
        return [str(p) for p in configured]
    if workspace is not None:
        try:
            return list(Target.load(workspace).editable)
        except TargetError as e:
            log.warning("could not read the editable list from %s/target.toml: %s", workspace, e)
    return list(DEFAULTS["editable"])


class FileTools:
    """view/replace/write on the editable files of one workspace, with the original
    contents remembered so changed() can tell what the model changed."""

    def __init__(self, workspace: Path | str, editable: Iterable[str]):
        self.workspace = Path(workspace).resolve()
        self.editable = [str(p) for p in editable]
        if not self.editable:
            raise ValueError("no editable files given: the target's editable list is empty")
        self.original: dict[str, str | None] = {}
        for rel in editable_files(self.workspace, self.editable):
            self.original[rel] = self._read(self.workspace / rel)

    # -- paths -----------------------------------------------------------------

    def check(self, path: str) -> tuple[str, Path]:
        """(normalized relative path, absolute path) or ToolError."""
        allowed = ", ".join(self.editable)
        if not isinstance(path, str) or not path.strip():
            raise ToolError(f"path must be a non-empty string; editable files: {allowed}")
        raw = path.strip().replace("\\", "/")
        pp = PurePosixPath(raw)
        if pp.is_absolute() or raw.startswith("~"):
            raise ToolError(f"{path!r} is absolute; give a path relative to the repository root, one of: {allowed}")
        rel = "/".join(p for p in pp.parts if p != ".")
        if escapes(rel):
            raise ToolError(f"{path!r} leaves the repository or is inside .git; editable files: {allowed}")
        if not is_editable(rel, self.editable):
            raise ToolError(f"{rel} is not editable (only {allowed} may be viewed or changed here; "
                            f"fixed files such as prepare.py must stay as they are)")
        full = self.workspace / rel
        for parent in [full, *full.parents]:
            if parent == self.workspace:
                break
            if parent.is_symlink():
                raise ToolError(f"{rel} is (inside) a symlink; it cannot be edited")
        if not inside(self.workspace, full):
            raise ToolError(f"{rel} resolves outside the repository")
        return rel, full

    @staticmethod
    def _read(full: Path) -> str | None:
        try:
            with open(full, encoding="utf-8", newline="") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise ToolError(f"{full.name} is not UTF-8 text") from None

    def _write(self, rel: str, full: Path, text: str) -> None:
        if rel not in self.original:
            self.original[rel] = self._read(full)
        full.parent.mkdir(parents=True, exist_ok=True)
        with open(full, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    # -- tools -----------------------------------------------------------------

    def view_file(self, path: str, start_line: int | None = None, end_line: int | None = None) -> str:
        rel, full = self.check(path)
        text = self._read(full)
        if text is None:
            raise ToolError(f"{rel} does not exist; create it with write_file if the hypothesis needs it")
        lines = text.splitlines(keepends=True)
        if start_line is not None or end_line is not None:
            a = max(1, int(start_line or 1))
            b = min(len(lines), int(end_line or len(lines)))
            if a > b:
                raise ToolError(f"empty range {start_line}-{end_line}: {rel} has {len(lines)} lines")
            body = "".join(lines[a - 1:b])
            head = f"{rel}, lines {a}-{b} of {len(lines)}:\n"
        else:
            body = text
            head = f"{rel} ({len(lines)} lines):\n"
        if len(body) > MAX_VIEW_CHARS:
            body = body[:MAX_VIEW_CHARS]
            head += f"[only the first {MAX_VIEW_CHARS} characters; pass start_line/end_line for the rest]\n"
        return head + body

    def replace_in_file(self, path: str, old: str, new: str) -> str:
        rel, full = self.check(path)
        if not isinstance(old, str) or not old:
            raise ToolError("old must be a non-empty string copied exactly from the file")
        if not isinstance(new, str):
            raise ToolError("new must be a string (use an empty string to delete the old text)")
        text = self._read(full)
        if text is None:
            raise ToolError(f"{rel} does not exist")
        count = text.count(old)
        if count == 0:
            raise ToolError(f"old text not found in {rel}: view_file it and copy the snippet exactly, "
                            f"whitespace and indentation included")
        if count > 1:
            raise ToolError(f"old text occurs {count} times in {rel}; include more surrounding lines "
                            f"so that it occurs exactly once")
        at = text.index(old)
        updated = text[:at] + new + text[at + len(old):]
        self._write(rel, full, updated)
        line = text.count("\n", 0, at) + 1
        msg = f"replaced 1 occurrence in {rel} at line {line}"
        err = compile_error(rel, updated)
        return msg + (f"; WARNING: {rel} no longer compiles ({err}): fix it" if err else "")

    def write_file(self, path: str, content: str) -> str:
        rel, full = self.check(path)
        if not isinstance(content, str):
            raise ToolError("content must be a string: the whole new file")
        if len(content) > MAX_WRITE_CHARS:
            raise ToolError(f"content is {len(content)} characters; the limit is {MAX_WRITE_CHARS}")
        self._write(rel, full, content)
        msg = f"wrote {rel} ({len(content.splitlines())} lines)"
        err = compile_error(rel, content)
        return msg + (f"; WARNING: {rel} does not compile ({err}): fix it" if err else "")

    # -- state -----------------------------------------------------------------

    def changed(self) -> dict[str, str | None]:
        """Editable files whose content differs from the start: path -> new text (None = deleted)."""
        out = {}
        for rel, before in self.original.items():
            now = self._read(self.workspace / rel)
            if now != before:
                out[rel] = now
        return out

    def compile_errors(self) -> dict[str, str]:
        """Changed .py files that do not compile: path -> 'line N: msg'."""
        out = {}
        for rel, text in self.changed().items():
            err = compile_error(rel, text) if text is not None else None
            if err:
                out[rel] = err
        return out

    def state_hash(self) -> str:
        """Hash of the current contents of the touched editable files (smoke-run bookkeeping)."""
        h = hashlib.sha256()
        for rel in sorted(self.original):
            h.update(rel.encode() + b"\0" + (self._read(self.workspace / rel) or "").encode() + b"\0")
        return h.hexdigest()


# Tool definitions for the Messages API (the implementer's tools).
FILE_TOOL_SPECS = [
    {
        "name": "view_file",
        "description": "Show the current text of an editable file (optionally a 1-based line range).",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Path relative to the repository root, e.g. train.py"},
                "start_line": {"type": "integer"},
                "end_line": {"type": "integer"},
            },
            "required": ["path"],
        },
    },
    {
        "name": "replace_in_file",
        "description": ("Replace a snippet of an editable file. `old` must occur exactly once in the file "
                        "(copy it exactly, with enough context to be unique); `new` replaces it."),
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "old": {"type": "string"},
                "new": {"type": "string"},
            },
            "required": ["path", "old", "new"],
        },
    },
    {
        "name": "write_file",
        "description": "Replace the whole content of an editable file.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
]

SMOKE_TOOL_SPEC = {
    "name": "run_smoke",
    "description": ("Run the current change for a few seconds of training (a smoke run) and get the "
                    "result with the log tail. Use it after your edit; fix what it reports."),
    "input_schema": {"type": "object", "properties": {}},
}

DONE_TOOL_SPEC = {
    "name": "done",
    "description": ("Finish: the change is complete; give a one-line summary of what you changed. Set abandon "
                    "to true instead when the hypothesis cannot be implemented sensibly (say why in the "
                    "summary): the change is then discarded."),
    "input_schema": {
        "type": "object",
        "properties": {"summary": {"type": "string"}, "abandon": {"type": "boolean"}},
        "required": ["summary"],
    },
}


def run_file_tool(tools: FileTools, name: str, args: dict) -> str:
    """Dispatch one file tool call; ToolError for an unknown tool or bad arguments."""
    if not isinstance(args, dict):
        raise ToolError(f"{name}: input must be an object")
    try:
        if name == "view_file":
            return tools.view_file(args.get("path"), args.get("start_line"), args.get("end_line"))
        if name == "replace_in_file":
            return tools.replace_in_file(args.get("path"), args.get("old"), args.get("new"))
        if name == "write_file":
            return tools.write_file(args.get("path"), args.get("content"))
    except (TypeError, ValueError) as e:
        raise ToolError(f"{name}: bad arguments ({e})") from None
    raise ToolError(f"unknown tool {name!r}; the tools are view_file, replace_in_file, write_file, "
                    f"run_smoke, done")
