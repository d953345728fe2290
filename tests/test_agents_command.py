"""
The coding-agent command backend (agents/command_agent.py) with scripted shell
"agents" in a real git checkout: one that edits train.py, one that also edits
prepare.py (and adds files, and commits), one that hangs; the proposer variant;
and the plain-dict agent service (agents/actor.py) the Ray actor wraps.
"""

import json
import stat
import subprocess
import time
from pathlib import Path

import pytest

from agents.actor import AgentService
from agents.base import AgentError
from agents.base import Hypothesis, ImplementationError, ResearchContext
from agents.command_agent import CommandImplementer, CommandProposer

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PY = "MATRIX_LR = 0.04  # lr\nWARMDOWN_RATIO = 0.5  # warmdown\nprint('val_bpb: 1.0')\n"
PREPARE_PY = "EVAL_TOKENS = 65536  # fixed\n"

H = Hypothesis(hypothesis_id="h42", title="MATRIX_LR 0.04 -> 0.06", rationale="higher LRs kept winning",
               expected_effect="-0.01 bpb", risk="low", agent="test", params={"MATRIX_LR": 0.06})


def git(ws, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=ws, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def ws(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "train.py").write_text(TRAIN_PY)
    (ws / "prepare.py").write_text(PREPARE_PY)
    (ws / "program.md").write_text("# program\nEdit train.py only.\n")
    (ws / ".gitignore").write_text("*.log\n")
    git(ws, "init", "-q", "-b", "main")
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "mainline")
    return ws


@pytest.fixture
def seen(tmp_path):
    d = tmp_path / "seen"
    d.mkdir()
    return d


