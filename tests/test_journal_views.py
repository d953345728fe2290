"""Views and exports of a recorded campaign (tests/fixtures/journal_campaign.jsonl,
hand-written: two tracks, merges, a revert, a crash, held-out, notes, agent usage,
an in-flight trial, an unknown type and a v=99 event), replayed through both
backends, plus the `swarm journal` command (python -m journal).

Goldens: tests/fixtures/journal_campaign.{tsv,md,table.txt}. After a reviewed change
of an export, rewrite them with JOURNAL_UPDATE_GOLDENS=1 and read the diff."""

import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from journal import Event, open_journal
from journal import export, labjournal
from journal.views import replay
from tests.redis_server import redis_server  # noqa: F401 (fixture)

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = FIXTURES / "journal_campaign.jsonl"
T1 = "apple-m2-max/tiny/60s/ab12cd34ef56"
T2 = "linux-x86/tiny/60s/ab12cd34ef56"
BASE, M1, M3 = "a1b2c3d4e5f6", "e1e1e1e1bbbb", "e3e3e3e3bbbb"


def recorded_events():
    return [Event.from_json(line) for line in RECORDED.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def replayed(request, tmp_path_factory):
    """The recorded campaign appended to a backend and read back: (events, state)."""
    if request.param == "sqlite":
        url = str(tmp_path_factory.mktemp("views") / "journal.db")
    else:
        url = request.getfixturevalue("redis_server").url
    with open_journal(url, campaign="demo") as j:
        for ev in recorded_events():
            j.append(ev)
        events = list(j.read())
    return events, replay(events)


def test_backend_gives_back_the_recorded_events(replayed):
    events, _ = replayed
    assert [ev for _p, ev in events] == recorded_events()


def test_trials_and_workers(replayed):
    _, s = replayed
    assert s.campaign == "demo" and s.count == 89
    assert len(s.trials) == 18 and "t19" not in s.trials  # the v99 event is not applied
    running = [t for t in s.trials.values() if t.status == "running"]
    assert [t.trial_id for t in running] == ["t18"] and running[0].progress["progress"] == 0.5
    crash = s.trials["t12"]
    assert (crash.status, crash.crash_class, crash.value) == ("crash", "nan", None)
    assert "divergence" in crash.log_tail
    w = s.workers
    assert (w["mac-1"].state, w["mac-1"].trials, w["mac-1"].crashes) == ("idle", 8, 0)
    assert (w["mac-2"].state, w["mac-2"].lost_reason, w["mac-2"].crashes) == ("lost", "no heartbeat for 120 s", 1)
    assert (w["linux-1"].state, w["linux-1"].trial_id) == ("busy", "t18")


def test_hypotheses_with_their_verdicts(replayed):
    _, s = replayed
    status = {hid: s.hypothesis_status(h) for hid, h in s.hypotheses.items()}
    assert status == {"h1": "confirmed, promoted", "h2": "crash", "h3": "confirmed, reverted",
                      "h4": "invalid", "h5": "discard", "h6": "running"}
    assert s.candidates["c1"].verdict["p_value"] == 0.0031
    assert s.candidates["c4"].invalid == "changed prepare.py (a fixed file)"


def test_mainline_history_per_track(replayed):
    _, s = replayed
    t1, t2 = s.tracks[T1], s.tracks[T2]
    assert [st.action for st in t1.history] == ["baseline", "merged", "retested", "promoted", "heldout",
                                                 "merged", "retested", "reverted"]
    assert t1.head.startswith(M1) and t2.head.startswith(BASE)
    promoted = t1.history[3]
    assert (promoted.val_bpb, promoted.test_bpb, promoted.effect_bpb, promoted.candidate_id) == \
           (1.4870, 1.4950, -0.0130, "c1")
    assert t1.history[7].previous.startswith(M1) and t1.history[7].candidate_id == "c3"
    curve = s.mainline_curve(T1)
    assert [(round(v, 6), c[:12]) for _t, v, c in curve] == \
           [(round((1.5020 + 1.4980 + 1.5010) / 3, 6), BASE), (1.487, M1), (1.487, M1)]


def test_noise_floor_per_track_is_the_pooled_spread_of_repeated_commits(replayed):
    _, s = replayed
    # commits with repeated ok validation trials on T1 (the held-out run and the crash excluded)
    groups = [[1.5020, 1.4980, 1.5010], [1.4850, 1.4900, 1.4870], [1.4880, 1.4860],
              [1.4800, 1.4830], [1.4900, 1.4920]]
    ss = sum(statistics.variance(g) * (len(g) - 1) for g in groups)
    sigma, dof = s.noise_floor(T1)
    assert dof == 7 and sigma == pytest.approx(math.sqrt(ss / 7))
    sigma2, dof2 = s.noise_floor(T2)  # the single c5 trial adds nothing
    assert dof2 == 1 and sigma2 == pytest.approx(statistics.stdev([1.8100, 1.8160]))


def test_leaderboard(replayed):
    _, s = replayed
    board = s.leaderboard(T1)
    assert [r["commit"][:4] for r in board] == ["c3c3", "e1e1", "c1c1", "e3e3", "a1b2"]
    assert [r["mainline"] for r in board] == [False, True, False, False, False]
    assert board[1]["n"] == 2 and board[1]["mean"] == pytest.approx(1.487)
    assert board[0]["label"] == "Total batch 2^16 -> 2^14"


def test_agent_usage_notes_and_unknown_events(replayed):
    _, s = replayed
    u = s.usage[("claude-proposer", "claude-sonnet-4-5")]
    assert (u.calls, u.input_tokens, u.output_tokens, u.cache_read_tokens) == (2, 26000, 1700, 20000)
    assert u.cost_usd == pytest.approx(0.1190)
    assert [n.data["title"] for n in s.notes] == ["Overnight observations"]
    assert [(ev.type, ev.v) for ev, _why in s.unknown] == [("thermal_throttle", 1), ("trial_finished", 99)]


# -- exports against goldens ---------------------------------------------------------------
GOLDENS = {"tsv": ("journal_campaign.tsv", export.tsv),
           "markdown": ("journal_campaign.md", labjournal.markdown),
           "table": ("journal_campaign.table.txt", export.table_text)}


@pytest.mark.parametrize("fmt", sorted(GOLDENS))
def test_exports_match_goldens(replayed, fmt):
    name, render = GOLDENS[fmt]
    text = render(replayed[1])
    golden = FIXTURES / name
    if os.environ.get("JOURNAL_UPDATE_GOLDENS"):
        golden.write_text(text)
        pytest.skip(f"rewrote {golden}: review the diff")
    assert text == golden.read_text()


def test_tsv_starts_with_the_upstream_columns(replayed):
    header, *rows = export.tsv(replayed[1]).splitlines()
    assert header.split("\t")[:5] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert len(rows) == 17  # every finished trial; t18 is still running
    crash = [r.split("\t") for r in rows if "\tcrash\t" in r]
    assert [c[:4] for c in crash] == [["c2c2c2c", "0.000000", "0.0", "crash"]]


def test_json_export_is_one_stored_event_per_line(replayed):
    events, _ = replayed
    lines = export.json_lines(events).splitlines()
    assert [json.loads(x) for x in lines] == [json.loads(x) for x in RECORDED.read_text().splitlines()]


def test_views_and_exports_survive_odd_data():
    """Every known type with empty or wrongly typed data, and partial campaigns: no crash."""
    odd = []
    for i, ev in enumerate(recorded_events()):
        for j, junk in enumerate([None, "x", [], {"a": 1}, -1, float("nan")]):
            data = {k: junk for k in ev.data}
            odd.append(Event(id=f"{i}-{j}", type=ev.type, time=ev.time, data=data))
        odd.append(Event(id=f"{i}-empty", type=ev.type, time=ev.time, data={}))
    state = replay(odd)
    assert state.unknown  # the unusable ones are kept as such
    for render in (export.tsv, labjournal.markdown, export.table_text):
        assert render(state)
    assert export.event_line(odd[0])
    partial = replay(recorded_events()[:12])  # cut while t03 runs
    assert [t.status for t in partial.trials.values()] == ["ok", "ok", "running"]
    assert partial.workers["linux-1"].state == "busy"
    assert "still running" in labjournal.markdown(partial) and "t03" in export.table_text(partial)


def test_a_trial_reported_twice_counts_once_and_resume_clears_stopped():
    def ev(i, type, **data):
        return Event(id=f"e{i}", campaign="c", type=type, time=1000.0 + i, source="x", data=data)

    events = [
        ev(0, "trial_started", trial_id="t1", worker="w1", track="T", commit="abc", seed=0, kind="baseline"),
        ev(1, "trial_finished", trial_id="t1", worker="w1", track="T", commit="abc", seed=0,
           kind="baseline", status="aborted", reason="lease expired"),
        # an old worker that outlived the coordinator reports late: it must not count
        ev(2, "trial_finished", trial_id="t1", worker="w1", track="T", commit="abc", seed=0,
           kind="baseline", status="ok", val_bpb=1.5),
        ev(3, "campaign_stopped", reason="killed"),
        ev(4, "campaign_resumed", config={}),
    ]
    state = replay(events)
    assert state.trials["t1"].status == "aborted" and state.trials["t1"].val_bpb is None
    assert [e.id for e, _ in state.ignored] == ["e2"] and not state.unknown
    assert state.stopped is None


# -- the command -------------------------------------------------------------------------------
def swarm_journal(*args, env=None, cwd=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "journal", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def journal_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "journal.db"
    with open_journal(str(path), campaign="demo") as j:
        for ev in recorded_events():
            j.append(ev)
    return str(path)


def test_cli_formats(journal_file):
    tsv = swarm_journal(journal_file, "--format", "tsv")
    assert tsv.returncode == 0, tsv.stderr
    assert tsv.stdout == (FIXTURES / "journal_campaign.tsv").read_text()
    js = swarm_journal(journal_file, "--format", "json")
    assert [json.loads(x) for x in js.stdout.splitlines()] == \
           [json.loads(x) for x in RECORDED.read_text().splitlines()]
    table = swarm_journal(env={"SWARM_JOURNAL": journal_file})  # default: $SWARM_JOURNAL, table
    assert table.returncode == 0 and table.stdout == (FIXTURES / "journal_campaign.table.txt").read_text()


def test_cli_plot_writes_a_png(journal_file, tmp_path):
    out = tmp_path / "progress.png"
    r = swarm_journal(journal_file, "--plot", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    r = swarm_journal(journal_file, "--plot", str(tmp_path / "missing" / "p.png"))
    assert r.returncode == 1 and "cannot write the plot" in r.stderr


def test_cli_errors_and_campaign_choice(journal_file, tmp_path):
    r = swarm_journal(cwd=tmp_path, env={"SWARM_JOURNAL": ""})
    assert r.returncode == 1 and "no journal at .swarm/journal.db" in r.stderr
    r = swarm_journal(journal_file, "--campaign", "nope")
    assert r.returncode == 1 and "campaigns there: demo" in r.stderr
    two = str(tmp_path / "two.db")
    with open_journal(two, campaign="older") as j:
        j.emit("lab_note", source="x", author="x", title="old", text="")
    with open_journal(two, campaign="newer") as j:
        j.emit("lab_note", source="x", author="x", title="new", text="")
    r = swarm_journal(two, "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["campaign"] == "newer"
    assert "2 campaigns" in r.stderr and "older" in r.stderr and "--campaign" in r.stderr
    r = swarm_journal(two, "--format", "json", "--campaign", "older")
    assert json.loads(r.stdout)["data"]["title"] == "old"


def test_cli_follow_prints_new_events_as_they_arrive(tmp_path):
    path = str(tmp_path / "live.db")
    with open_journal(path, campaign="live") as j:
        first = j.emit("lab_note", source="x", text="already there")
        proc = subprocess.Popen([sys.executable, "-m", "journal", path, "--format", "json", "--follow"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        reader = threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout])
        reader.start()
        try:
            deadline = time.monotonic() + 120    # generous: a loaded machine
            while not lines and time.monotonic() < deadline:
                time.sleep(0.05)
            later = [j.emit("trial_progress", source="w", step=i) for i in range(3)]
            while len(lines) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            reader.join(timeout=10)
    assert [json.loads(x)["id"] for x in lines] == [first.id] + [e.id for e in later]
