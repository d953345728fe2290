"""A real redis-server for tests: free port, temp dir, password, append-only persistence.

Reuse from any test module (conftest.py belongs to someone else):

    from tests.redis_server import redis_server, RedisServer   # noqa: F401  (fixtures)

    def test_x(redis_server):            # one server for the whole session
        j = open_journal(redis_server.url, campaign="unique-per-test")

    def test_restart(tmp_path):          # a private server you may kill and restart
        with RedisServer(tmp_path) as srv:
            srv.restart(kill=True)

Tests sharing the session server must keep apart by key (e.g. a unique campaign tag).
"""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PASSWORD = "swarm-test-pw"
# How long a starting server may take to answer PING.
START_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port, password, timeout=0.5) -> bool:
    """Raw RESP AUTH+PING, so this helper needs no client library."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"AUTH {password}\r\nPING\r\n".encode() if password else b"PING\r\n")
            reply = b""
            while b"PONG" not in reply and b"-" not in reply[:1]:
                chunk = s.recv(256)
                if not chunk:
                    break
                reply += chunk
            return b"PONG" in reply
    except OSError:
        return False


class RedisServer:
    """One redis-server process; start()/stop()/restart() keep its port and data dir."""

    def __init__(self, workdir, password=PASSWORD, port=None, appendfsync="always"):
        self.dir = str(workdir)
        self.password = password
        self.port = port
        self.appendfsync = appendfsync
        self.proc = None
        os.makedirs(self.dir, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self):
        if not os.path.exists(REDIS_SERVER):
            pytest.fail("redis-server not found: install it (apt-get install redis-server) to run the Redis tests")
        for _attempt in range(3):   # a "free" port can be taken between probe and bind
            port = self.port or free_port()
            cmd = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", self.dir,
                   "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
                   "--logfile", os.path.join(self.dir, "redis.log")]
            if self.password:
                cmd += ["--requirepass", self.password]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _ping(port, self.password):
                    self.port = port
                    return self
                time.sleep(0.05)
            self.stop(kill=True)
            if self.port:   # a restart must get its own port back: no second try elsewhere
                break
        raise RuntimeError(f"redis-server did not start; log: {self.log_tail()}")

    def stop(self, kill=False):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, kill=True, down_s=0.0):
        """Stop (SIGKILL by default: a crash) and start again on the same port and data."""
        self.stop(kill=kill)
        time.sleep(down_s)
        return self.start()

    def log_tail(self, n=20) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A session-wide redis-server with a password and AOF (appendfsync always)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
