"""`swarm dashboard` over the recorded demo campaign (tests/fixtures/journal_campaign.jsonl):
its routes return what journal/views.py says, a new journal event reaches a connected page,
nothing secret leaves the server (the journal copy here carries an old-style campaign_started
whose config holds the Redis URL with its password, and secrets in free text), the token on a
LAN bind, the same error messages as `swarm journal`, an empty journal, and a real chromium
rendering the page."""

import copy
import re
from pathlib import Path

import pytest
import requests
from dashboard_helpers import Dashboard, band_paths, chart_points, progress_of, wait_for

from dashboard.server import COOKIE
from dashboard.state import DashboardState, hypothesis_detail, redact
from journal import Event, export, open_journal
from journal.views import replay
from tests.redis_server import PASSWORD, redis_server  # noqa: F401 (fixture)

RECORDED = Path(__file__).parent / "fixtures" / "journal_campaign.jsonl"

T1 = "apple-m2-max/tiny/60s/ab12cd34ef56"
# Secrets an older writer left in the journal: none may reach a browser.
REDIS_PW = "hunter2-Sup3rSecret"
OLD_URL = f"redis://:{REDIS_PW}@10.9.8.7:6380/0"
API_KEY = "sk-ant-api03-AbCdEfGhIjKlMnOp"
SECRETS = (REDIS_PW, "10.9.8.7:6380", API_KEY)


def recorded_events():
    return [Event.from_json(line) for line in RECORDED.read_text().splitlines() if line.strip()]


def with_secrets(events):
    """The recorded campaign as an older version wrote it: config with the journal URL (password
    inside) and the trial env, a lab note quoting a password, a crash log with a URL."""
    out = copy.deepcopy(events)
    out[0].data["config"].update(journal=OLD_URL, env={"ANTHROPIC_API_KEY": API_KEY})
    for ev in out:
        if ev.type == "lab_note":
            ev.data["text"] += f"\nredis-cli -a {REDIS_PW} said: password={REDIS_PW} at {OLD_URL}"
        if ev.type == "trial_finished" and ev.data.get("status") == "crash":
            ev.data["log_tail"] = f"connecting to {OLD_URL}\nANTHROPIC_API_KEY={API_KEY}\nTraceback"
    return out


@pytest.fixture(scope="module")
def journal_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dash") / "journal.db")
    with open_journal(path, campaign="demo") as j:
        for ev in with_secrets(recorded_events()):
            ev.campaign = "demo"
            j._append(ev)       # straight to the store, as an older version wrote it (no redaction)
    return path


@pytest.fixture(scope="module")
def dash(journal_path):
    with Dashboard("--journal", journal_path, "--allow-stop") as d:
        yield d


def views(journal_path):
    with open_journal(journal_path, campaign="demo") as j:
        return replay(list(j.read()))


def assert_no_secret(text, where, journal_path):
    for s in SECRETS + (journal_path,):
        assert s not in text, f"{s!r} leaked in {where}"


# -- routes ----------------------------------------------------------------------------------
def test_state_says_what_the_views_say(dash, journal_path):
    s, v = dash.state(), views(journal_path)
    assert s["campaign"] == "demo" and s["events"] == v.count and not s["running"]
    assert [t["name"] for t in s["tracks"]] == v.track_names()
    for tr in s["tracks"]:
        done = [t for t in v.trials_of(track=tr["name"]) if t.finished and t.kind != "heldout"]
        assert tr["dots"]["id"] == [t.trial_id for t in done]
        assert tr["dots"]["v"] == [t.value for t in done]
        assert [(m["t"], m["v"]) for m in tr["mainline"]] == [(a, pytest.approx(b)) for a, b, _c in
                                                                v.mainline_curve(tr["name"])]
        sigma, dof = v.noise_floor(tr["name"])
        assert tr["dof"] == dof and tr["sigma"] == pytest.approx(sigma, abs=1e-6)
        for m in tr["mainline"]:
            assert m["lo"] < m["v"] < m["hi"]            # the band: mean +/- t * sigma / sqrt(n)
    t1 = s["tracks"][0]
    assert [m["action"] for m in t1["marks"]] == ["promoted", "reverted"]
    assert t1["heldout"][0]["v"] == 1.495 and s["header"]["best_heldout"] == 1.495
    assert {h["id"]: h["status"] for h in s["hypotheses"]} == \
        {h.hypothesis_id: v.hypothesis_status(h) for h in v.hypotheses.values()}
    h1 = next(h for h in s["hypotheses"] if h["id"] == "h1")
    assert h1["effect"] == -0.013 and h1["lo"] < -0.013 < h1["hi"] < 0 and h1["trials"] == 5
    assert {w["name"]: w["state"] for w in s["workers"]} == {w.worker: w.state for w in v.workers.values()}
    busy = next(w for w in s["workers"] if w["state"] == "busy")
    assert busy["trial"]["progress"] == v.trials[busy["trial"]["id"]].progress["progress"]
    assert s["header"]["promotions"] == 1 and s["header"]["reverts"] == 1
    assert s["header"]["tokens"] == sum(u.input_tokens + u.output_tokens for u in v.usage.values())
    assert s["promotions"][0]["commit"] == "e1e1e1e" and s["promotions"][0]["gain"] == 0.013
    assert [n["title"] for n in s["notes"]] == [ev.data["title"] for ev in v.notes]
    assert s["can_stop"] is True and dash.get("/api/state", token=False).json()["can_stop"] is False