def agent(tmp_path, name, body):
    """A scripted shell 'agent' (sh, cwd = the checkout)."""
    p = tmp_path / name
    p.write_text("#!/bin/sh\nset -e\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


def test_agent_that_edits_train_py_gets_the_prompt_three_ways(ws, seen, tmp_path):
    script = agent(tmp_path, "edit.sh", """
cat > "$SEEN/stdin.txt"
cp "$1" "$SEEN/arg_file.txt"
printf '%s' "$SWARM_PROMPT" > "$SEEN/env.txt"
echo "$SWARM_EDITABLE|$SWARM_HYPOTHESIS_ID|$(pwd)" > "$SEEN/info.txt"
sed -i 's/MATRIX_LR = 0.04/MATRIX_LR = 0.06/' train.py
echo "edited train.py"
""")
    base = git(ws, "rev-parse", "HEAD")
    impl = CommandImplementer({"command": f"sh {script} {{prompt_file}}", "timeout_s": 60, "env": {"SEEN": str(seen)}})
    report = impl.implement(H, ws)

    assert report["changed"] == ["train.py"] and report["discarded"] == [] and report["returncode"] == 0
    assert "edited train.py" in report["output_tail"]
    assert (ws / "train.py").read_text() == TRAIN_PY.replace("0.04", "0.06")
    prompt = (seen / "stdin.txt").read_text()
    assert prompt == (seen / "arg_file.txt").read_text() == (seen / "env.txt").read_text()
    assert "Title: MATRIX_LR 0.04 -> 0.06" in prompt and "Edit only these files: train.py" in prompt
    assert "Edit train.py only." in prompt  # program.md travels with it
    assert (seen / "info.txt").read_text().strip() == f"train.py|h42|{ws.resolve()}"
    assert git(ws, "rev-parse", "HEAD") == base
    assert git(ws, "status", "--porcelain") == "M train.py"


def test_agent_that_also_edits_prepare_py_keeps_only_the_editable_change(ws, tmp_path):
    script = agent(tmp_path, "both.sh", """
sed -i 's/MATRIX_LR = 0.04/MATRIX_LR = 0.06/' train.py
echo "EVAL_TOKENS = 1  # cheat" > prepare.py
echo junk > junk.txt
mkdir -p extra && echo "x = 1" > extra/helper.py
echo "a cache" > run.log
git -c user.name=a -c user.email=a@a commit -q -am "agent commit"
git checkout -q -b agent-branch
""")
    base = git(ws, "rev-parse", "HEAD")
    report = CommandImplementer({"command": ["sh", script]}).implement(H, ws)

    assert report["changed"] == ["train.py"]
    assert report["discarded"] == ["extra/helper.py", "junk.txt", "prepare.py"]
    assert (ws / "train.py").read_text() == TRAIN_PY.replace("0.04", "0.06")
    assert (ws / "prepare.py").read_text() == PREPARE_PY
    assert not (ws / "junk.txt").exists() and not (ws / "extra").exists()
    assert (ws / "run.log").exists()  # ignored files (caches) are left alone
    assert git(ws, "rev-parse", "HEAD") == base and git(ws, "symbolic-ref", "--short", "HEAD") == "main"
    assert git(ws, "status", "--porcelain") == "M train.py"


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"  # a zombie has been killed
    except FileNotFoundError:
        return True


def test_agent_that_hangs_is_killed_with_its_children(ws, seen, tmp_path):
    script = agent(tmp_path, "hang.sh", """
sleep 300 &
echo $! > "$SEEN/child.pid"
sed -i 's/MATRIX_LR = 0.04/MATRIX_LR = 0.06/' train.py
sleep 300
""")
    impl = CommandImplementer({"command": ["sh", script], "timeout_s": 1, "env": {"SEEN": str(seen)}})
    with pytest.raises(ImplementationError, match=r"agent command timed out after 1 s \(hypothesis h42"):
        impl.implement(H, ws)
    child = int((seen / "child.pid").read_text())
    deadline = time.monotonic() + 60    # generous: a loaded machine
    while not _dead(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(child)
    assert git(ws, "status", "--porcelain") == ""  # the half-done edit is undone


def test_agent_failures_are_clear(ws, tmp_path):
    nothing = agent(tmp_path, "nothing.sh", "echo 'looks fine as it is'\n")
    with pytest.raises(ImplementationError, match=r"changed no editable file \(train.py\)"):
        CommandImplementer(["sh", nothing]).implement(H, ws)

    only_fixed = agent(tmp_path, "fixed.sh", "echo 'x = 2' >> prepare.py\n")
    with pytest.raises(ImplementationError, match=r"discarded changes to: prepare.py"):
        CommandImplementer(["sh", only_fixed]).implement(H, ws)
    assert (ws / "prepare.py").read_text() == PREPARE_PY

    crash = agent(tmp_path, "crash.sh", "sed -i 's/0.04/0.05/' train.py\necho 'model quota exceeded' >&2\nexit 3\n")
    with pytest.raises(ImplementationError, match=r"exited with status 3; output tail:\nmodel quota exceeded"):
        CommandImplementer(["sh", crash]).implement(H, ws)
    assert git(ws, "status", "--porcelain") == ""

    with pytest.raises(AgentError, match="agent command not found: 'no-such-agent-xyz'"):
        CommandImplementer("no-such-agent-xyz --print").implement(H, ws)
    with pytest.raises(AgentError, match="no agent command configured"):
        CommandImplementer({"command": "  "})

    (ws / "stray.txt").write_text("left over")
    with pytest.raises(AgentError, match="uncommitted changes \\(stray.txt\\)"):
        CommandImplementer(["sh", nothing]).implement(H, ws)
    with pytest.raises(AgentError, match="not a git checkout"):
        CommandImplementer(["sh", nothing]).implement(H, tmp_path / "seen_not_git")


def test_command_proposer_reads_json_hypotheses_and_refuses_duplicates(tmp_path):
    script = agent(tmp_path, "propose.sh", """
test -f train.py && test -f program.md
cat > "$SWARM_OUTPUT_FILE" <<'EOF'
[{"title": "MATRIX_LR 0.04 -> 0.06", "rationale": "r", "expected_effect": "-0.01 bpb", "risk": "low",
  "params": {"MATRIX_LR": 0.06}},
 {"title": "WARMDOWN_RATIO 0.5 -> 0.7", "rationale": "longer warmdown won", "expected_effect": "-0.005 bpb",
  "risk": "low", "params": {"WARMDOWN_RATIO": 0.7}}]
EOF
""")
    ctx = ResearchContext(track="t", mainline_commit="m1", program_md="# p", files={"train.py": TRAIN_PY},
                          history=[{"title": "MATRIX_LR 0.04 -> 0.06", "verdict": "discard", "mainline_commit": "m1"}])
    hs = CommandProposer({"command": ["sh", script], "name": "claude-code"}).propose(ctx, 3)
    assert [h.title for h in hs] == ["WARMDOWN_RATIO 0.5 -> 0.7"]
    assert hs[0].agent == "claude-code" and hs[0].params == {"WARMDOWN_RATIO": 0.7}

    silent = agent(tmp_path, "silent.sh", "echo hello\n")
    with pytest.raises(AgentError, match=r"wrote no hypotheses to \$SWARM_OUTPUT_FILE"):
        CommandProposer(["sh", silent]).propose(ctx, 1)


def test_agent_service_answers_with_plain_dicts(tmp_path):
    # offline backend on the real train.py: propose, then implement in a files dict
    svc = AgentService({"backend": "offline"})
    train = (ROOT / "train.py").read_text()
    ctx = {"track": "t", "mainline_commit": "m1", "program_md": "", "files": {"train.py": train}, "history": []}
    out = svc.propose(ctx, 2)
    assert out["backend"] == "offline" and out["error"] is None and len(out["hypotheses"]) == 2
    h = out["hypotheses"][0]
    json.dumps(out)  # plain data only
    done = svc.implement(h, {"train.py": train, "prepare.py": PREPARE_PY})
    assert done["ok"] and list(done["files"]) == ["train.py"] and done["files"]["train.py"] != train

    # command backend: a scratch git repository is made from the files dict
    script = agent(tmp_path, "edit.sh", "sed -i 's/MATRIX_LR = 0.04/MATRIX_LR = 0.06/' train.py\n")
    svc = AgentService({"command": {"command": ["sh", script], "propose": False}})
    done = svc.implement(H.to_dict(), {"train.py": TRAIN_PY, "prepare.py": PREPARE_PY})
    assert done["backend"] == "command" and done["ok"] and done["report"]["discarded"] == []
    assert done["files"] == {"train.py": TRAIN_PY.replace("0.04", "0.06")}
    failed = svc.implement(H.to_dict(), {"prepare.py": PREPARE_PY})  # no train.py: sed fails
    assert not failed["ok"] and not failed["agent_error"] and "exited with status 2" in failed["reason"]
    assert failed["files"] == {} and "can't read train.py" in failed["reason"]


def test_agent_actor_runs_under_ray_without_reserving_a_cpu(monkeypatch):
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants

    # Under `uv run`, Ray would start workers through `uv run` in a packaged copy of the
    # project (a fresh, empty venv); the test's own interpreter is the one to use. The flag
    # is read when ray is imported, so the constant is set as well as the variable.
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    monkeypatch.setattr(ray_constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV", False)
    from agents.actor import AgentActor

    # address="local": a cluster of our own, even when another test session runs one here
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        actor = AgentActor.remote({"backend": "offline"})
        train = (ROOT / "train.py").read_text()
        out = ray.get(actor.propose.remote({"track": "t", "mainline_commit": "m1", "files": {"train.py": train}}, 1),
                      timeout=300)
        assert out["error"] is None and len(out["hypotheses"]) == 1
        assert ray.available_resources().get("CPU") == 1  # the agent holds no core
        done = ray.get(actor.implement.remote(out["hypotheses"][0], {"train.py": train}), timeout=300)
        assert done["ok"] and list(done["files"]) == ["train.py"]
    finally:
        ray.shutdown()
