"""A campaign's journal as the tests read it: its events, those of some types, its state."""

from coordinator.state import CampaignState
from journal import open_journal


def events_of(repo, tag, url=None):
    """Every event of campaign `tag` (the repo's embedded journal unless url names another)."""
    with open_journal(url or str(repo / ".swarm" / "journal.db"), campaign=tag) as j:
        return [ev for _, ev in j.read()]


def of_type(events, *types):
    return [ev for ev in events if ev.type in types]


def state_of(events, tag):
    """The coordinator's state folded from the events."""
    st = CampaignState(tag)
    for i, ev in enumerate(events):
        st.apply(ev, str(i))
    return st
