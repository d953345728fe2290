"""The dashboard as its tests drive it: `swarm dashboard` in a subprocess, its routes over
HTTP, its event stream, and Debian's chromium (headless, tests/chromium.py) rendering the page.

    with Dashboard("--journal", path) as d:       # the real command, on a free port
        d.get("/api/state").json(); d.events(); d.dom()
"""

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time

import requests
from chromium import Chromium

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT_S = 120.0   # a loaded machine
URL_RE = re.compile(r"http://(\S+?):(\d+)/(\?token=([A-Za-z0-9_-]+))?")


class Dashboard:
    """`python -m swarm.cli dashboard ARGS --port 0` until the context ends."""

    def __init__(self, *args, env=None):
        self.args = [*args, "--port", "0"]
        self.env = {**os.environ, **(env or {})}
        self.proc = self.base = self.token = None
        self.first_line = ""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "swarm.cli", "dashboard", *self.args],
                                     cwd=REPO_ROOT, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        try:
            self.first_line = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"swarm dashboard printed no URL: {self.proc.stderr.read()}") from None
        m = URL_RE.search(self.first_line.split("(")[-1] if "?token=" in self.first_line else self.first_line)
        assert m, self.first_line
        self.base = f"http://127.0.0.1:{m.group(2)}"
        self.token = m.group(4)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def url(self, path="/", token=True) -> str:
        if token and self.token:
            path += ("&" if "?" in path else "?") + "token=" + self.token
        return self.base + path

    def get(self, path, token=True, **kw) -> requests.Response:
        return requests.get(self.url(path, token), timeout=30, **kw)

    def state(self) -> dict:
        r = self.get("/api/state")
        assert r.status_code == 200, r.text
        return r.json()

    def events(self, token=True):
        """The event stream, one decoded message at a time (a generator; close() it when done)."""
        with requests.get(self.url("/api/events", token), stream=True, timeout=(10, 60)) as r:
            assert r.status_code == 200, r.status_code
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data: "):
                    yield json.loads(line[6:])

    def dom(self, path="/", rendered="campaign") -> str:
        """The page's DOM once its scripts drew it (body[data-rendered]), in a real chromium."""
        with Chromium() as browser:
            page = browser.open(self.url(path))
            browser.wait(page, f"document.body.dataset.rendered === {rendered!r}")
            return browser.dom(page)


def wait_for(what, check, timeout=120.0, every=0.2):
    """Poll check() until it returns something truthy; fail saying `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


# -- reading the dumped DOM ------------------------------------------------------------------
def chart_points(dom: str) -> int:
    """Trial dots drawn in the progress chart (plotly draws one path.point per dot; the
    legend's sample glyphs carry no customdata)."""
    chart = dom[dom.index('id="chart"'):dom.index('id="noise"')]
    return chart.count('class="point plotly-customdata"')


def band_paths(dom: str) -> list:
    """Filled areas of the progress chart's plot (the mainline band), their path data."""
    chart = dom[dom.index('id="chart"'):dom.index('id="noise"')]
    plot = chart[:chart.index('class="legend"')] if 'class="legend"' in chart else chart
    return re.findall(r'<path class="js-fill" d="([^"]+)"', plot)


def progress_of(dom: str) -> dict:
    """worker name -> (progress %, trial label) of each busy worker's bar."""
    out = {}
    for m in re.finditer(r'data-worker="([^"]+)"(.*?)(?=data-worker=|</section>)', dom, re.S):
        bar = re.search(r'data-progress="(\d+)"', m.group(2))
        what = re.search(r'<div class="what" title="([^"]*)"', m.group(2))
        if bar:
            out[m.group(1)] = (int(bar.group(1)), what.group(1) if what else "")
    return out
