"""When two hypotheses are the same idea: a stable key from their params, else their title.

The state books hypotheses by this key per (track, mainline), so an idea already judged on
a mainline is not proposed, built or run again there; the agents use it to skip what they
have tried.
"""

import json
import math
import re
from typing import Any, Mapping

# Significant digits kept when comparing float values in keys: 0.06 and
# 0.060000000001 are the same experiment, 0.06 and 0.061 are not.
KEY_FLOAT_DIGITS = 4


def _norm_value(value: Any) -> Any:
    """JSON-ready canonical form: ints and integral floats alike, floats to
    KEY_FLOAT_DIGITS significant digits, tuples as lists."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return float(f"{value:.{KEY_FLOAT_DIGITS}g}")
    if isinstance(value, (list, tuple)):
        return [_norm_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _norm_value(v) for k, v in value.items()}
    return repr(value)


def params_key(params: Mapping[str, Any]) -> str:
    """Stable key of a params change: same names and (nearly) same values -> same key."""
    canonical = {str(k): _norm_value(v) for k, v in params.items()}
    return "params:" + json.dumps(canonical, sort_keys=True, separators=(",", ":"))


def same_value(a: Any, b: Any) -> bool:
    """True when two constant values are equal for experiment purposes (4 == 4.0,
    (0.8, 0.95) == [0.8, 0.95], float noise below KEY_FLOAT_DIGITS ignored)."""
    return _norm_value(a) == _norm_value(b)


_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _norm_title(title: str) -> str:
    def number(m: re.Match) -> str:
        return str(_norm_value(float(m.group(0))))

    text = _NUMBER.sub(number, title.lower())
    text = re.sub(r"[^\w.+\-*/=<>]+", " ", text)  # punctuation/whitespace runs -> one space
    return text.strip(" .")


def hypothesis_key(h) -> str:
    """Key of a Hypothesis or a history entry (dict with "params" and/or "title").
    Params decide when present; otherwise the normalized title (case, spacing,
    punctuation and number formatting ignored)."""
    if isinstance(h, Mapping):
        params, title = h.get("params"), h.get("title")
    else:
        params, title = h.params, h.title
    if params:
        return params_key(params)
    return "title:" + _norm_title(title or "")
