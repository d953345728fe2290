"""
A local HTTP stand-in for the Anthropic Messages API, for tests of the real SDK.

A real HTTP server (http.server in a thread, 127.0.0.1, a free port) serving
POST /v1/messages from a script: each request gets the next scripted reply
(a message, or an error status with the API's error body and headers). Every
request is recorded (headers and JSON body) so tests can assert what the SDK
sent: the Authorization header, system blocks with cache_control, tool results,
fenced text. A request beyond the script gets a 400 invalid_request_error that
names the request number, so a test fails with a clear message.

Beyond the script, a responder (a callable Request -> Reply, e.g. the stand-in
research model of tests/model_standin.py) answers every request the script does
not; an exception it raises becomes a 500 api_error naming it. delay_s makes
every /v1/messages reply wait that long, as a model thinking would; the server
answers each request on its own thread, so concurrent requests wait together.

    with StandIn() as api:
        api.push(message([tool_use("propose_hypotheses", {...})]))
        ... AnthropicProposer({"base_url": api.url, ...}) ...
        api.requests[0].headers["authorization"]

    with StandIn(responder=ResearchModel(), delay_s=20) as api: ...
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

_ids = itertools.count(1)


@dataclass
class Reply:
    status: int = 200
    body: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)


@dataclass
class Request:
    path: str
    headers: dict          # lower-cased names
    body: dict

    def text(self) -> str:
        """All text the model would see in this request (system, messages, tool results)."""
        return "\n".join(_texts(self.body.get("system"))) + "\n" + "\n".join(_texts(self.body.get("messages")))


def _texts(x: Any) -> list[str]:
    """Every string under 'text' or 'content' keys, recursively (what reaches the model)."""
    out: list[str] = []
    if isinstance(x, str):
        out.append(x)
    elif isinstance(x, list):
        for y in x:
            out += _texts(y)
    elif isinstance(x, dict):
        for k in ("text", "content"):
            if k in x:
                out += _texts(x[k])
    return out


_FENCED = re.compile(r"<untrusted-([a-z0-9-]+)>.*?</untrusted-\1>", re.DOTALL)


def outside_fences(text: str) -> str:
    """`text` with every <untrusted-KIND> ... </untrusted-KIND> section removed."""
    return _FENCED.sub("", text)


# -- building replies ------------------------------------------------------------


def usage(input_tokens: int = 1200, output_tokens: int = 300, cache_read: int = 0, cache_write: int = 0) -> dict:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": cache_write}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def tool_use(name: str, input: dict, id: str | None = None) -> dict:
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):04d}", "name": name, "input": input}


def message(content: list[dict], stop_reason: str | None = None, model: str = "claude-test",
            use: dict | None = None) -> Reply:
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    return Reply(200, {
        "id": f"msg_{next(_ids):04d}", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop_reason, "stop_sequence": None,
        "usage": use or usage(),
    })


def error(status: int, type: str, msg: str, headers: dict | None = None) -> Reply:
    return Reply(status, {"type": "error", "error": {"type": type, "message": msg}}, headers or {})


# -- the server ------------------------------------------------------------------


class StandIn:
    def __init__(self, responder: Callable[[Request], Reply] | None = None, delay_s: float = 0.0):
        self.script: list[Reply] = []
        self.requests: list[Request] = []
        self.responder = responder   # answers what the script does not
        self.delay_s = delay_s       # every /v1/messages reply waits this long (in its own thread)
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with standin._lock:
                    standin.requests.append(request)
                    number = len(standin.requests)
                    reply = standin.script.pop(0) if standin.script else None
                if not self.path.startswith("/v1/messages"):
                    reply = error(404, "not_found_error", f"stand-in serves /v1/messages, not {self.path}")
                else:
                    if reply is None and standin.responder is not None:
                        try:
                            reply = standin.responder(request)
                        except Exception as e:  # the test sees it in the SDK's error
                            reply = error(500, "api_error", f"stand-in responder failed on request #{number}: "
                                                            f"{type(e).__name__}: {e}")
                    if reply is None:
                        reply = error(400, "invalid_request_error",
                                      f"stand-in: no scripted reply left for request #{number}")
                    if standin.delay_s > 0:
                        time.sleep(standin.delay_s)
                data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", f"req_standin_{number}")
                    for k, v in reply.headers.items():
                        self.send_header(k, str(v))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller went away while the reply waited (a stopped campaign's call)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def push(self, *replies: Reply) -> "StandIn":
        with self._lock:
            self.script.extend(replies)
        return self

    def start(self) -> "StandIn":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "StandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
