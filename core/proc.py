"""One process-tree kill for everything the swarm starts (a trial, its evaluator, an agent
command): each runs as the leader of its own process group (Popen(start_new_session=True)),
so the group is the tree, whatever it forked, and nothing of it outlives its call.
"""

from __future__ import annotations

import os
import signal
import subprocess

REAP_S = 5.0     # after SIGKILL: how long to wait for the leader to be reaped


def signal_group(pgid: int, sig) -> None:
    """Send sig to the process group; a group that is gone (or not ours) is left alone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the group (a trial saves its checkpoint), SIGKILL it after grace_s: what ignored
    SIGTERM and whatever the leader left behind. Safe after the leader exited."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(REAP_S)
    except subprocess.TimeoutExpired:
        pass
