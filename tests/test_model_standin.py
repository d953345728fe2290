"""
The stand-in research model (tests/model_standin.py) behind the Messages API stand-in,
driven by the real agent classes through the real `anthropic` SDK: what the duty-cycle
bench and end-to-end runs rely on. Proposals pass the proposer's checks and never repeat
(refused duplicates are replaced), an implementation changes exactly the constant a hypothesis names in one model turn, and
the stand-in's delay is served to concurrent requests in parallel.
"""

import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from anthropic_standin import StandIn, message, text  # noqa: E402
from model_standin import ResearchModel  # noqa: E402
from synthetic import FILES, HERE  # noqa: E402

from agents.anthropic_agent import AnthropicImplementer, AnthropicProposer  # noqa: E402
from agents.anthropic_client import AnthropicClient  # noqa: E402
from agents.base import AgentError  # noqa: E402
from agents.base import ResearchContext  # noqa: E402
from agents.constant_rewriter import constant_values  # noqa: E402
from agents.proposals import dedup_keys, title_params  # noqa: E402

KEY = "sk-standin-test-0123456789"
TRAIN_PY = (HERE / "train.py").read_text()
PROGRAM_MD = "# program.md\nLower val_bpb. Edit train.py only.\n"
KNOBS = ("MATRIX_LR", "WARMDOWN_RATIO", "SCALAR_LR", "DEPTH")   # the synthetic hyperparameter block
DELAY_S = 1.0          # the stand-in's think time in the concurrency test
MEET_S = 120.0         # how long each of two concurrent requests waits for the other inside the stand-in


@pytest.fixture
def model():
    return ResearchModel()


@pytest.fixture
def api(monkeypatch, model):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with StandIn(responder=model) as s:
        yield s


def config(api, **kw):
    return {"base_url": api.url, "model": "claude-standin", **kw}


def ctx():
    return ResearchContext(track="cpu/synthetic/1s/abc", mainline_commit="m1", program_md=PROGRAM_MD,
                           files={"train.py": TRAIN_PY}, history=[], noise_floor=0.01, notes=[])


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in FILES:
        shutil.copy(HERE / name, ws / name)
    (ws / "program.md").write_text(PROGRAM_MD)
    return ws


def test_proposals_are_valid_distinct_and_never_repeat(api, model):
    p = AnthropicProposer(config(api))
    first = p.propose(ctx(), 6)
    again = p.propose(ctx(), 6)

    assert len(first) == 6 and len(again) == 6
    assert model.calls["propose"] == 2                # each batch in one model call: nothing refused
    keys = [k for h in first + again for k in dedup_keys(h)]
    assert len(keys) == len(set(keys))                 # no setting proposed twice
    assert any(h.params for h in first) and any(not h.params for h in first)
    current = constant_values(TRAIN_PY)
    for h in first + again:
        (name, value), = (h.params or title_params(h.title)).items()
        assert name in KNOBS and value != current[name], h.title
        assert h.risk in ("low", "medium") and h.rationale and h.expected_effect
    assert api.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_refused_duplicates_are_replaced_by_new_proposals(api, model):
    pending = [{"title": h.title, "params": h.params, "mainline_commit": "m1", "verdict": None}
               for h in AnthropicProposer(config(api)).propose(ctx(), 4)]
    again = ResearchModel()  # same seed, same mainline: proposes the same four first
    api.responder = again
    hyps = AnthropicProposer(config(api)).propose(ResearchContext(**{**vars(ctx()), "history": pending}), 4)

    assert len(hyps) == 4 and again.calls["propose"] == 2
    assert "refused" in api.requests[-1].text() and "Propose 4 more" in api.requests[-1].text()
    taken = {k for e in pending for k in dedup_keys(e)}
    assert not taken & {k for h in hyps for k in dedup_keys(h)}


@pytest.mark.parametrize("with_params", [False, True])
def test_implementation_changes_exactly_that_constant_in_one_turn(api, model, workspace, with_params):
    (h,) = [h for h in AnthropicProposer(config(api)).propose(ctx(), 4) if bool(h.params) == with_params][:1]
    (name, value), = (h.params or title_params(h.title)).items()

    report = AnthropicImplementer(config(api)).implement(h, workspace)

    after = constant_values((workspace / "train.py").read_text())
    assert after == {**constant_values(TRAIN_PY), name: value}
    assert report["turns"] == 1 and report["changed"] == ["train.py"]
    assert model.calls["implement"] == 1
    assert (workspace / "prepare.py").read_text() == (HERE / "prepare.py").read_text()
    assert api.requests[-1].headers["authorization"] == f"Bearer {KEY}"


def test_script_first_then_responder_and_its_errors_reach_the_caller(api):
    api.push(message([text("scripted")]))
    client = AnthropicClient(config(api, max_attempts=1))
    msgs = [{"role": "user", "content": "hello"}]
    assert client.create("other", messages=msgs).content[0].text == "scripted"
    assert client.create("other", messages=msgs).content[0].text.startswith("Lab note")

    def broken(request):
        raise RuntimeError("the model fell over")

    api.responder = broken
    with pytest.raises(AgentError, match="the model fell over"):
        client.create("other", messages=msgs)


def test_delay_is_served_to_concurrent_requests_in_parallel(monkeypatch, model):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    # both requests must be inside the stand-in at once: served one after the other, the first would
    # wait at the barrier until it breaks and come back as an error (a condition, not a stopwatch)
    both_in = threading.Barrier(2, timeout=MEET_S)

    def meet_then_answer(request):
        both_in.wait()
        return model(request)

    with StandIn(responder=meet_then_answer, delay_s=DELAY_S) as api:
        client = AnthropicClient(config(api, max_attempts=1))
        took = []

        def ask():
            t0 = time.monotonic()
            client.create("other", messages=[{"role": "user", "content": "note?"}])
            took.append(time.monotonic() - t0)

        client.sdk()  # build the SDK client once, outside the calls
        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert not both_in.broken, "the stand-in served the two requests one after the other"
    assert len(took) == 2 and min(took) >= DELAY_S     # each waited its think time
    assert model.calls["other"] == 2
