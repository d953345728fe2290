"""A Ray cluster on one machine (a head and two worker nodes with {"mlx": 1} each): a node
removed mid-trial loses its trial, which completes on the other node and counts once; a node
that joins later gets a worker."""

import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from campaign_events import events_of
from synthetic import make_repo

from coordinator.campaign import Campaign
from swarm.cli import main as swarm
from coordinator.config import load_config

WAIT_S = 300    # generous deadline of every condition waited on (a loaded machine, tests in parallel)


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster
    if ray.is_initialized():          # a session another module left open
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [c.add_node(num_cpus=1, resources={"mlx": 1}) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def _trial_process(clone: Path) -> int | None:
    """pid of the synthetic train.py a worker runs now in its clone `clone` (the full path: other
    campaigns on this machine, a parallel test's or a bench's, have a w1/repo too)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if b"train.py" in cmd and cwd == str(clone):
                return int(pid)
    return None


def node_running(nodes, clone: Path):
    """The cluster node whose raylet is an ancestor of the trial process running in `clone`."""
    pid = _trial_process(clone)
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in nodes}
    while pid and pid > 1:
        if pid in raylets:
            return raylets[pid]
        pid = _parent(pid)
    return None


def _recovered(evs) -> bool:
    """The trial cut by the lost node completed elsewhere, and a worker joined after the loss."""
    lost = [ev for ev in evs if ev.type == "worker_lost"]
    cut = [ev.data for ev in evs if ev.type == "trial_finished" and ev.data["status"] == "aborted"]
    if not lost or not cut:
        return False
    key = (cut[0]["commit"], cut[0]["kind"], cut[0]["seed"])
    redone = any(ev.type == "trial_finished" and ev.data["status"] == "ok"
                 and (ev.data["commit"], ev.data["kind"], ev.data["seed"]) == key for ev in evs)
    return redone and any(ev.type == "worker_joined" and ev.time > lost[0].time for ev in evs)


def test_node_removed_mid_trial_and_a_node_joining(cluster, tmp_path):
    c, nodes = cluster
    repo = make_repo(tmp_path / "repo")
    # the clones in this test's folder: with an address they default to ~/.autoresearch-swarm,
    # which another run of the suite on this machine shares
    cfg = load_config({"repo": str(repo), "campaign": "nodes", "address": c.address, "poll_s": 0.2,
                       "workdir": str(tmp_path / "workers"), "env": {"AUTORESEARCH_SYNTH_SLEEP": "3"}},
                      environ={})
    logs, out = [], {}
    runner = threading.Thread(target=lambda: out.setdefault("reason", Campaign(cfg, log=logs.append).run()))
    runner.start()
    try:
        deadline = time.time() + WAIT_S
        victim = None
        while time.time() < deadline and victim is None:
            if os.path.exists(repo / ".swarm" / "journal.db"):
                busy = {ev.data["worker"] for ev in events_of(repo, "nodes") if ev.type == "trial_progress"}
                if {"w1", "w2"} <= busy:
                    victim = node_running(nodes, cfg.workdir_path / "w1" / "repo")
            time.sleep(0.2)
        assert victim is not None, f"w1 never ran a trial on a node: {logs[-10:]}"
        c.remove_node(victim)
        nodes.remove(victim)
        nodes.append(c.add_node(num_cpus=1, resources={"mlx": 1}))     # a Mac joins later
        deadline = time.time() + WAIT_S
        while time.time() < deadline and not _recovered(events_of(repo, "nodes")):
            time.sleep(0.5)
        assert _recovered(events_of(repo, "nodes")), f"no recovery after the node loss: {logs[-15:]}"
        assert swarm(["stop", "--repo", str(repo)]) == 0
        runner.join(WAIT_S)
    finally:
        if runner.is_alive():
            swarm(["stop", "--repo", str(repo)])
            runner.join(WAIT_S)
    assert out.get("reason", "").startswith("stop requested"), logs[-10:]

    evs = events_of(repo, "nodes")
    finished = [ev.data for ev in evs if ev.type == "trial_finished"]
    assert max(Counter(d["trial_id"] for d in finished).values()) == 1
    lost = [ev.data for ev in evs if ev.type == "worker_lost"]
    assert [d["worker"] for d in lost] == ["w1"] and "actor died" in lost[0]["reason"]
    cut = [d for d in finished if d["worker"] == "w1" and d["status"] == "aborted" and "lost" in d["reason"]]
    assert len(cut) == 1
    key = (cut[0]["commit"], cut[0]["kind"], cut[0]["seed"])
    done = [d for d in finished if (d["commit"], d["kind"], d["seed"]) == key and d["status"] == "ok"]
    assert len(done) == 1 and done[0]["trial_id"] != cut[0]["trial_id"]   # completed elsewhere, once
    late = [ev for ev in evs if ev.type == "worker_joined"][2:]
    assert late, "the node that joined got a worker"
