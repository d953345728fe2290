"""
Read and rewrite the module-level constants of a Python file (train.py's
hyperparameter block) without executing it.

A constant is a module-level `NAME = <value>` (or `NAME: T = <value>`) bound
exactly once in the module, whose value is a literal or a small expression of
literals: numbers, strings, booleans, None, unary -/+, the arithmetic operators
(+ - * / // % **) and tuples/lists of those (`2**16`, `-1`, `(0.8, 0.95)`).

Rewriting replaces exactly the source span of that value expression: the name,
the spacing, the comment at the end of the line and every other byte of the file
stay as they were. The written value keeps the old one's style where it can
(`2**16` -> `2**15`, `1e-3` -> `5e-4`, double quotes stay double quotes), and is
checked by parsing the result back.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping

# Guards for the tiny evaluator: `2**16` is a constant, `9**9**9` is not.
MAX_POW_EXPONENT = 256
MAX_INT_BITS = 256


class ConstantsError(ValueError):
    """A constant cannot be read or rewritten; the message says which and why."""


@dataclass(frozen=True)
class Constant:
    name: str
    value: Any  # the evaluated value
    source: str  # the value expression exactly as written
    start: int  # character offsets of the value expression in the file text
    end: int
    lineno: int
    parts: tuple["Constant", ...] = ()  # elements of a tuple/list value, each with its own span


class _NotConstant(Exception):
    pass


def _check_int(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > MAX_INT_BITS:
        raise _NotConstant("integer too large")
    return v


_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _eval(node: ast.AST) -> Any:
    """Evaluate a literal expression; raise _NotConstant for anything else."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (int, float, str, bool)) or node.value is None:
            return node.value
        raise _NotConstant(f"{type(node.value).__name__} literal")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        if not _is_number(v):
            raise _NotConstant("unary sign on a non-number")
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval(node.left), _eval(node.right)
        if not (_is_number(a) and _is_number(b)):
            raise _NotConstant("arithmetic on non-numbers")
        if isinstance(node.op, ast.Pow) and abs(b) > MAX_POW_EXPONENT:
            raise _NotConstant("exponent too large")
        try:
            return _check_int(_BINOPS[type(node.op)](a, b))
        except (ZeroDivisionError, OverflowError) as e:
            raise _NotConstant(str(e)) from None
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_eval(e) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    raise _NotConstant(f"{type(node).__name__} expression")


class _ModuleBindings(ast.NodeVisitor):
    """Line numbers of every binding of each module-level name: assignments,
    augmented assignments, for/with targets, imports, def/class, del, including
    those nested in module-level if/for/try blocks but not in function, class,
    lambda or comprehension scopes."""

    def __init__(self):
        self.lines: dict[str, list[int]] = {}

    def _bind(self, name: str, lineno: int):
        self.lines.setdefault(name, []).append(lineno)

    def visit_Name(self, node: ast.Name):
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self._bind(node.id, node.lineno)

    def visit_alias(self, node: ast.alias):
        if node.name != "*":
            self._bind((node.asname or node.name).split(".")[0], getattr(node, "lineno", 0))

    def _scope(self, node):  # a new scope: only its name binds here
        self._bind(node.name, node.lineno)
        for d in node.decorator_list:
            self.visit(d)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope

    def _skip(self, node):
        pass

    visit_Lambda = visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _skip


def _line_starts(text: str) -> list[int]:
    """Character offset of the start of each line (1-based line i at index i-1),
    with the line breaks Python's tokenizer uses (\\r\\n, \\r, \\n)."""
    starts = [0]
    for m in re.finditer(r"\r\n|\r|\n", text):
        starts.append(m.end())
    return starts


def _offset(text: str, starts: list[int], lineno: int, col_bytes: int) -> int:
    """ast gives columns in UTF-8 bytes; turn (line, byte column) into a text offset."""
    line_start = starts[lineno - 1]
    line_end = starts[lineno] if lineno < len(starts) else len(text)
    line = text[line_start:line_end]
    return line_start + len(line.encode("utf-8")[:col_bytes].decode("utf-8", errors="strict"))


