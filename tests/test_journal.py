"""Journal backends: one suite run against both the embedded (SQLite) and the Redis
backend, plus what only one of them has (a Redis restart, a lost reply, auth,
bad paths). Redis is a real redis-server started here (tests/redis_server.py)."""

import math
import multiprocessing
import socket
import sqlite3
import threading
import time
import uuid

import pytest

from journal import Event, JournalError, open_journal
from journal import backend as journal_backend
from tests.redis_server import PASSWORD, RedisServer, free_port, redis_server  # noqa: F401 (fixture)

BACKENDS = ["sqlite", "redis"]
FOLLOW_IDLE_S = 10.0   # follow() stops after this long without a new event


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    """A journal location of each backend; Redis tests share one server, apart by campaign."""
    if request.param == "sqlite":
        return str(tmp_path / "journal.db")
    return request.getfixturevalue("redis_server").url


@pytest.fixture
def campaign():
    return "t-" + uuid.uuid4().hex[:10]


@pytest.fixture
def journal(url, campaign):
    j = open_journal(url, campaign=campaign)
    yield j
    j.close()


def ids(pairs):
    return [ev.id for _pos, ev in pairs]


# -- the shared suite -------------------------------------------------------------------
def test_append_and_read_keep_every_field(journal, campaign):
    sent = [
        Event(type="trial_finished", source="worker-1", time=1767772800.25,
              data={"trial_id": "t1", "status": "crash", "val_bpb": float("nan"),
                    "metrics": {"nested": [1, 2.5, None]}, "log_tail": "línea ünïcode\n✓"}),
        Event(type="lab_note", source="alice", data={"author": "alice", "title": "t", "text": "x"}),
    ]
    positions = [journal.append(ev) for ev in sent]
    got = list(journal.read())
    assert [p for p, _ in got] == positions
    for want, (_pos, ev) in zip(sent, got, strict=True):
        assert (ev.id, ev.campaign, ev.time, ev.source, ev.type, ev.v) == \
               (want.id, campaign, want.time, want.source, want.type, want.v)
    assert math.isnan(got[0][1].data["val_bpb"])
    assert got[0][1].data["metrics"] == {"nested": [1, 2.5, None]}
    assert got[0][1].data["log_tail"] == "línea ünïcode\n✓"
    assert got[1][1].data == sent[1].data


def test_emit_builds_an_event_of_the_campaign(journal, campaign):
    ev = journal.emit("worker_heartbeat", source="worker-1", worker="worker-1", trial_id=None)
    assert ev.campaign == campaign and ev.type == "worker_heartbeat"
    [(_pos, got)] = list(journal.read())
    assert got == ev


def test_read_after_a_position_and_limit(journal):
    sent = [journal.emit("trial_progress", source="w", trial_id="t", step=i) for i in range(12)]
    got = list(journal.read())
    assert ids(got) == [e.id for e in sent]
    assert len({p for p, _ in got}) == 12
    after5 = list(journal.read(after=got[4][0]))
    assert ids(after5) == [e.id for e in sent[5:]]
    assert ids(journal.read(after=got[4][0], limit=3)) == [e.id for e in sent[5:8]]
    assert list(journal.read(after=got[-1][0])) == []


def test_read_pages_through_more_than_one_page(journal, monkeypatch):
    monkeypatch.setattr(journal_backend, "PAGE_SIZE", 7)
    sent = [journal.emit("trial_progress", source="w", step=i) for i in range(30)]
    assert ids(journal.read()) == [e.id for e in sent]
    assert ids(journal.read(limit=10)) == [e.id for e in sent[:10]]


def test_appending_an_event_twice_stores_it_once(journal):
    ev = Event(type="verdict", source="coordinator", data={"candidate_id": "c1", "verdict": "discard"})
    p1 = journal.append(ev)
    journal.emit("lab_note", source="x", text="between")
    again = Event(id=ev.id, campaign=ev.campaign, type="verdict", data={"verdict": "changed"})
    p2 = journal.append(again)
    assert p1 == p2
    got = list(journal.read())
    assert ids(got).count(ev.id) == 1 and len(got) == 2
    assert got[0][1].data["verdict"] == "discard"  # the first copy stays


def test_campaigns_are_kept_apart_and_listed(url, campaign):
    other = campaign + "-b"
    with open_journal(url, campaign=campaign) as a, open_journal(url, campaign=other) as b:
        ea = a.emit("lab_note", source="a", text="in a")
        time.sleep(0.01)  # Redis ranks campaigns by the millisecond of their last append
        eb = b.emit("lab_note", source="b", text="in b")
        assert ids(a.read()) == [ea.id] and ids(b.read()) == [eb.id]
        listed = a.campaigns()
        assert listed.index(other) < listed.index(campaign)  # most recently active first
        with pytest.raises(JournalError, match="belongs to campaign"):
            a.append(Event(campaign=other, type="lab_note"))


def test_journal_without_a_campaign_lists_them_in_its_error(url, campaign):
    with open_journal(url, campaign=campaign) as j:
        j.emit("lab_note", source="x")
    with open_journal(url) as j:
        assert campaign in j.campaigns()
        with pytest.raises(JournalError, match=campaign):
            list(j.read())


