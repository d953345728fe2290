"""Debian's chromium, headless, driven over the DevTools protocol on a pipe (no websocket
library, no driver binary): open a page, wait for a condition the page's own scripts make
true, read the DOM, take a screenshot. The dashboard's tests and bench/dashboard.py use it.

    with Chromium() as browser:
        page = browser.open("http://127.0.0.1:8767/", width=1280, height=900)
        browser.wait(page, "document.body.dataset.rendered === 'campaign'")
        html = browser.dom(page); browser.screenshot(page, "shot.png")

(--dump-dom cannot be used on this page: its event stream is a fetch that never ends, and
headless chromium's virtual time waits for pending fetches.)
"""

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags that run Debian's chromium headless as root in a container, with nothing reaching out.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]
# Seconds one protocol command may take (a loaded machine, a big page).
COMMAND_TIMEOUT_S = 120.0


class BrowserError(RuntimeError):
    pass


class Chromium:
    def __init__(self, dark=True):
        self.dark = dark
        self.ids = itertools.count(1)
        self.replies = {}
        self.cond = threading.Condition()
        self.proc = None

    def __enter__(self):
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        to_browser_r, self._w = os.pipe()          # chromium reads commands on fd 3
        self._r, from_browser_w = os.pipe()        # and writes replies on fd 4
        extra = ["--force-dark-mode", "--blink-settings=preferredColorScheme=0"] if self.dark else []

        def fds():   # in the child: the pipe ends become fds 3 and 4 (os.pipe's own are close-on-exec;
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)   # copies first: either may be 3 or 4)
            os.dup2(a, 3)
            os.dup2(b, 4)
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, *extra, f"--user-data-dir={self.profile}", "about:blank"],
                                     preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def __exit__(self, *exc):
        try:
            self.send("Browser.close", timeout=10)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    # -- the protocol -------------------------------------------------------------------
    def _read(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self.cond:
                    self.replies[None] = "closed"
                    self.cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self.cond:
                        self.replies[msg["id"]] = msg
                        self.cond.notify_all()

    def send(self, method, params=None, session=None, timeout=COMMAND_TIMEOUT_S):
        i = next(self.ids)
        msg = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self.cond:
            while i not in self.replies:
                if None in self.replies:
                    raise BrowserError(f"chromium exited (exit status {self.proc.poll()})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"{method}: no answer from chromium in {timeout:.0f}s")
                self.cond.wait(left)
            reply = self.replies.pop(i)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    # -- pages ------------------------------------------------------------------------------
    def open(self, url, width=1280, height=900, mobile=False) -> str:
        """A new tab at `url`; returns its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 2 if mobile else 1,
                                                         "mobile": mobile}, session)
        if self.dark:
            self.send("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
                      session)
        self.send("Page.enable", {}, session)
        self.send("Page.navigate", {"url": url}, session)
        return session

    def eval(self, session, expression):
        got = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True}, session)
        if "exceptionDetails" in got:
            raise BrowserError(f"{expression}: {got['exceptionDetails'].get('text')}")
        return got.get("result", {}).get("value")

    def wait(self, session, expression, timeout=120.0, every=0.05):
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.eval(session, expression)
            except BrowserError:
                got = None          # the page is still loading (no document yet)
            if got:
                return got
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f}s waiting for: {expression}")
            time.sleep(every)

    def dom(self, session) -> str:
        return self.eval(session, "document.documentElement.outerHTML")

    def screenshot(self, session, path, full_page=True):
        params = {"format": "png"}
        if full_page:
            h = self.eval(session, "document.documentElement.scrollHeight")
            w = self.eval(session, "document.documentElement.clientWidth")
            params.update(clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1}, captureBeyondViewport=True)
        data = self.send("Page.captureScreenshot", params, session)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
