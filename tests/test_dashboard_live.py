"""`swarm dashboard` on a live campaign: local Ray, two workers, the synthetic target (tests/synthetic,
each trial "trains" 9 s so a worker reports progress twice), a Redis journal with a password
(the campaign records its config, journal URL included). The page is followed while the
campaign runs: events reach a connected client, a real chromium sees a worker's progress bar
move, the chart draws every trial, no secret is served, and the stop button stops the campaign
the way `swarm stop` does."""

import json
import threading
from types import SimpleNamespace

import pytest
import requests
from campaign_events import events_of, of_type
from dashboard_helpers import Dashboard, band_paths, chart_points, progress_of, wait_for
from redis_server import PASSWORD, RedisServer
from synthetic import make_repo
from test_coordinator_campaign import config, ray_local  # noqa: F401 (fixture)

from chromium import Chromium
from coordinator.campaign import Campaign
from journal.views import replay

TAG = "live"
# Seconds a synthetic trial "trains": its 3 steps land 3 s apart, so the worker (which journals
# progress at most every 5 s) reports 33% and then 100%.
TRIAL_S = "9"


@pytest.fixture(scope="module")
def live(ray_local, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("live")
    repo = make_repo(tmp / "repo")
    with RedisServer(tmp / "redis") as srv:
        cfg = config(repo, TAG, workers=2, journal=srv.url, max_trials=60, env={"AUTORESEARCH_SYNTH_SLEEP": TRIAL_S})
        out = {}
        runner = threading.Thread(target=lambda: out.setdefault("reason", Campaign(cfg, log=lambda m: None).run()),
                                  daemon=True)
        runner.start()
        wait_for("the campaign to start", lambda: of_type(events_of(repo, TAG, srv.url), "campaign_started"))
        with Dashboard("--journal", srv.url, "--repo", str(repo), "--allow-stop") as d:
            yield SimpleNamespace(repo=repo, url=srv.url, port=srv.port, dash=d, out=out, runner=runner)
            if runner.is_alive():     # a failed test left it running: stop it as `swarm stop` would
                from journal import open_journal
                with open_journal(srv.url, campaign=TAG) as j:
                    j.emit("stop_requested", source="test", reason="teardown")
                runner.join(60)


def journal_events(live):
    return events_of(live.repo, TAG, live.url)


def test_a_new_event_reaches_a_connected_client(live):
    stream = live.dash.events()
    hello = next(stream)
    msg = next(m for m in stream if any(" trial_" in e["line"] for e in m.get("events", [])))
    stream.close()
    assert msg["version"] > hello["version"]
    line = next(e["line"] for e in msg["events"] if " trial_" in e["line"])
    trial_id = line.split("trial_id=")[1].split()[0]
    assert any(ev.data.get("trial_id") == trial_id for ev in journal_events(live))


def test_state_follows_the_journal(live):
    wait_for("a finished trial", lambda: of_type(journal_events(live), "trial_finished"))
    events = journal_events(live)
    s = wait_for("the dashboard to catch up", lambda: (lambda s: s if s["events"] >= len(events) else None)(
        live.dash.state()))
    v = replay(events)
    assert s["campaign"] == TAG and s["running"]
    track = s["tracks"][0]
    assert track["name"] == v.track_names()[0]
    finished = {t.trial_id for t in v.trials.values() if t.status != "running" and t.kind != "heldout"}
    assert finished <= set(track["dots"]["id"])
    assert {w["name"] for w in s["workers"]} == set(v.workers)


def test_chromium_sees_the_progress_bar_move_and_every_trial(live):
    with Chromium() as browser:
        page = browser.open(live.dash.url("/"))
        first = browser.wait(page, """(() => { const b = document.querySelector('.worker .bar-fill');
            return b && [b.closest('.worker').dataset.worker, b.dataset.progress]; })()""", timeout=180)
        worker, p1 = first
        html1 = browser.dom(page)
        browser.wait(page, f"""(() => {{ const b = document.querySelector('[data-worker="{worker}"] .bar-fill');
            return !b || b.dataset.progress !== '{p1}'; }})()""", timeout=180)
        html2 = browser.dom(page)
        assert progress_of(html1)[worker][0] == int(p1)
        assert progress_of(html2).get(worker) != progress_of(html1)[worker]
        # every finished trial of the track is a point, drawn from the data the page holds
        browser.wait(page, "snap.tracks.length && snap.tracks[0].trials >= 3", timeout=180)
        drawn, trials = browser.eval(page, """[document.querySelectorAll('#chart path.point.plotly-customdata').length,
            snap.tracks[trackIdx].dots.id.length]""")
        assert drawn == trials >= 3
        # the band, once the noise floor is measured (DOM and data read in one go: the page moves)
        html, dots = browser.wait(page, "snap.tracks[0].mainline.length && snap.tracks[0].mainline[0].hi != null "
                                        "&& [document.documentElement.outerHTML, snap.tracks[trackIdx].dots.id.length]",
                                  timeout=240)
        assert band_paths(html) and chart_points(html) == dots


def test_a_candidate_opens_with_its_diff(live):
    created = wait_for("a candidate", lambda: of_type(journal_events(live), "candidate_created"), timeout=240)[0]
    hid = created.data["hypothesis_id"]
    got = wait_for("its detail", lambda: (lambda r: r.json() if r.status_code == 200 else None)(
        live.dash.get(f"/api/hypothesis/{hid}")))
    c = got["candidates"][0]
    assert c["diff_source"] == "journal" and c["diff"] == created.data["diff"]
    assert '<span class="gi">+' in c["diff_html"]


def test_no_secret_is_served_from_a_live_redis_journal(live):
    started = of_type(journal_events(live), "campaign_started")[0]
    secrets = (PASSWORD, f"127.0.0.1:{live.port}", live.url)
    s = live.dash.get("/api/state").text
    pages = [s, live.dash.get("/download/journal.md").text, live.dash.get("/download/results.tsv").text,
             live.dash.get("/").text]
    pages += [live.dash.get(f"/api/hypothesis/{h['id']}").text for h in json.loads(s)["hypotheses"]]
    stream = live.dash.events()
    pages += [json.dumps(next(stream)), json.dumps(next(stream))]
    stream.close()
    for text in pages:
        for secret in secrets:
            assert secret not in text
    # the journal itself hands out the config with the password masked (safety.redact); the page
    # hides the journal's address as well
    assert started.data["config"].get("journal") in (None, live.url.replace(PASSWORD, "***"))


def test_stop_button_stops_the_campaign_like_swarm_stop(live):
    assert requests.post(live.dash.url("/api/stop", token=False), timeout=30).status_code == 403
    r = requests.post(live.dash.url("/api/stop"), timeout=30)
    assert r.status_code == 200 and r.json()["ok"], r.text
    live.runner.join(120)
    assert not live.runner.is_alive()
    assert live.out["reason"].startswith("stop requested (stop button of the dashboard")
    stop = of_type(journal_events(live), "stop_requested")[-1]
    assert "@" in stop.source and stop.data["reason"].startswith("stop button of the dashboard")
    wait_for("the page to show it stopped", lambda: not live.dash.state()["running"])
