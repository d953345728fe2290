"""The dashboard's web server: a starlette app over one followed journal.

    hub = Hub(journal, campaign, hidden=[url])    # a thread replays, then follows the journal
    app = make_app(hub, token, need_token, allow_stop)
    with Served(app, host, port) as srv: srv.url  # uvicorn in a thread (tests, bench); the CLI runs it in front

The page (static/) reads /api/state (the snapshot of dashboard/state.py) and
listens on /api/events (server-sent events: one message per journal event, as
it is folded). It refetches the snapshot when told, at most one fetch in flight,
so a burst of events costs one snapshot, not one per event.

Routes: / (page), /static/* (page assets; plotly.js from the plotly package),
/api/state, /api/events, /api/hypothesis/{id} (diff, verdict in words, trials),
/download/results.tsv, /download/journal.md, POST /api/stop (token and --allow-stop only).
"""

import asyncio
import copy
import getpass
import json
import secrets
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

from journal import export, labjournal
from journal.backend import JournalError
from journal.export import event_line

from .state import SECTIONS, DashboardState, hypothesis_detail, redact, redact_text, snapshot

STATIC = Path(__file__).resolve().parent / "static"
# Seconds a snapshot may be reused when no event arrived (clocks and running trials' hours move).
SNAPSHOT_MAX_AGE_S = 5.0
# Seconds between keep-alive comments on an idle event stream (proxies close silent ones).
KEEPALIVE_S = 15.0
# Seconds between tries to reach the journal again after it failed mid-campaign.
RETRY_S = 2.0
# Seconds between looks for a first campaign in an empty journal.
EMPTY_POLL_S = 1.0
# Longest wait inside one follow() call (the thread checks for shutdown between calls).
FOLLOW_IDLE_S = 1.0


def plotly_js() -> Path:
    """plotly.js as the plotly PyPI package ships it (no CDN: the page works offline)."""
    import plotly
    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


class Hub:
    """One campaign's state, folded from the journal by a thread; listeners hear of each event."""

    def __init__(self, journal, campaign=None, hidden=(), diff_of=None):
        self.journal = journal
        self.wanted = campaign
        self.secrets = [s for s in hidden if s]   # never shown: the journal URL, its password
        self.diff_of = diff_of            # candidate -> diff text from git, or None
        self.state = DashboardState(campaign or "")
        self.lock = threading.Lock()
        self.version = 0
        self.boot = secrets.token_hex(4)  # a restarted server's sections start their revisions afresh
        self.error = None                 # the journal's last failure, shown on the page
        self.ready = threading.Event()    # the start-up replay is done (or the journal is empty)
        self.listeners = set()            # (loop, asyncio.Queue)
        self._snap = (None, 0.0, None)    # (version, built at, encoded parts)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-follow", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def close(self):
        self._closing.set()
        self._thread.join(timeout=5)

    # -- the follower thread -------------------------------------------------------
    def _choose(self):
        """The campaign to show: the one asked for, else the most recently active; None while empty."""
        if self.wanted:
            return self.wanted
        have = self.journal.campaigns()
        return have[0] if have else None

    def _run(self):
        pos, replayed = None, False
        while not self._closing.is_set():
            try:
                if not replayed:      # (again from the start if the journal failed halfway)
                    tag = self._choose()
                    if tag is None:
                        self.ready.set()
                        self._closing.wait(EMPTY_POLL_S)
                        continue
                    self.journal.campaign, pos = tag, None
                    state = DashboardState(tag)
                    for pos, ev in self.journal.read():   # the start-up replay, off the lock
                        state.apply(ev, pos)
                    with self.lock:
                        self.state, self.version = state, self.version + 1
                    replayed = True
                    self.ready.set()
                    self._notify({"version": self.version, "type": "replayed", "line": ""})
                for p, ev in self.journal.follow(after=pos, timeout=FOLLOW_IDLE_S):
                    with self.lock:
                        self.state.apply(ev, p)
                        self.version += 1
                        version = self.version
                    pos = p
                    self._notify({"version": version, "type": ev.type,
                                  "line": redact_text(event_line(ev), self.all_secrets())})
                    if self._closing.is_set():
                        return
                if self.error:
                    self.error = None
                    self._notify({"version": self.version, "type": "journal", "line": "journal reachable again"})
            except Exception as e:   # Redis restarted, a network blip: say so on the page, keep trying
                why = str(e) if isinstance(e, JournalError) else f"{type(e).__name__}: {e}"
                self.error = redact_text(why, self.all_secrets())
                self._notify({"version": self.version, "type": "error", "line": self.error})
                self._closing.wait(RETRY_S)

    def all_secrets(self) -> list:
        """The server's own (journal URL, password) and those the journal holds."""
        return [*self.secrets, *self.state.secrets]

    def _notify(self, msg):
        for loop, queue in list(self.listeners):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, msg)
            except RuntimeError:      # that listener's loop is gone
                self.listeners.discard((loop, queue))

    # -- what the routes read ------------------------------------------------------------
    def snapshot_json(self, have=None) -> bytes:
        """The snapshot as JSON. have: {section: revision} the page holds already (from
        ?have=track:NAME.3,hypotheses.7): those sections come as null, so after the first load
        a new event costs the page only what it changed."""
        now = time.time()
        with self.lock:
            version, built, parts = self._snap
            if version != self.version or now - built >= SNAPSHOT_MAX_AGE_S:
                snap = snapshot(self.state, now)
                version = self.version
                snap.update(version=version, error=self.error, ready=self.ready.is_set(), boot=self.boot)
                parts = _encode_parts(snap, self.all_secrets())
                self._snap = (version, now, parts)
        return _assemble(parts, have or {})

    def detail(self, hid):
        with self.lock:
            return hypothesis_detail(self.state, hid, self.diff_of, self.secrets)

    def export(self, name, track=None):
        """(campaign, text) of results.tsv (of one track, or all) or journal.md, redacted. Under the
        lock: the follower must not change the state mid-export. The config is redacted first
        (older journals hold the journal URL, password included, in campaign_started)."""
        with self.lock:
            view = copy.copy(self.state)
            view.config = redact(self.state.config)
            if track:
                view.trials = {k: t for k, t in self.state.trials.items() if t.track == track}
            text = export.tsv(view) if name == "results.tsv" else labjournal.markdown(view)
            return view.campaign, redact_text(text, self.all_secrets())


