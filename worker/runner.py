"""Run one training process: clean environment, own process group, hard timeout, full log.

The trial's code is untrusted (an agent wrote it), so it gets an environment
built from an allowlist (no API keys, no journal password), its own session so
that everything it spawns can be killed as one group, and a hard timeout. Every
byte it prints goes to a log file on disk; a reader thread also hands progress
lines to a callback as they arrive.
"""

import os
import platform
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.proc import kill_tree, signal_group
from safety.redact import is_secret  # the one rule (also for the coordinator and the agents)

# Variables passed through from the worker's own environment (names, or prefixes ending in _).
ENV_ALLOW = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "USER", "LOGNAME",
             "AUTORESEARCH_", "MALLOC_")  # MALLOC_*: glibc malloc tuning (MLX CPU allocations)
# MLX's Linux wheel bundles a reference BLAS (fp32 matmul ~6 GFLOP/s on 2 cores);
# Debian's libopenblas0-pthread gives ~195. Preloaded for every trial when present.
OPENBLAS = "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0"
# After SIGTERM to the group, seconds before SIGKILL.
KILL_WAIT = 5.0
# Seconds to wait for the output reader after the process exits (a grandchild
# that left the group may hold the pipe open; its output is then cut off).
READER_JOIN = 5.0
# Bytes of the output kept in memory for classification and the summary (the end matters).
KEEP_TAIL = 4 * 2**20
# Bytes of output written to the log file, at most: a candidate printing in a loop must not
# fill the disk. Past it the log keeps its head, then (at exit) the last KEEP_TAIL bytes.
LOG_MAX = 256 * 2**20
# Longest partial line held while looking for progress lines.
MAX_LINE = 65536

# `step 00012 (4.3%) | loss: 5.123456 | lrm: 1.00 | dt: 123ms | tok/sec: 12,345 | ... | remaining: 123s`
PROGRESS_RE = re.compile(r"^step\s+(\d+)\s*(?:\(\s*([\d.]+)%\))?(.*)$")
FIELD_RE = re.compile(r"([A-Za-z_/ ]+?):\s*([-+\d.,eE]+|nan|inf)")


def openblas_path() -> str | None:
    if platform.system() != "Linux":
        return None
    path = OPENBLAS.format(arch=platform.machine())
    return path if os.path.exists(path) else None


