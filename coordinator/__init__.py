"""The coordinator: the campaign loop and what it composes (README, "Layout")."""

import os

# Under `uv run`, Ray would re-launch its workers through `uv run` in a packaged copy of the
# current directory; the workers belong in this environment (as on every worker Mac). Ray
# reads the flag when it is imported, so it is set before any coordinator module imports ray.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
