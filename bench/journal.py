"""
Journal throughput: appends/s and the replay time of a 100k-event campaign, on
the embedded (SQLite) and the Redis backend.

For each backend:
  appends/s, 1 client      one process appending one event at a time (each a round trip)
  appends/s, 4 clients     four processes appending at once: each one's own rate, and the sum;
                           together they write the 100k events replayed next
  replay                   read all events back (Journal.read) and fold them into the views
                           (journal.views.replay): what a restarted coordinator does
Events are a realistic mix: mostly trial_progress and heartbeats, trial_finished with a
1.5 kB log tail, some hypotheses, verdicts and agent usage.

Redis runs here as a private redis-server (password, appendonly yes) with
appendfsync everysec, the setting a swarm's Redis uses (an fsync per second: a
power cut may lose the last second; a crashed redis-server loses nothing). The
1-client rate is also measured with appendfsync always (an fsync per append, as
the tests run it), which depends on the disk.

Targets (issue): >= 2,000 appends/s per client; 100k-event replay < 5 s on Redis.

Usage: uv run python bench/journal.py [--events 100000] [--single 5000]   (~1-2 min on 2 cores)
"""

import argparse
import multiprocessing
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time

# This file is named journal.py: keep its folder off sys.path so `import journal`
# finds the package (and bench/statistics.py does not shadow the stdlib).
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.path.insert(0, ROOT)

from journal import Event, open_journal  # noqa: E402
from journal.views import replay  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

CLIENTS = 4                   # concurrent appending processes
TARGET_APPENDS_PER_S = 2000   # per client
TARGET_REPLAY_S = 5.0         # 100k events on Redis
LOG_TAIL = ("step 00123 (45.0%) | loss: 3.456789 | lrm: 1.00 | dt: 123ms | tok/sec: 12,345 | mfu: 1.2%\n" * 16)[:1500]
RATIONALE = "Schedule changes kept winning on small machines; a longer warmdown anneals more. " * 4


def make_event(i: int, client: int) -> Event:
    """The i-th event of a client: a fixed mix shaped like a real campaign."""
    k = i % 20
    tid = f"c{client}-t{i // 20}"
    worker = f"worker-{client}"
    if k < 12:
        return Event(type="trial_progress", source=worker,
                     data=dict(trial_id=tid, worker=worker, step=i, progress=k / 20, loss=3.5 - k / 100,
                               tok_per_s=51234.5, seconds_left=60 - k))
    if k < 16:
        return Event(type="worker_heartbeat", source=worker, data=dict(worker=worker, trial_id=tid))
    if k == 16:
        return Event(type="trial_started", source=worker,
                     data=dict(trial_id=tid, worker=worker, track="m2/tiny/60s/ab12cd34ef56",
                               commit=f"{i:040x}", seed=i % 5, kind="candidate", candidate_id=f"c{client}-{i // 20}"))
    if k == 17:
        return Event(type="trial_finished", source=worker,
                     data=dict(trial_id=tid, worker=worker, track="m2/tiny/60s/ab12cd34ef56",
                               commit=f"{i:040x}", seed=i % 5, kind="candidate",
                               candidate_id=f"c{client}-{i // 20}", status="ok", crash_class=None, reason=None,
                               val_bpb=1.5 - (i % 97) / 1e4,
                               metrics=dict(val_bpb=1.5, peak_vram_mb=1234.5, num_steps=123, mfu_percent=21.3),
                               log_tail=LOG_TAIL, log_path=f"/logs/{tid}.log",
                               timings=dict(git=0.2, validate=0.1, smoke=2.0, train=60.0, journal=0.01)))
    if k == 18:
        return Event(type="hypothesis_proposed", source="proposer",
                     data=dict(hypothesis_id=f"h{client}-{i}", title="Longer warmdown", rationale=RATIONALE,
                               expected_effect="-0.01 bpb", risk="low", agent="proposer",
                               track="m2/tiny/60s/ab12cd34ef56", mainline_commit=f"{i:040x}"))
    return Event(type="agent_usage", source="proposer",
                 data=dict(agent="proposer", model="claude-sonnet-4-5", purpose="propose", input_tokens=12000,
                           output_tokens=800, cache_read_tokens=9000, cache_write_tokens=0, cost_usd=0.06,
                           latency_s=14.2))