def test_bad_positions_campaign_tags_and_data_are_clear_errors(journal, url):
    journal.emit("lab_note", source="x")
    with pytest.raises(JournalError, match="bad position"):
        list(journal.read(after="not-a-position"))
    with pytest.raises(JournalError, match="bad campaign tag"):
        open_journal(url, campaign="has spaces")
    loop = {}
    loop["self"] = loop
    with pytest.raises(JournalError, match="not JSON-serializable"):
        journal.emit("lab_note", source="x", data=loop)


def test_unknown_types_and_newer_schema_are_stored_as_written(journal):
    odd = [Event(type="gpu_thermal_throttle", source="monitor", data={"celsius": 102}),
           Event(type="trial_finished", source="future", v=99, data={"result": {"bpb": 1.4}})]
    for ev in odd:
        journal.append(ev)
    got = [ev for _p, ev in journal.read()]
    assert got == odd
    assert [ev.known for ev in got] == [False, False]


def _store_raw(journal, raws):
    """Put records in the store behind the journal's back, as a foreign writer might."""
    if hasattr(journal, "_db"):
        for i, raw in enumerate(raws):
            journal._db.execute("INSERT INTO events (id, campaign, time, source, type, v, data) "
                                "VALUES (?, ?, 0, '', 'lab_note', 1, ?)", (f"raw-{i}", journal.campaign, raw))
    else:
        for raw in raws:
            journal._r.xadd(journal._keys()[0], {"e": raw} if raw is not None else {"other": "field"})


def test_records_that_are_not_events_are_read_as_malformed(journal):
    from journal.views import replay
    good = journal.emit("lab_note", source="x", text="before")
    _store_raw(journal, ["not json", "[1, 2]"] + ([None] if not hasattr(journal, "_db") else []))
    after = journal.emit("lab_note", source="x", text="after")
    got = [ev for _p, ev in journal.read()]
    assert got[0] == good and got[-1] == after
    odd = got[1:-1]
    assert odd and all(ev.type == "malformed" and ev.data["error"] for ev in odd)
    assert odd[0].data["raw"] == "not json"
    state = replay(journal.read())
    assert [ev.type for ev, _why in state.unknown] == ["malformed"] * len(odd)


def test_follow_yields_new_events_then_stops_when_idle(journal):
    first = journal.emit("lab_note", source="x", text="before")
    start = list(journal.read())[-1][0]
    later = []

    def writer():
        time.sleep(0.3)
        for i in range(3):
            later.append(journal.emit("trial_progress", source="w", step=i))
            time.sleep(0.1)

    t = threading.Thread(target=writer)
    t.start()
    # stops after FOLLOW_IDLE_S without a new event: generous, as a loaded machine may hold the
    # writer thread back between its appends
    seen = ids(journal.follow(after=start, timeout=FOLLOW_IDLE_S))
    t.join()
    assert seen == [e.id for e in later]
    assert ids(journal.follow(timeout=0.2)) == [first.id] + [e.id for e in later]


def test_events_survive_close_and_reopen(url, campaign):
    with open_journal(url, campaign=campaign) as j:
        sent = [j.emit("lab_note", source="x", n=i) for i in range(5)]
    with open_journal(url, campaign=campaign) as j:
        assert ids(j.read()) == [e.id for e in sent]


# -- several processes at once ---------------------------------------------------------------
WRITERS, PER_WRITER, READERS = 4, 120, 2


def _writer_proc(url, campaign, n, go, out):
    j = open_journal(url, campaign=campaign)
    go.wait()
    sent = [j.emit("trial_progress", source=f"writer-{n}", trial_id=f"t{n}", step=i).id
            for i in range(PER_WRITER)]
    # a retried append (the same event again, as after a lost reply) must not duplicate
    j.append(Event(id=sent[0], campaign=campaign, type="trial_progress", data={"retry": True}))
    j.close()
    out.put(("writer", n, sent))


def _reader_proc(url, campaign, n, go, out):
    j = open_journal(url, campaign=campaign)
    go.wait()
    seen = []
    for pos, ev in j.follow(timeout=60):
        seen.append((pos, ev.id))
        if len(seen) >= WRITERS * PER_WRITER:
            break
    j.close()
    out.put(("reader", n, seen))


def test_several_processes_append_every_event_once_in_one_order(url, campaign):
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer_proc, args=(url, campaign, n, go, out)) for n in range(WRITERS)]
    procs += [ctx.Process(target=_reader_proc, args=(url, campaign, n, go, out)) for n in range(READERS)]
    for p in procs:
        p.start()
    go.set()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    written = {n: sent for kind, n, sent in results if kind == "writer"}
    readers = [seen for kind, _n, seen in results if kind == "reader"]
    with open_journal(url, campaign=campaign) as j:
        final = [(pos, ev.id) for pos, ev in j.read()]
    all_ids = [i for _p, i in final]
    assert len(all_ids) == WRITERS * PER_WRITER == len(set(all_ids))
    assert set(all_ids) == {i for sent in written.values() for i in sent}
    for sent in written.values():  # each writer's events keep its order
        assert [i for i in all_ids if i in set(sent)] == sent
    assert readers == [final] * READERS  # every reader saw the same order, positions included


