"""
The coordinator's side of the journal: every event it reads or writes passes through here.

    rec = Recorder(journal, CampaignState(tag), log)
    rec.sync()                          # new events (workers' results, stop requests...) -> rec.state
    rec.emit("verdict", **decision)     # written, then read back into the state
    rec.claim(); rec.renew(); rec.release()   # the campaign's owner lease

The coordinator is the journal's single writer of decisions, and its state is nothing
but the fold of the journal (coordinator/state.py), so a decision is an event first and
an effect second. An unreachable journal (a Redis restart, a network outage) is waited out
for JOURNAL_OUTAGE_S: the event being written is kept and sent again with the same id
(appends are idempotent by id), so nothing is lost or stored twice; the workers keep
training and keep their own events meanwhile.

One coordinator per campaign: an owner lease in the journal (`coordinator_lease`
events, folded by state.owner_now). The first claim after the last holder's lease expired
or was released wins; a second `swarm run`/`resume` refuses, naming the owner.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

from coordinator.config import CampaignError
from journal import Event, JournalUnavailable

SOURCE = "coordinator"     # the source of every event the coordinator writes
JOURNAL_OUTAGE_S = 600.0   # an unreachable journal is waited out this long (its event kept), then the campaign stops
JOURNAL_CLOSING_S = 10.0   # ...and only this long while the campaign is stopping
JOURNAL_RETRY_S = 2.0      # between tries while the journal is unreachable
OWNER_LEASE_S = 90.0       # one coordinator per campaign: its lease in the journal lasts this long...
OWNER_RENEW_S = 20.0       # ...and is renewed this often


class OwnerError(CampaignError):
    """Another coordinator drives the campaign; the message names it and says what to do."""


class Recorder:
    def __init__(self, journal, state, log, on_event=None, on_back=None, impatient=lambda: False):
        """on_event(ev): called for every event read (the analyst's feed). on_back(now): the
        journal answered again after an outage (the silence was the journal's, not the workers').
        impatient(): the user asked to quit now (a second Ctrl-C): an outage is not waited out."""
        self.journal, self.state, self.log = journal, state, log
        self.on_event, self.on_back, self.impatient = on_event, on_back, impatient
        self.pos = None                    # the last event read
        self.closing = False               # stopping: an outage is waited out only JOURNAL_CLOSING_S
        self.outage: str | None = None     # what the journal said when it stopped answering
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"   # this coordinator
        self.owned = False                 # holds the campaign's owner lease
        self.renewed = 0.0                 # when the lease was last renewed

    # ------------------------------------------------------------------ events
    def sync(self, live: bool = True):
        """Fold the events written since the last sync into the state (live: with now's time,
        which leases and heartbeats need; a replay at start has none)."""
        now = time.time() if live else None
        for pos, ev in self.call("reading", lambda: list(self.journal.read(after=self.pos))):
            self.state.apply(ev, pos, now=now)
            self.pos = pos
            if self.on_event is not None:
                self.on_event(ev)

    def emit(self, type_, event_id: str | None = None, **data) -> Event:
        ev = Event(campaign=self.journal.campaign, source=SOURCE, type=type_, data=data)
        if event_id:
            ev.id = event_id
        self.call(f"its {type_} event", lambda: self.journal.append(ev))
        self.sync()
        return ev

    def call(self, what: str, fn):
        """fn() against the journal, waiting out an outage (saying so once, and when it is over)."""
        since = None
        while True:
            try:
                out = fn()
                if since is not None:
                    self.log(f"the journal is back after {time.time() - since:.0f}s: going on")
                    self.outage = None
                    now = time.time()
                    for lease in self.state.leases.values():
                        lease.last_seen = max(lease.last_seen, now)
                    if self.on_back is not None:
                        self.on_back(now)
                return out
            except JournalUnavailable as e:
                now = time.time()
                if since is None:
                    since = now
                    self.outage = str(e)
                    self.log(f"waiting for the journal ({what} kept; trials go on; giving up after "
                             f"{JOURNAL_OUTAGE_S:g}s): {e}")
                if now - since > (JOURNAL_CLOSING_S if self.closing else JOURNAL_OUTAGE_S) or self.impatient():
                    raise
                time.sleep(JOURNAL_RETRY_S)

    # ------------------------------------------------------------------ owner lease
    def claim(self):
        """Claim the owner lease, or raise OwnerError naming the owner. A holder on this machine
        whose process is gone (killed, crashed) is taken over at once."""
        holder = self.state.owner_now(time.time())
        takeover = None
        if holder is not None and holder["owner"] != self.owner:
            if holder.get("host") != socket.gethostname() or pid_alive(holder.get("pid")):
                raise OwnerError(self._owned_by(holder))
            takeover = holder["owner"]
            self.log(f"the campaign's previous coordinator {takeover} is gone (pid {holder.get('pid')} is not "
                     f"running): taking over its lease")
        self._lease(release=False, takeover_of=takeover)
        holder = self.state.owner_now(time.time())
        if holder is None or holder["owner"] != self.owner:      # another coordinator claimed it first
            raise OwnerError(self._owned_by(holder))
        self.owned, self.renewed = True, time.time()

    def renew(self):
        if not self.owned or time.time() - self.renewed < OWNER_RENEW_S:
            return
        self._lease(release=False)
        self.renewed = time.time()
        holder = self.state.owner_now(time.time())
        if holder is None or holder["owner"] != self.owner:
            self.owned = False
            raise OwnerError(f"this coordinator lost campaign {self.journal.campaign} to "
                             f"{holder and holder['owner']} (its lease expired while the journal was away); "
                             f"the other one goes on")

    def release(self):
        if self.owned:
            self.owned = False
            try:
                self._lease(release=True)
            except Exception as e:
                self.log(f"warning: could not release the campaign's lease ({type(e).__name__}: {e}); it "
                         f"expires in {OWNER_LEASE_S:g}s")

    def _lease(self, release: bool, **extra):
        self.emit("coordinator_lease", owner=self.owner, host=socket.gethostname(), pid=os.getpid(),
                  lease_s=OWNER_LEASE_S, release=release, **extra)

    def _owned_by(self, holder) -> str:
        tag = self.journal.campaign
        left = max(0.0, holder["time"] + holder["lease_s"] - time.time())
        return (f"campaign {tag} is driven by another coordinator: {holder['owner']} "
                f"(host {holder.get('host')}, pid {holder.get('pid')}), its lease renewed "
                f"{time.time() - holder['time']:.0f}s ago. Stop it with `swarm stop --campaign "
                f"{tag}`, or, if it died, run this again after its lease expires (in {left:.0f}s)")


def pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True                   # someone else's process, or no pid: assume it runs
    return True