def append_rate(url, campaign, n, client=0, go=None) -> float:
    """Append n events one by one; returns appends/s."""
    events = [make_event(i, client) for i in range(n)]  # built before the clock starts
    with open_journal(url, campaign=campaign) as j:
        if go is not None:
            go.wait()
        t0 = time.perf_counter()
        for ev in events:
            j.append(ev)
        return n / (time.perf_counter() - t0)


def _client(url, campaign, n, client, go, out):
    out.put(append_rate(url, campaign, n, client, go))


def concurrent_rates(url, campaign, n_each) -> list:
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(url, campaign, n_each, c, go, out)) for c in range(CLIENTS)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # let every client import and connect before the start signal
    go.set()
    rates = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sorted(rates)


def replay_times(url, campaign, expected):
    with open_journal(url, campaign=campaign) as j:
        t0 = time.perf_counter()
        events = list(j.read())
        t1 = time.perf_counter()
    state = replay(events)
    t2 = time.perf_counter()
    if len(events) != expected or state.count != expected:
        raise SystemExit(f"replay read {len(events)} events, expected {expected}")
    return t1 - t0, t2 - t1


def bench_backend(name, url, args, results):
    print(f"\n[{name}] {url.split('@')[-1]}", flush=True)
    r = {"single": append_rate(url, "bench-single", args.single)}
    print(f"  appends/s, 1 client:            {r['single']:8,.0f}", flush=True)
    rates = concurrent_rates(url, "bench-replay", args.events // CLIENTS)
    r["per_client_min"], r["per_client_mean"], r["total"] = rates[0], sum(rates) / len(rates), sum(rates)
    print(f"  appends/s, {CLIENTS} clients at once:  per client min {rates[0]:,.0f} mean "
          f"{r['per_client_mean']:,.0f}, all together {r['total']:,.0f}", flush=True)
    n = (args.events // CLIENTS) * CLIENTS
    r["read"], r["views"] = replay_times(url, "bench-replay", n)
    print(f"  replay of {n:,} events:       read {r['read']:.2f} s + views {r['views']:.2f} s = "
          f"{r['read'] + r['views']:.2f} s", flush=True)
    results[name] = r


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000, help="events written by the 4 clients and replayed")
    ap.add_argument("--single", type=int, default=5000, help="events appended by the single client")
    args = ap.parse_args()
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    print(f"journal bench: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, Redis {next((v[2:] for v in version if v.startswith('v=')), '?')}")
    results = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="journal-bench-") as tmp:
        bench_backend("embedded (SQLite WAL)", os.path.join(tmp, "journal.db"), args, results)
        with RedisServer(os.path.join(tmp, "redis-everysec"), appendfsync="everysec") as srv:
            bench_backend("redis (appendfsync everysec)", srv.url, args, results)
        with RedisServer(os.path.join(tmp, "redis-always"), appendfsync="always") as srv:
            always = append_rate(srv.url, "bench-always", max(args.single // 2, 100))
            print(f"\n[redis (appendfsync always)]\n  appends/s, 1 client:            {always:8,.0f}"
                  "  (an fsync per append: the disk decides)", flush=True)

    print(f"\nsummary (targets: >= {TARGET_APPENDS_PER_S:,} appends/s per client, "
          f"{args.events:,}-event replay < {TARGET_REPLAY_S:.0f} s on Redis)")
    print(f"  {'backend':30s} {'1 client':>10s} {'per client of 4 (min)':>22s} {'replay':>8s}")
    for name, r in results.items():
        print(f"  {name:30s} {r['single']:10,.0f} {r['per_client_min']:22,.0f} {r['read'] + r['views']:7.2f}s")
    redis = results["redis (appendfsync everysec)"]
    ok_rate = min(redis["single"], redis["per_client_min"]) >= TARGET_APPENDS_PER_S
    ok_replay = redis["read"] + redis["views"] < TARGET_REPLAY_S
    print(f"  Redis appends target: {'met' if ok_rate else 'NOT met'}; "
          f"Redis replay target: {'met' if ok_replay else 'NOT met'}; bench took {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