# -- embedded backend only -----------------------------------------------------------------------
def test_sqlite_bad_paths_are_clear_errors(tmp_path):
    with pytest.raises(JournalError, match="does not exist.*mkdir -p"):
        open_journal(str(tmp_path / "missing" / "j.db"), campaign="c")
    with pytest.raises(JournalError, match="is a folder"):
        open_journal(str(tmp_path), campaign="c")
    not_db = tmp_path / "notes.txt"
    not_db.write_text("this is not a database\n" * 100)
    with pytest.raises(JournalError, match="not a journal database"):
        open_journal(str(not_db), campaign="c")
    assert not_db.read_text().startswith("this is not a database")  # left untouched
    with pytest.raises(JournalError, match="is a file, not a folder"):
        open_journal(str(not_db / "j.db"), campaign="c")
    with pytest.raises(JournalError, match="no journal at"):
        open_journal(str(tmp_path / "absent.db"), create=False)
    assert not (tmp_path / "absent.db").exists()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(JournalError, match="not a journal"):
        open_journal(str(other), create=False)
    with pytest.raises(JournalError, match="unknown journal URL scheme"):
        open_journal("http://example.com/journal", campaign="c")


# -- Redis only ----------------------------------------------------------------------------------
@pytest.mark.timeout(60)  # an open that sat in reconnect backoff would hang here
def test_redis_wrong_or_missing_password_and_unreachable_host(redis_server):
    wrong = redis_server.url.replace(PASSWORD, "not-the-password")
    with pytest.raises(JournalError, match="authentication failed: check the password"):
        open_journal(wrong, campaign="c")
    with pytest.raises(JournalError, match="requires a password"):
        open_journal(f"redis://127.0.0.1:{redis_server.port}/0", campaign="c")
    port = free_port()  # nothing listens there
    with pytest.raises(JournalError, match=f"cannot reach Redis at 127.0.0.1:{port}.*redis-server"):
        open_journal(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", campaign="c")
    with pytest.raises(JournalError, match="port must be a number"):
        open_journal(f"redis://:{PASSWORD}@127.0.0.1:notaport/0", campaign="c")
    j = open_journal(redis_server.url, campaign="c")
    assert PASSWORD not in repr(j) and "***" in repr(j)  # no password in messages
    j.close()


class LostReplyProxy:
    """A TCP relay in front of Redis. When armed, it lets the next request through but
    swallows Redis's reply and cuts the client's connection: the write happened, the
    client never heard. (A real network fault; nothing in the journal is replaced.)"""

    def __init__(self, port):
        self.upstream = port
        self.armed = threading.Event()
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src, dst, is_reply):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if is_reply and self.armed.is_set():
                    self.armed.clear()
                    self.dropped += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.listener.close()


def test_redis_retried_append_after_a_lost_reply_is_not_duplicated(redis_server, campaign):
    proxy = LostReplyProxy(redis_server.port)
    try:
        with open_journal(f"redis://:{PASSWORD}@127.0.0.1:{proxy.port}/0", campaign=campaign) as j:
            j.emit("lab_note", source="x", text="warm-up")  # script loaded, connection idle
            ev = Event(type="trial_finished", source="worker-1", data={"trial_id": "t1", "val_bpb": 1.5})
            proxy.armed.set()
            pos = j.append(ev)  # reply lost -> redis-py reconnects and sends it again
            assert proxy.dropped == 1
            got = list(j.read())
        assert ids(got).count(ev.id) == 1 and len(got) == 2
        assert got[1][0] == pos
    finally:
        proxy.close()


def test_redis_restart_loses_nothing_and_clients_reconnect(tmp_path, campaign):
    total = 150
    with RedisServer(tmp_path / "redis") as srv:
        writer = open_journal(srv.url, campaign=campaign)
        follower = open_journal(srv.url, campaign=campaign)
        acked, seen, errors = [], [], []

        def write():
            try:
                for i in range(total):
                    acked.append(writer.emit("trial_progress", source="w", step=i).id)
                    time.sleep(0.005)
            except Exception as e:  # surfaced by the assert below
                errors.append(e)

        def follow():
            try:
                for _pos, ev in follower.follow(timeout=60):
                    seen.append(ev.id)
                    if len(seen) >= total:
                        return
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=write), threading.Thread(target=follow)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 40 and not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acked) >= 40 and not errors, errors
        srv.restart(kill=True, down_s=0.5)  # SIGKILL: a crash, not a clean shutdown
        for t in threads:
            t.join(timeout=120)
        assert not errors
        assert len(acked) == total
        with open_journal(srv.url, campaign=campaign) as fresh:
            stored = ids(fresh.read())
        assert stored == acked  # every acknowledged append, once, in order
        assert seen == acked    # the follower reconnected and missed nothing
        writer.close()
        follower.close()
