"""The real train.py, made cheap for tests that need a trial to finish, not to learn.

With the tiny profile's defaults one optimizer step is 8 micro-batches of a 4-layer model:
about 1.2 TFLOP, 80 s on a loaded 2-core machine, and a trial always runs two steps (the
first is not counted against the budget). FAST trains one micro-batch of 8 rows per step on
a 2-layer model: about 1/30 of that. It is still the real train.py: the same code, other
values of two of its constants.
"""

import re

# The constants that make a step cheap, as train.py spells them.
FAST = {"TOTAL_BATCH_SIZE": "2**11", "DEPTH": "2"}


def set_constants(text: str, values: dict) -> str:
    """train.py's text with these constants set (each must exist, once)."""
    for name, value in values.items():
        text, n = re.subn(rf"^{name} = [^#\n]+", f"{name} = {value} ", text, count=1, flags=re.MULTILINE)
        assert n == 1, f"train.py has no constant {name}"
    return text


def fast(text: str) -> str:
    return set_constants(text, FAST)
