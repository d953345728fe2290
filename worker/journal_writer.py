"""The worker's journal writer: its events (trial_started, trial_progress, trial_finished,
worker_heartbeat) go out from one thread, in order, so a slow or absent journal never holds
up a trial; an outage is waited out with the events kept."""

import queue
import sys
import threading
import time

from journal import Event, JournalUnavailable, open_journal

# Seconds run_trial waits for trial_started / trial_finished to reach the journal
# (after that the event stays queued and is written when the journal answers).
JOURNAL_WAIT = 15.0
# Longest pause between retries of a journal write that failed. An unreachable journal (a Redis
# restart, a network outage) is waited out for JOURNAL_OUTAGE_S, the events kept in order; any
# other failure gets JOURNAL_TRIES tries. Then the event goes to the worker's unsent-events file
# (so one bad event or an endless outage cannot hold up the events behind it forever).
JOURNAL_RETRY_MAX = 2.0
JOURNAL_TRIES = 8
JOURNAL_OUTAGE_S = 600.0


class JournalWriter:
    """Writes events from one thread, in order, retrying while the journal is away.
    emit(wait=True) returns once the event is stored (or after JOURNAL_WAIT; it stays queued).
    An event that fails JOURNAL_TRIES times is appended to `unsent` (JSON lines) instead."""

    def __init__(self, url, campaign, source, unsent):
        self.source = source
        self.unsent = unsent
        self.journal = open_journal(url, campaign=campaign)   # a bad URL fails here, loudly
        self.queue = queue.Queue()
        self.errors = 0
        self.last_error = None
        self._thread = threading.Thread(target=self._loop, name=f"journal-{source}", daemon=True)
        self._thread.start()

    def emit(self, type, data, wait=False, event_id=None):
        done = threading.Event() if wait else None
        event = Event(type=type, source=self.source, data=data)
        if event_id:
            event.id = event_id
        self.queue.put((event, done))
        if done is not None:
            done.wait(JOURNAL_WAIT)

    def _loop(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            event, done = item
            pause, attempt, since = 0.5, 0, None
            while True:
                try:
                    self.journal.append(event)     # idempotent by event id: retrying is safe
                    if since is not None:
                        print(f"worker {self.source}: the journal is back after "
                              f"{time.monotonic() - since:.0f}s; sending the kept events", file=sys.stderr)
                    break
                except Exception as e:
                    self.errors += 1
                    attempt += 1
                    self.last_error = f"{type(e).__name__}: {e}"
                    since = time.monotonic() if since is None else since
                    away = isinstance(e, JournalUnavailable)
                    if (away and time.monotonic() - since > JOURNAL_OUTAGE_S) or (not away and attempt >= JOURNAL_TRIES):
                        with open(self.unsent, "a") as f:
                            f.write(event.to_json() + "\n")
                        print(f"worker {self.source}: journal write failed {attempt} times "
                              f"({self.last_error}); {event.type} {event.id} kept in {self.unsent}",
                              file=sys.stderr)
                        break
                    if attempt == 1:
                        print(f"worker {self.source}: journal write failed ({self.last_error}); keeping "
                              f"the events in order and retrying", file=sys.stderr)
                    time.sleep(pause)
                    pause = min(pause * 2, JOURNAL_RETRY_MAX)
            if done is not None:
                done.set()

    def close(self, timeout: float = JOURNAL_WAIT):
        self.queue.put(None)
        self._thread.join(timeout)
        try:
            self.journal.close()
        except Exception:
            pass