def test_hypothesis_opens_its_diff_verdict_and_trials(dash):
    d = dash.get("/api/hypothesis/h1").json()
    c = d["candidates"][0]
    assert c["diff_source"] == "journal" and '<span class="gi">+WARMDOWN_RATIO = 0.8</span>' in c["diff_html"]
    assert "beat the mainline" in c["verdict"] and "p = 0.0031" in c["verdict"] and "promoted" in c["verdict"]
    assert [(t["id"], t["kind"], t["value"]) for t in c["trials"]] == [
        ("t06", "candidate", 1.485), ("t07", "candidate", 1.49), ("t08", "candidate", 1.487),
        ("t09", "retest", 1.488), ("t10", "retest", 1.486)]
    assert dash.get("/api/hypothesis/nope").status_code == 404


def test_downloads_are_the_exports(dash, journal_path):
    v = views(journal_path)
    tsv = dash.get("/download/results.tsv")
    assert tsv.status_code == 200 and tsv.text == export.tsv(v)
    one = dash.get(f"/download/results.tsv?track={T1}").text.splitlines()
    assert one[0] == export.tsv_header() and len(one) - 1 == len(
        [t for t in v.trials.values() if t.track == T1 and t.status != "running"])
    md = dash.get("/download/journal.md").text
    assert md.startswith("# Lab journal: campaign `demo`") and "## Leaderboard" in md


def test_no_secret_in_any_payload(dash, journal_path):
    paths = ["/", "/static/app.js", "/static/style.css", "/static/diff.css", "/api/state",
             "/download/results.tsv", "/download/journal.md"]
    paths += [f"/api/hypothesis/{h['id']}" for h in dash.state()["hypotheses"]]
    for p in paths:
        for token in (True, False):
            r = dash.get(p, token=token)
            assert r.status_code == 200, p
            assert_no_secret(r.text, p, journal_path)
    stream = dash.events()
    assert_no_secret(str(next(stream)), "/api/events", journal_path)
    stream.close()
    # the redaction itself: keys and free text
    assert redact({"journal": OLD_URL, "tokens": 5, "note": f"pw {OLD_URL} token: abc"}) == \
        {"journal": "***", "tokens": 5, "note": "pw redis://*** token: ***"}


def test_new_journal_event_reaches_a_connected_client(dash, journal_path):
    stream = dash.events()
    hello = next(stream)
    with open_journal(journal_path, campaign="demo") as j:
        j.emit("lab_note", source="test", author="test", title="seen live", text="a note written now")
    msg = next(m for m in stream if any("seen live" in e["line"] for e in m.get("events", [])))
    stream.close()
    assert msg["version"] > hello["version"]
    assert wait_for("the note in the snapshot",
                    lambda: any(n["title"] == "seen live" for n in dash.state()["notes"]))


def test_stop_needs_the_token(dash):
    assert requests.post(dash.url("/api/stop", token=False), timeout=30).status_code == 403
    assert requests.post(dash.url("/api/stop", token=False), cookies={COOKIE: dash.token},
                         timeout=30).status_code == 403          # a write needs the token itself
    r = requests.post(dash.url("/api/stop"), timeout=30).json()
    assert r["ok"] is False and "not running" in r["message"]     # the demo campaign has stopped


def test_chromium_renders_the_recorded_campaign(dash, journal_path):
    dom = dash.dom()
    assert 'data-rendered="campaign"' in dom
    s = dash.state()
    assert chart_points(dom) == s["tracks"][0]["trials"] == 13
    assert band_paths(dom) and all(len(d) > 20 for d in band_paths(dom))
    assert re.search(r'id="stop"[^>]*hidden', dom) and 'class="bar-fill" data-progress="50"' in dom
    assert dom.count('<tr class="row"') == len(s["hypotheses"])
    assert "▲ promoted e1e1e1e" in dom and "↩ reverted e3e3e3e" in dom
    assert progress_of(dom) == {"linux-1": (50, "Zero weight decay")}
    assert_no_secret(dom, "the rendered page", journal_path)


# -- binding, errors, empty ------------------------------------------------------------------
def test_lan_bind_refuses_every_request_without_the_token(journal_path):
    with Dashboard("--journal", journal_path, "--host", "0.0.0.0") as d:
        assert d.token and f"?token={d.token}" in d.first_line
        for p in ("/", "/static/app.js", "/static/plotly.min.js", "/api/state", "/api/events",
                  "/api/hypothesis/h1", "/download/results.tsv"):
            assert d.get(p, token=False).status_code == 403, p
            assert requests.get(d.base + p + "?token=wrong" + d.token[5:], timeout=30).status_code == 403
        assert d.get("/api/state").json()["campaign"] == "demo"
        assert d.get("/api/state").json()["can_stop"] is False           # no --allow-stop: read-only
        assert requests.post(d.url("/api/stop"), timeout=30).status_code == 403
        page = d.get("/")               # the page's own assets then load with the cookie it sets
        assert page.cookies.get(COOKIE) == d.token and "SameSite=strict" in page.headers["set-cookie"]
        assert requests.get(d.base + "/static/app.js", cookies={COOKIE: d.token}, timeout=30).status_code == 200
        assert requests.get(d.base + "/static/app.js", cookies={COOKIE: "x" + d.token}, timeout=30).status_code == 403
        assert 'data-rendered="campaign"' in d.dom()                       # the whole page, in chromium


