"""Accelerator time goes to training (#14), through the real worker on the real tiny profile.

- the pre-flight: a model the evaluator cannot run stops its trial in the first step, not after its
  budget; a training process that dies before its first step is a pre-flight failure too; an honest
  trial's value is unchanged by it;
- the evaluation rows prepare.py tokenized once are hidden from training like the val/test shards;
- the timings split (start-up, training, evaluation, pre-flight, idle) reaches the journal, the lab
  journal and the table, as the training share per worker.
Fixtures (the sandboxed worker, the research repo, the honest value) are the attack suite's.
"""

import pytest

from journal import open_journal
from journal import export, labjournal
from journal.views import replay
from test_attacks import ALLOWANCE, edit, home, honest, lab, log_of, research, run  # noqa: F401 (fixtures)

# A budget no pre-flight failure may reach: the trial must end long before it.
LONG_BUDGET = 600


def test_a_model_the_evaluator_cannot_run_stops_in_its_preflight(lab, research):
    """Trains fine, crashes only when asked for logits in evaluation mode: without the pre-flight it
    would train for its whole budget first."""
    _, _, train = research
    hostile = edit(train, "        B, T = idx.shape\n",
                   "        B, T = idx.shape\n        if targets is None and not self.training:\n"
                   "            raise RuntimeError('boom: this model fails in evaluation')\n")
    r = run(lab, research, hostile, smoke=True, time_budget=LONG_BUDGET)
    assert r.status == "invalid", (r.status, r.reason)
    assert r.reason.startswith("pre-flight failed (") and "evaluation" in r.reason
    assert "boom: this model fails in evaluation" in r.log_tail
    training_log = open(r.log_path.replace(".preflight.log", ".log")).read()
    assert "(killed: preflight)" in training_log                # the worker stopped the training process
    assert r.timings["preflight"] > 0 and r.timings["train"] < LONG_BUDGET


def test_a_crash_before_the_first_step_is_a_preflight_failure(lab, research):
    _, _, train = research
    hostile = edit(train, "    t_start = time.time()\n", "    raise SystemExit('boom: before the first step')\n"
                   "    t_start = time.time()\n")
    r = run(lab, research, hostile, smoke=True, time_budget=LONG_BUDGET)
    assert r.status == "invalid", (r.status, r.reason)
    assert r.reason.startswith("pre-flight failed (") and "boom: before the first step" in r.reason + r.log_tail


def test_an_honest_trial_with_its_preflight_keeps_its_value_and_splits_its_time(lab, research, honest):
    _, _, train = research
    r = run(lab, research, train + "# the pre-flight changes nothing\n", smoke=True)
    assert r.status == "ok", (r.reason, r.log_tail)
    assert r.val_bpb == pytest.approx(honest, abs=1e-6)
    t = r.timings
    assert t["preflight"] > 0 and t["smoke"] == 0                 # no separate smoke process
    assert t["startup"] > 0 and t["training"] > 0 and t["evaluate"] > 0
    assert t["startup"] + t["training"] == pytest.approx(t["train"])
    assert 0 < t["training_share"] < 1 and t["idle"] >= 0
    assert t["startup"] + t["training"] + t["evaluate"] + t["idle"] == pytest.approx(t["total"], abs=1e-6)
    preflight_log = r.log_path.replace(".log", ".preflight.log")
    text = open(preflight_log).read()
    assert "val_bpb:" in text and "# exit: 0" in text          # the evaluator scored the initial model


def test_reading_the_tokenized_eval_rows_during_training_is_invalid(lab, research):
    _, _, train = research
    hostile = edit(train, "    t_start = time.time()\n",
                   "    import prepare as _p\n    open(_p.eval_rows_path('val'), 'rb').read()\n"
                   "    t_start = time.time()\n")
    r = run(lab, research, hostile)
    assert r.status == "invalid", (r.status, r.reason)
    assert "read the val split during training" in r.reason and "val.npy" in r.reason


def test_the_training_share_per_worker_reaches_the_lab_journal(lab, research, honest):
    _, journal = lab
    with open_journal(str(journal), campaign="attacks") as j:
        state = replay(j.read(), "attacks")
    acc = export.accelerator_time(state)
    finished = [t for t in state.trials.values() if t.finished is not None and "training" in (t.timings or {})]
    assert finished and acc["attack"]["trials"] == len(finished)
    w = acc["attack"]
    assert w["total"] == pytest.approx(sum(t.timings["total"] for t in finished))
    assert w["training_share"] == pytest.approx(w["training"] / w["total"])
    md = labjournal.markdown(state)
    assert "## Accelerator time" in md
    row = next(line for line in md.splitlines() if line.startswith("| attack |"))
    assert f"| {100 * w['training_share']:.1f}% |" in row
    assert "accelerator time" in export.table_text(state)


def test_the_evaluation_batch_grows_only_under_trainings_peak_memory():
    from evaluate import MEMORY_MARGIN, eval_batch_size

    mb = 2**20
    assert MEMORY_MARGIN <= 1
    assert eval_batch_size(8, 32, 0, 20 * mb, 8 * mb) == 8          # no training peak recorded: its micro-batch
    assert eval_batch_size(8, 32, 412 * mb, 21 * mb, 8 * mb) == 32  # room for 38 rows: the profile's cap
    assert eval_batch_size(8, 32, 200 * mb, 21 * mb, 8 * mb) == 17  # (0.8 x 200 - 21) / 8 rows fit
    assert 21 * mb + 17 * 8 * mb <= MEMORY_MARGIN * 200 * mb
    assert eval_batch_size(8, 32, 50 * mb, 21 * mb, 8 * mb) == 8    # never below training's own micro-batch
