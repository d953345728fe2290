"""The small journal interface every backend implements, and open_journal(url).

A backend stores events of one campaign in one total order and gives each a
position (an opaque string: a stream id for Redis, a row number for SQLite).
It needs four things: append one event idempotently, read a page after a
position, wait briefly for more, list campaigns. Everything else (emit, paged
reads, follow with an idle timeout) is written once here.

A journal never holds a password and never hands one out: events that carry the
coordinator's config (its journal URL is redis://:PASSWORD@host:port/db) go
through safety.redact on the way in, and on the way out too, for journals
written before that rule.
"""

import os
import re
import time
from typing import Iterator, Optional

from safety.redact import mask_literals, redact, secrets_in

from .events import Event

# Events fetched per round trip when replaying (large pages: replay speed).
PAGE_SIZE = 5000
# Longest single blocking wait inside follow() (a Redis read must end well within its socket timeout).
FOLLOW_BLOCK_S = 2.0
# Campaign tags become Redis keys and git ref names: keep them plain.
CAMPAIGN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Events redacted on append and on read: the config-carrying ones, and unparsable records (raw text).
REDACTED_TYPES = frozenset({"campaign_started", "campaign_resumed", "malformed"})
# What a journal location looks like when it is a URL rather than a path.
URL_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class JournalError(Exception):
    """Any journal failure a user can act on; the message says what to check."""


class JournalUnavailable(JournalError):
    """The journal cannot be reached right now (a Redis restart, a network outage): the same
    call may succeed later. Writers keep their events and retry them, in order (appends are
    idempotent by event id)."""


def check_campaign(campaign: str) -> str:
    if not isinstance(campaign, str) or not CAMPAIGN_RE.match(campaign):
        raise JournalError(f"bad campaign tag {campaign!r}: use 1-100 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit (e.g. 'mar5' or 'night-1')")
    return campaign


class Journal:
    """Base class: subclasses implement _append, _page, _poll, campaigns and close."""

    url = ""          # where it lives, password hidden (for messages)
    campaign = None   # the campaign read and written; None until chosen

    # -- the backend's part --------------------------------------------------
    def _append(self, event: Event) -> str:
        """Store the event unless its id is there already; return its position."""
        raise NotImplementedError

    def _page(self, after: Optional[str], count: int) -> list:
        """Up to count (pos, event) strictly after `after` (None = from the start)."""
        raise NotImplementedError

    def _poll(self, after: Optional[str], wait: float) -> list:
        """Like _page, but when nothing is there yet wait up to `wait` seconds for it."""
        raise NotImplementedError

    def campaigns(self) -> list:
        """Campaign tags in this journal, most recently active first."""
        raise NotImplementedError

    def close(self):
        raise NotImplementedError

    # -- the shared part -----------------------------------------------------
    def _need_campaign(self):
        if self.campaign is None:
            have = ", ".join(self.campaigns()) or "none yet"
            raise JournalError(f"no campaign chosen for journal {self.url}: open it with "
                               f"open_journal(url, campaign=TAG) (campaigns there: {have})")

    def append(self, event: Event) -> str:
        """Store one event; returns its position. Appending an id again stores nothing
        and returns the first copy's position (so a retry after a lost reply is safe)."""
        self._need_campaign()
        if not isinstance(event, Event):
            raise JournalError(f"append() takes an Event, got {type(event).__name__}")
        if not event.campaign:
            event.campaign = self.campaign
        elif event.campaign != self.campaign:
            raise JournalError(f"event {event.id} belongs to campaign {event.campaign!r} but this "
                               f"journal is open for {self.campaign!r}")
        if event.type in REDACTED_TYPES:
            event.data = redact(event.data)
        try:
            return self._append(event)
        except ValueError as e:  # from events.dumps: circular data
            raise JournalError(f"event {event.type} {event.id}: data is not JSON-serializable ({e})") from e

    def emit(self, type: str, source: str = "", **data) -> Event:
        """Build an event of this campaign, append it, return it."""
        self._need_campaign()
        event = Event(campaign=self.campaign, source=source, type=type, data=data)
        self.append(event)
        return event

    def read(self, after: Optional[str] = None, limit: Optional[int] = None) -> Iterator:
        """Yield (position, event) in journal order, strictly after `after`."""
        self._need_campaign()
        seen = 0
        while limit is None or seen < limit:
            want = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - seen)
            page = self._page(after, want)
            yield from self._redacted(page)
            seen += len(page)
            if len(page) < want:
                return
            after = page[-1][0]

    def follow(self, after: Optional[str] = None, timeout: Optional[float] = None) -> Iterator:
        """Yield (position, event) after `after` (None: from the start), then block for new
        ones. `timeout`: stop after that many seconds without a new event (None: never)."""
        self._need_campaign()
        idle_since = time.monotonic()
        while True:
            wait = FOLLOW_BLOCK_S
            if timeout is not None:
                wait = min(wait, timeout - (time.monotonic() - idle_since))
            page = self._poll(after, max(wait, 0.0))
            if page:
                yield from self._redacted(page)
                after = page[-1][0]
                idle_since = time.monotonic()
            elif timeout is not None and time.monotonic() - idle_since >= timeout:
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<{type(self).__name__} {self.url} campaign={self.campaign!r}>"

    def _redacted(self, page: list) -> list:
        """The config-carrying events redacted; a password one of them held (a journal written
        before the rule) masked in every later event too, wherever it stands."""
        known = self.__dict__.setdefault("_seen_secrets", set())
        for _, ev in page:
            if ev.type in REDACTED_TYPES:
                known |= secrets_in(ev.data)
                ev.data = redact(ev.data)
            if known:
                ev.data = mask_literals(ev.data, known)
        return page




def open_journal(url, campaign: Optional[str] = None, create: bool = True) -> Journal:
    """Open a journal from redis://:PASSWORD@host:port/db (or rediss://) or a file path.

    campaign: the tag read and written (may stay None to only list campaigns()).
    create: for a path, create the database file when it is missing (its folder must exist).
    """
    if campaign is not None:
        check_campaign(campaign)
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url.strip():
        raise JournalError(f"journal location must be redis://:PASSWORD@host:port/db or a file path, "
                           f"got {url!r}")
    m = URL_SCHEME_RE.match(url)
    if m and m.group(1).lower() in ("redis", "rediss"):
        from .redis_backend import RedisJournal
        return RedisJournal(url, campaign)
    if m:
        raise JournalError(f"unknown journal URL scheme {m.group(1)!r} in {url!r}: use "
                           "redis://:PASSWORD@host:port/db for Redis or a file path for the embedded journal")
    from .sqlite_backend import SqliteJournal
    return SqliteJournal(url, campaign, create=create)
