"""Embedded journal: one SQLite file in WAL mode (one machine, the default).

Several processes may append at once: SQLite serializes writers (they wait on
busy_timeout), so the AUTOINCREMENT row number is the single order every reader
sees. INSERT OR IGNORE on the unique event id makes appends idempotent.
WAL with synchronous=NORMAL survives a crashed process; a power cut may lose the
last few commits. Keep the file on a local disk (WAL does not work over NFS/SMB).
"""

import json
import os
import sqlite3
import threading
import time

from .backend import PAGE_SIZE, Journal, JournalError
from .events import Event, dumps, malformed

# How long a writer waits for another process's write lock before giving up.
BUSY_TIMEOUT_S = 30.0
# How often follow() looks for new rows (SQLite has no blocking read).
POLL_S = 0.05

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,  -- journal order (never reused)
    id       TEXT NOT NULL UNIQUE,               -- event id: appends are idempotent
    campaign TEXT NOT NULL,
    time     REAL NOT NULL,
    source   TEXT NOT NULL,
    type     TEXT NOT NULL,
    v        INTEGER NOT NULL,
    data     TEXT NOT NULL                       -- JSON object
);
CREATE INDEX IF NOT EXISTS events_campaign_seq ON events(campaign, seq);
"""
COLUMNS = "seq, id, campaign, time, source, type, v, data"


class SqliteJournal(Journal):

    def __init__(self, path: str, campaign=None, create: bool = True):
        self.url = path
        self.campaign = campaign
        self._lock = threading.Lock()  # one connection, shareable between threads
        full = os.path.abspath(os.path.expanduser(path))
        folder = os.path.dirname(full)
        if os.path.isdir(full):
            raise JournalError(f"journal path {path} is a folder: pass a file path such as "
                               f"{os.path.join(path, 'journal.db')}")
        if not os.path.exists(full):
            if not create:
                raise JournalError(f"no journal at {path}: pass the path or redis:// URL the "
                                   "campaign writes to (SWARM_JOURNAL), or start a campaign first")
            if os.path.exists(folder) and not os.path.isdir(folder):
                raise JournalError(f"cannot create journal {path}: {folder} is a file, not a folder")
            if not os.path.isdir(folder):
                raise JournalError(f"cannot create journal {path}: folder {folder} does not exist "
                                   f"(create it with: mkdir -p {folder})")
        try:
            self._db = sqlite3.connect(full, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as e:
            raise self._explain(e) from e
        try:
            self._setup(create)
        except sqlite3.Error as e:
            self._db.close()
            raise self._explain(e) from e
        except JournalError:
            self._db.close()
            raise

    def _setup(self, create):
        # Changing the journal mode can answer "locked" while another process
        # creates the file, without waiting on busy_timeout: retry that briefly.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if mode.lower() != "wal":
            raise JournalError(f"journal {self.url}: SQLite could not switch to WAL mode (got "
                               f"{mode!r}); put the file on a local disk")
        self._db.execute("PRAGMA synchronous=NORMAL")
        has_table = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='events'").fetchone()
        if not has_table:
            if not create:
                raise JournalError(f"{self.url} is an SQLite database but not a journal "
                                   "(it has no events table)")
            self._db.executescript(SCHEMA)

    def _explain(self, e: Exception) -> JournalError:
        msg = str(e)
        if "not a database" in msg:
            return JournalError(f"{self.url} is not a journal database (SQLite: {msg}): "
                                "pass the right path or move that file away")
        if "readonly" in msg or "read-only" in msg:
            return JournalError(f"journal {self.url} is read-only ({msg}): check the permissions "
                                "of the file and of its folder (SQLite writes -wal/-shm files beside it)")
        if "unable to open" in msg:
            return JournalError(f"cannot open journal {self.url} ({msg}): check that its folder "
                                "exists, is a folder and is writable")
        if "locked" in msg:
            return JournalError(f"journal {self.url} stayed locked for {BUSY_TIMEOUT_S:.0f}s "
                                f"({msg}): another process holds a long write")
        return JournalError(f"journal {self.url}: {msg}")

    # -- backend primitives ----------------------------------------------------
    def _append(self, event: Event) -> str:
        row = (event.id, event.campaign, event.time, event.source, event.type, event.v,
               dumps(event.data))
        try:
            with self._lock:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO events (id, campaign, time, source, type, v, data) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                if cur.rowcount == 1:
                    return str(cur.lastrowid)
                # a repeated id: the first copy stays, report where it is
                seq, campaign = self._db.execute(
                    "SELECT seq, campaign FROM events WHERE id = ?", (event.id,)).fetchone()
        except sqlite3.Error as e:
            raise self._explain(e) from e
        if campaign != event.campaign:
            raise JournalError(f"event id {event.id} already exists in campaign {campaign!r}")
        return str(seq)

    def _page(self, after, count):
        try:
            start = int(after) if after is not None else 0
        except ValueError:
            raise JournalError(f"bad position {after!r} for an embedded journal (a row number)") from None
        try:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT {COLUMNS} FROM events WHERE campaign = ? AND seq > ? "
                    "ORDER BY seq LIMIT ?", (self.campaign, start, count)).fetchall()
        except sqlite3.Error as e:
            raise self._explain(e) from e
        return [_decode(row) for row in rows]

    def _poll(self, after, wait):
        deadline = time.monotonic() + wait
        while True:
            page = self._page(after, PAGE_SIZE)
            if page or time.monotonic() >= deadline:
                return page
            time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.0)))

    def campaigns(self):
        with self._lock:
            rows = self._db.execute("SELECT campaign FROM events GROUP BY campaign "
                                    "ORDER BY MAX(seq) DESC").fetchall()
        return [r[0] for r in rows]

    def close(self):
        with self._lock:
            self._db.close()


def _decode(row):
    seq, id_, campaign, t, source, type_, v, data = row
    pos = str(seq)
    try:
        obj = json.loads(data)
        if not isinstance(obj, dict) or not type_:
            raise ValueError("data is not a JSON object" if type_ else "no event type")
    except ValueError as e:  # corrupt JSON or a row written by something else
        return pos, malformed(data, str(e), pos)
    return pos, Event._make(id_, campaign, t, source, type_, obj, v)