def _parse(text: str, filename: str) -> ast.Module:
    try:
        return ast.parse(text, filename=filename)
    except SyntaxError as e:
        raise ConstantsError(
            f"{filename} does not parse: {e.msg} (line {e.lineno}); fix the syntax error first"
        ) from None
    except ValueError as e:  # e.g. NUL bytes
        raise ConstantsError(f"{filename} does not parse: {e}") from None


def scan(text: str, filename: str = "train.py") -> tuple[dict[str, Constant], dict[str, str]]:
    """(constants, refused): the editable constants by name, and for each other
    module-level `NAME = ...` assignment the reason it is not editable."""
    tree = _parse(text, filename)
    bindings = _ModuleBindings()
    bindings.visit(tree)
    global_decl = {}
    if "global" in text:  # walking the whole tree is most of the cost of a scan: skip it when it cannot matter
        global_decl = {n: node.lineno for node in ast.walk(tree) if isinstance(node, ast.Global) for n in node.names}
    starts = _line_starts(text)
    constants: dict[str, Constant] = {}
    refused: dict[str, str] = {}

    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if not names:
            continue  # tuple unpacking, attribute or subscript targets
        if len(targets) > 1:
            for name in names:
                refused[name] = f"chained assignment on line {stmt.lineno} binds several names to one value"
            continue
        name = names[0]
        lines = bindings.lines.get(name, [])
        if len(lines) > 1:
            where = ", ".join(str(n) for n in sorted(set(lines)))
            refused[name] = f"bound {len(lines)} times at module level (lines {where}), so its value is ambiguous"
            continue
        if name in global_decl:
            refused[name] = f"declared global in a function (line {global_decl[name]}), so it can change at run time"
            continue
        try:
            evaluated = _eval(value)
        except _NotConstant as e:
            refused[name] = f"its value on line {stmt.lineno} is not a literal ({e})"
            continue
        constants[name] = _constant(name, value, evaluated, text, starts)
    return constants, refused


def _constant(name: str, node: ast.expr, value: Any, text: str, starts: list[int]) -> Constant:
    start = _offset(text, starts, node.lineno, node.col_offset)
    end = _offset(text, starts, node.end_lineno, node.end_col_offset)
    parts = ()
    if isinstance(node, (ast.Tuple, ast.List)):
        parts = tuple(_constant(f"{name}[{i}]", e, v, text, starts) for i, (e, v) in enumerate(zip(node.elts, value)))
    return Constant(name, value, text[start:end], start, end, node.lineno, parts)


def read_constants(text: str, filename: str = "train.py") -> dict[str, Constant]:
    """The editable module-level constants of `text`, by name, in file order."""
    return scan(text, filename)[0]


def constant_values(text: str, filename: str = "train.py") -> dict[str, Any]:
    """{NAME: value} of the editable module-level constants of `text`."""
    return {name: c.value for name, c in read_constants(text, filename).items()}


# ---------------------------------------------------------------------------
# Writing values
# ---------------------------------------------------------------------------


def _type_name(v: Any) -> str:
    return type(v).__name__


def coerce(name: str, old: Any, new: Any) -> Any:
    """`new` converted to the kind of value `old` is, or ConstantsError.
    float constants take ints; int constants take integral floats; tuples and
    lists take either, element by element, with the same length."""
    where = f"{name} is {_type_name(old)} {old!r} in the file"
    if isinstance(new, float) and not math.isfinite(new):
        raise ConstantsError(f"{name}: {new!r} is not a finite number")
    if old is None:
        if isinstance(new, (list, tuple)):
            return type(new)(coerce(f"{name}[{i}]", None, v) for i, v in enumerate(new))
        if new is None or isinstance(new, (bool, int, float, str)):
            return new
        raise ConstantsError(f"{name}: cannot write a {_type_name(new)} value as a Python literal")
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
        if isinstance(new, float) and new.is_integer():
            return int(new)
        if isinstance(new, float):
            raise ConstantsError(f"{where}; got a fractional float {new!r}: give a whole number")
    elif isinstance(old, float):
        if _is_number(new):
            return float(new)
    elif isinstance(old, str):
        if isinstance(new, str):
            return new
    elif isinstance(old, (tuple, list)):
        if isinstance(new, (tuple, list)):
            if len(new) != len(old):
                raise ConstantsError(f"{where} with {len(old)} elements; got {len(new)} elements {new!r}")
            items = [coerce(f"{name}[{i}]", o, v) for i, (o, v) in enumerate(zip(old, new))]
            return tuple(items) if isinstance(old, tuple) else items
    raise ConstantsError(f"{where}; got {_type_name(new)} {new!r}: give a {_type_name(old)}")