def _encode_parts(snap, hidden) -> tuple:
    """(JSON of the small top-level fields, track names, {section: (revision, JSON)}) of a
    snapshot, redacted; each section is encoded once per snapshot, not once per request.
    Redaction runs over the JSON text: one pass of a few regexes, not one per value (and the
    value by value way when hiding a literal secret broke the JSON: a password like `12345`)."""
    def dumps(obj):
        raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        text = redact_text(raw, hidden)
        if text != raw:
            try:
                json.loads(text)
            except ValueError:
                text = json.dumps(redact(obj, hidden), separators=(",", ":"), ensure_ascii=False)
        return text
    revs = snap.get("revs") or {}
    sections = {}
    for tr in snap.get("tracks") or []:
        name = f"track:{tr['name']}"
        sections[name] = (revs.get(name), dumps(tr))
    for name in SECTIONS:
        if name in snap:
            sections[name] = (revs.get(name), dumps(snap[name]))
    base = {k: v for k, v in snap.items() if k not in SECTIONS and k != "tracks"}
    base["track_names"] = [tr["name"] for tr in snap.get("tracks") or []]
    return dumps(base), base["track_names"], sections


def _assemble(parts, have) -> bytes:
    base, names, sections = parts
    if not sections:            # an empty journal: nothing but the top-level fields
        return base.encode()

    def part(name):
        rev, text = sections[name]
        return "null" if rev is not None and have.get(name) == str(rev) else text
    tracks = ",".join(part(f"track:{n}") for n in names)
    rest = "".join(f',"{name}":{part(name)}' for name in SECTIONS)
    return (base[:-1] + f',"tracks":[{tracks}]' + rest + "}").encode()


def parse_have(text: str) -> dict:
    """?have=track:NAME.3,hypotheses.7 -> {"track:NAME": "3", "hypotheses": "7"}."""
    out = {}
    for item in (text or "").split(","):
        name, _, rev = item.rpartition(".")
        if name and rev:
            out[name] = rev
    return out