def clean_env(extra: dict | None = None, base: dict | None = None) -> dict:
    """The environment a trial sees: the allowlist from `base` (default os.environ), unbuffered
    Python, OpenBLAS on Linux, then `extra` -- with every secret-looking variable removed."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items()
           if any(k == a or (a.endswith("_") and k.startswith(a)) for a in ENV_ALLOW)}
    env["PYTHONUNBUFFERED"] = "1"
    blas = openblas_path()
    if blas:
        env["LD_PRELOAD"] = blas
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return {k: v for k, v in env.items() if not is_secret(k, v)}


def parse_progress(line: str) -> dict | None:
    """A train.py progress line -> {step, progress, loss, tok_per_s, seconds_left, dt_s} (missing: None)."""
    m = PROGRESS_RE.match(line.strip())
    if not m:
        return None
    fields = {k.strip().lower(): v for k, v in FIELD_RE.findall(m.group(3))}

    def num(key, strip=""):
        v = fields.get(key)
        try:
            return float(v.replace(",", "").rstrip(strip)) if v is not None else None
        except ValueError:
            return None

    pct = float(m.group(2)) if m.group(2) else None
    dt_ms = num("dt", "ms")
    return {"step": int(m.group(1)), "progress": pct / 100 if pct is not None else None,
            "loss": num("loss"), "tok_per_s": num("tok/sec"), "seconds_left": num("remaining"),
            "dt_s": dt_ms / 1000 if dt_ms is not None else None}


@dataclass
class Outcome:
    returncode: int | None      # negative: killed by that signal (subprocess convention)
    timed_out: bool
    aborted: bool
    seconds: float              # wall time from start to exit
    log_path: str
    text: str                   # the process's output (its last KEEP_TAIL bytes)


class Process:
    """One run of a command. start() then wait(); kill() from any thread stops the whole group."""

    def __init__(self, cmd: list[str], cwd, env: dict, log_path, timeout: float,
                 on_progress=None, header: str = "", append: bool = False):
        self.cmd, self.cwd, self.env = cmd, str(cwd), env
        self.log_path = Path(log_path)
        self.timeout = timeout
        self.on_progress = on_progress
        self.header = header
        self.append = append        # keep what the caller already wrote to the log
        self.proc = None
        self.killed_for = None      # "timeout" | "aborted" once kill() ran
        self._tail = bytearray()    # the output's last KEEP_TAIL bytes
        self._written = 0           # bytes of output seen (written to the log up to LOG_MAX)
        self._lock = threading.Lock()

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab" if self.append else "wb")
        self._log.write((self.header + f"# cwd: {self.cwd}\n# cmd: {' '.join(self.cmd)}\n").encode())
        self._log.flush()
        self.t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=True)   # own session = own process group
        except OSError as e:
            self._log.write(f"# could not start: {e}\n".encode())
            self._log.close()
            raise
        self._reader = threading.Thread(target=self._read, name="trial-output", daemon=True)
        self._reader.start()
        if platform.system() == "Darwin" and shutil.which("caffeinate"):
            # keep the Mac awake (no idle sleep) exactly as long as the trial runs
            subprocess.Popen(["caffeinate", "-i", "-w", str(self.proc.pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def _read(self):
        fd = self.proc.stdout.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self._tail += chunk
            if len(self._tail) > KEEP_TAIL:
                del self._tail[:len(self._tail) - KEEP_TAIL]
            if self._written < LOG_MAX:
                try:
                    self._log.write(chunk[:LOG_MAX - self._written])
                    self._log.flush()
                except ValueError:   # wait() gave up on us and closed the log (see READER_JOIN)
                    break
            self._written += len(chunk)
            if self.on_progress is None:
                continue
            # progress lines end in \r on a TTY and \n otherwise: split on both
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            pending = pending[-MAX_LINE:]
            for raw in lines:
                self._progress(raw)
        if pending and self.on_progress is not None:
            self._progress(pending)

    def _progress(self, raw: bytes):
        if not raw.startswith(b"step"):
            return
        p = parse_progress(raw.decode("utf-8", "replace"))
        if p is not None:
            try:
                self.on_progress(p)
            except Exception:  # a reporting failure must not stop the log
                pass

    def kill(self, why: str = "aborted"):
        """SIGTERM the whole group, SIGKILL it after KILL_WAIT. Safe to call twice or after exit."""
        with self._lock:
            if self.proc is None or self.killed_for is not None:
                return
            self.killed_for = why
        kill_tree(self.proc, KILL_WAIT)

    def wait(self) -> Outcome:
        try:
            self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.kill("timeout")
            self.proc.wait()
        seconds = time.monotonic() - self.t0
        # the leader is gone; anything it left behind in its group goes too
        signal_group(self.proc.pid, signal.SIGKILL)
        self._reader.join(READER_JOIN)
        rc = self.proc.returncode
        tail = bytes(self._tail)
        missing = self._written - LOG_MAX
        if 0 < missing <= len(tail):
            self._log.write(tail[-missing:])
        elif missing > 0:
            self._log.write(f"\n# [log cut: {missing - len(tail)} bytes of output skipped; "
                            f"the last {len(tail)} follow]\n".encode() + tail)
        self._log.write(f"\n# exit: {rc} after {seconds:.1f}s"
                        f"{' (killed: ' + self.killed_for + ')' if self.killed_for else ''}\n".encode())
        self._log.close()
        self.proc.stdout.close()
        return Outcome(returncode=rc, timed_out=self.killed_for == "timeout",
                       aborted=self.killed_for == "aborted", seconds=seconds,
                       log_path=str(self.log_path), text=tail.decode("utf-8", "replace"))