def test_bad_journal_gives_the_messages_of_swarm_journal(redis_server, tmp_path, capsys):
    from swarm.cli import main as swarm
    wrong = redis_server.url.replace(PASSWORD, "not-the-password")
    down = f"redis://:pw@127.0.0.1:{redis_server.port + 1}/0"
    said = {}
    for url in (wrong, down, str(tmp_path / "missing.db")):
        assert swarm(["dashboard", "--journal", url, "--port", "0"]) == 1
        dash_err = capsys.readouterr().err.strip()
        assert swarm(["journal", url]) == 1
        assert dash_err == capsys.readouterr().err.strip() and dash_err.startswith("error: ")
        said[url] = dash_err
    assert "authentication failed" in said[wrong] and "not-the-password" not in said[wrong]
    assert "cannot reach Redis" in said[down]
    assert "no journal at" in said[str(tmp_path / "missing.db")]


def test_empty_journal_shows_no_campaign_yet_then_the_first_one(tmp_path):
    path = str(tmp_path / "journal.db")
    open_journal(path).close()
    with Dashboard("--journal", path) as d:
        assert wait_for("the empty journal read", lambda: d.state().get("ready")) and d.state()["empty"]
        dom = d.dom(rendered="empty")
        assert re.search(r'<section id="empty" class="empty">\s*<h2>no campaign yet</h2>', dom)
        with open_journal(path, campaign="first") as j:
            j.emit("campaign_started", source="test", config={}, target={})
        assert wait_for("the new campaign", lambda: d.state()["campaign"] == "first")


# -- pieces without a server -----------------------------------------------------------------
def test_incremental_noise_floor_matches_the_views_at_every_event(journal_path):
    with open_journal(journal_path, campaign="demo") as j:
        events = list(j.read())
    st = DashboardState("demo")
    for i, (pos, ev) in enumerate(events):
        st.apply(ev, pos)
        v = replay(events[:i + 1])
        for name in v.track_names():
            sigma, dof = v.noise_floor(name)
            got = st.live_noise(name)
            assert got[1] == dof and (sigma is None or got[0] == pytest.approx(sigma, rel=1e-9))


def test_diff_comes_from_git_when_the_journal_has_none(tmp_path):
    from dashboard.cli import _diff_source
    from synthetic import git, make_repo
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD")
    (repo / "train.py").write_text((repo / "train.py").read_text().replace("DEPTH = 4", "DEPTH = 5"))
    git(repo, "commit", "-qam", "depth 5")
    head = git(repo, "rev-parse", "HEAD")
    st = DashboardState("x")
    for ev in (Event(type="hypothesis_proposed", data={"hypothesis_id": "h", "title": "depth 5"}),
               Event(type="candidate_created", data={"candidate_id": "c", "hypothesis_id": "h",
                                                     "commit": head, "base_commit": base})):
        st.apply(ev)
    got = hypothesis_detail(st, "h", _diff_source(str(repo)))["candidates"][0]
    assert got["diff_source"] == "git" and "+DEPTH = 5" in got["diff"] and "-DEPTH = 4" in got["diff"]
    none = hypothesis_detail(st, "h", _diff_source(str(tmp_path)))["candidates"][0]
    assert none["diff"] is None and none["diff_source"] is None


def test_state_sends_only_the_sections_that_moved(dash, journal_path):
    first = dash.state()
    have = ",".join(f"{k}.{v}" for k, v in first["revs"].items())
    again = dash.get("/api/state", params={"have": have}).json()
    assert again["tracks"] == [None] * len(first["tracks"]) and again["hypotheses"] is None
    assert again["workers"] == first["workers"]                   # always sent
    with open_journal(journal_path, campaign="demo") as j:
        j.emit("lab_note", source="test", author="test", title="moved", text="only the notes moved")
    moved = wait_for("the note", lambda: (lambda s: s if s["notes"] else None)(
        dash.get("/api/state", params={"have": have}).json()))
    assert moved["notes"][-1]["title"] == "moved" and moved["hypotheses"] is None and moved["tracks"][0] is None


def test_a_literal_secret_that_would_break_the_json_is_hidden_value_by_value():
    import json
    from dashboard.server import _encode_parts
    base, _names, _sections = _encode_parts({"campaign": "c", "n": 27182818, "note": "pw is 27182818"}, ["27182818"])
    assert json.loads(base) == {"campaign": "c", "n": 27182818, "note": "pw is ***", "track_names": []}