def _html_diff(diff: str) -> str:
    """A unified diff as syntax-highlighted HTML (pygments: CSS classes, styled by the page)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import DiffLexer
    return highlight(diff, DiffLexer(), HtmlFormatter(nowrap=True))


def diff_css() -> str:
    from pygments.formatters import HtmlFormatter
    return HtmlFormatter(style="github-dark").get_style_defs(".diff")


COOKIE = "swarm_dashboard_token"


class TokenGate:
    """ASGI middleware: with need_token, every request must carry the token: ?token= or a Bearer
    header (token_given: what a write needs), or the cookie the page got with its first load
    (so the page's own assets load; SameSite=Strict, so no other site's request carries it)."""

    def __init__(self, app, token, need_token):
        self.app, self.token, self.need = app, token, need_token

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given, cookie = self._given(scope)
            state = scope.setdefault("state", {})
            state["token_given"] = self._match(given)
            state["token_ok"] = state["token_given"] or self._match(cookie)
            if self.need and not state["token_ok"]:
                from starlette.responses import PlainTextResponse
                resp = PlainTextResponse("403: this dashboard needs its token: open the full URL that "
                                         "`swarm dashboard` printed (it ends in ?token=...)\n", status_code=403)
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)

    def _given(self, scope):
        """(token from the query or an Authorization header, token from the cookie)."""
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        cookie = ""
        for k, v in scope.get("headers", []):
            if k == b"authorization" and v.lower().startswith(b"bearer "):
                given = v[7:].decode("latin-1").strip()
            elif k == b"cookie":
                for part in v.decode("latin-1").split(";"):
                    name, _, value = part.strip().partition("=")
                    if name == COOKIE:
                        cookie = value
        return given, cookie

    def _match(self, given) -> bool:
        return bool(given) and secrets.compare_digest(given.encode(), self.token.encode())


def make_app(hub: Hub, token: str, need_token: bool, allow_stop: bool, stop_journal=None, loopback=True):
    """The starlette app. stop_journal() -> a journal open for writing (the stop button)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def can_write(request) -> bool:
        return allow_stop and request.scope.get("state", {}).get("token_given", False)

    async def page(request):
        resp = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
        if request.scope.get("state", {}).get("token_given"):   # the page's assets need no ?token=
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return resp

    async def asset(request):
        name = request.path_params["name"]
        files = {"app.js": STATIC / "app.js", "style.css": STATIC / "style.css", "plotly.min.js": plotly_js()}
        if name == "diff.css":
            return Response(diff_css(), media_type="text/css", headers={"Cache-Control": "max-age=3600"})
        if name not in files:
            return Response("not found\n", status_code=404, media_type="text/plain")
        cache = "max-age=86400" if name == "plotly.min.js" else "no-cache"
        return FileResponse(files[name], headers={"Cache-Control": cache})

    async def state(request):
        data = await run_in_threadpool(hub.snapshot_json, parse_have(request.query_params.get("have", "")))
        # can_stop depends on the request (token), so it is spliced in rather than cached
        tail = b',"can_stop":' + (b"true" if can_write(request) else b"false") + b"}"
        return Response(data[:-1] + tail, media_type="application/json", headers={"Cache-Control": "no-store"})

    async def events(request):
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()
        listener = (loop, queue)
        hub.listeners.add(listener)

        async def stream():
            try:
                yield f"retry: 1000\ndata: {json.dumps({'version': hub.version, 'type': 'hello'})}\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keep-alive\n\n"
                        continue
                    batch = [msg]
                    while not queue.empty() and len(batch) < 200:   # a burst goes out as one message
                        batch.append(queue.get_nowait())
                    out = {"version": batch[-1]["version"], "events": [m for m in batch if m.get("line")]}
                    yield f"data: {json.dumps(out)}\n\n"
            finally:
                hub.listeners.discard(listener)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def hypothesis(request):
        got = await run_in_threadpool(hub.detail, request.path_params["hid"])
        if got is None:
            return JSONResponse({"error": "no such hypothesis"}, status_code=404)
        for c in got["candidates"]:
            c["diff_html"] = _html_diff(c["diff"]) if c["diff"] else None
        return JSONResponse(got, headers={"Cache-Control": "no-store"})

    async def download(request):
        name = request.path_params["name"]
        kinds = {"results.tsv": "text/tab-separated-values", "journal.md": "text/markdown"}
        if name not in kinds:
            return Response("not found\n", status_code=404, media_type="text/plain")
        tag, body = await run_in_threadpool(hub.export, name, request.query_params.get("track"))
        return Response(body, media_type=kinds[name] + "; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{tag or "campaign"}-{name}"'})

    async def stop(request):
        if not can_write(request):
            return JSONResponse({"error": "read-only: the stop button needs the token and --allow-stop"},
                                status_code=403)
        with hub.lock:
            st = hub.state
            running = st.started is not None and st.stopped is None
            tag = st.campaign
        if not running:
            return JSONResponse({"ok": False, "message": f"campaign {tag} is not running"})
        who = f"{getpass.getuser()}@{socket.gethostname()}"

        def emit():
            with stop_journal(tag) as j:     # the same event `swarm stop` journals
                j.emit("stop_requested", source=who, reason=f"stop button of the dashboard ({who})")
        await run_in_threadpool(emit)
        return JSONResponse({"ok": True, "message": f"asked campaign {tag} to stop; its coordinator "
                                                    f"stops within a few seconds"})

    routes = [Route("/", page), Route("/static/{name}", asset), Route("/api/state", state),
              Route("/api/events", events), Route("/api/hypothesis/{hid}", hypothesis),
              Route("/download/{name}", download), Route("/api/stop", stop, methods=["POST"])]
    middleware = [Middleware(GZipMiddleware, minimum_size=1024, compresslevel=4)]   # fast, still ~8x
    if loopback:   # a page on 127.0.0.1 answers to its own names only (no DNS rebinding)
        middleware.insert(0, Middleware(TrustedHostMiddleware,
                                        allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"]))
    app = Starlette(routes=routes, middleware=middleware)
    return TokenGate(app, token, need_token)


def new_token() -> str:
    return secrets.token_urlsafe(18)


def lan_address() -> str:
    """This machine's address on its LAN (a UDP socket's source address; nothing is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostname()


class Served:
    """uvicorn serving an app from a thread, on a socket bound here (port 0: any free one)."""

    def __init__(self, app, host="127.0.0.1", port=0):
        import uvicorn
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the dashboard server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

