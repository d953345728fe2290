"""The packages' dependencies point one way (README, "Where things live"): every import of a
swarm package, at module level or inside a function, is checked against the layers below.
A new import that points up (journal -> coordinator, a leaf -> anything) fails here."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# package -> the swarm packages it may import (besides itself)
ALLOWED = {
    "core": set(),
    "safety": set(),
    "journal": {"core", "safety"},
    "worker": {"core", "safety", "journal"},
    "agents": {"core", "safety", "journal"},
    "coordinator": {"core", "safety", "journal", "worker", "agents"},
    "dashboard": {"core", "safety", "journal", "coordinator"},
    "swarm": {"core", "safety", "journal", "worker", "agents", "coordinator", "dashboard"},
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def test_every_import_points_down_the_layers():
    wrong = []
    for package, allowed in ALLOWED.items():
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, f"no package {package}: update ALLOWED with the layout"
        for f in files:
            for line, top in _imports(f):
                if top in ALLOWED and top != package and top not in allowed:
                    wrong.append(f"{f.relative_to(ROOT)}:{line} imports {top}")
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


def test_the_layers_cover_every_package():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(ALLOWED), f"packages without a layer: {packages ^ set(ALLOWED)}"


def test_the_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from coordinator.state import CampaignState\n    import worker.repo\n")
    assert [top for _, top in _imports(f)] == ["coordinator", "worker"]