def _format_float(v: float, like: str) -> str:
    if re.search(r"\d[eE]", like) and v != 0:
        return f"{Decimal(repr(v)):e}".replace("e+", "e")  # 0.0005 -> 5e-4 when the file uses e-notation
    return repr(v)


_POW = re.compile(r"^\s*(\d+)(\s*)\*\*(\s*)(\d+)\s*$")


def _format_int(v: int, like: str) -> str:
    m = _POW.match(like)  # `2**16` stays a power of 2 when the new value is one
    if m and v > 0:
        base = int(m.group(1))
        if base >= 2:
            k = round(math.log(v, base))
            if k >= 1 and base**k == v:
                return f"{base}{m.group(2)}**{m.group(3)}{k}"
    return repr(v)


def _format_str(v: str, like: str) -> str:
    r = repr(v)
    if like.lstrip()[:1] == '"' and r.startswith("'") and '"' not in v and "'" not in v:
        r = '"' + r[1:-1] + '"'
    return r


def format_value(value: Any, like: str = "") -> str:
    """Python source for `value`, in the style of the expression `like` where possible."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return _format_int(value, like)
    if isinstance(value, float):
        return _format_float(value, like)
    if isinstance(value, str):
        return _format_str(value, like)
    if isinstance(value, (tuple, list)):
        parts = ", ".join(format_value(v, like) for v in value)
        if isinstance(value, list):
            return f"[{parts}]"
        return f"({parts},)" if len(value) == 1 else f"({parts})"
    raise ConstantsError(f"cannot write a {_type_name(value)} value as a Python literal")


def _unknown(name: str, constants: Mapping[str, Constant], refused: Mapping[str, str], filename: str) -> str:
    if name in refused:
        return f"{name} in {filename} cannot be edited: {refused[name]}"
    known = ", ".join(constants) or "(none)"
    return f"{name} is not a module-level constant of {filename}; editable constants: {known}"


def rewrite_constants(text: str, changes: Mapping[str, Any], filename: str = "train.py") -> str:
    """`text` with each named constant's value expression replaced by the new
    value; every other byte unchanged. Raises ConstantsError (nothing changed)
    for an unknown or non-editable name or a value of the wrong type."""
    constants, refused = scan(text, filename)
    wanted, edits = {}, []
    for name, new in changes.items():
        if name not in constants:
            raise ConstantsError(_unknown(name, constants, refused, filename))
        wanted[name] = coerce(name, constants[name].value, new)
        edits += _edits(constants[name], wanted[name])

    out = text
    for c, src in sorted(edits, key=lambda e: e[0].start, reverse=True):
        out = out[: c.start] + src + out[c.end :]

    # Parse the result back: each value must read as intended.
    try:
        after = read_constants(out, filename)
    except ConstantsError as e:  # would be a bug here, not the caller's
        raise ConstantsError(f"rewriting {', '.join(changes)} produced a file that does not parse: {e}") from None
    for name, want in wanted.items():
        if name not in after or after[name].value != want:
            raise ConstantsError(f"rewriting {name} did not read back as {want!r}")
    return out


def _edits(c: Constant, value: Any) -> list[tuple[Constant, str]]:
    """(span, new source) replacements that turn c into value: nothing when
    equal, element by element for tuples/lists (keeps their layout and comments)."""
    if value == c.value and type(value) is type(c.value):
        return []  # same value: leave the source exactly as written
    if c.parts and type(value) is type(c.value) and len(value) == len(c.parts):
        return [e for part, v in zip(c.parts, value) for e in _edits(part, v)]
    return [(c, format_value(value, c.source))]
