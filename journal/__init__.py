"""The swarm's journal: append-only events, Redis or embedded SQLite, views by replay.

    from journal import open_journal, Event, JournalError
    j = open_journal("redis://:PASSWORD@host:port/0" or "path/to/journal.db", campaign="tag")
    j.emit("lab_note", source="me", author="me", title="...", text="...")
    for pos, ev in j.read(): ...
"""

from .backend import Journal, JournalError, JournalUnavailable, open_journal
from .events import EVENT_TYPES, SCHEMA_VERSION, Event

__all__ = ["open_journal", "Event", "JournalError", "JournalUnavailable", "Journal", "EVENT_TYPES", "SCHEMA_VERSION"]
