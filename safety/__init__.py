"""What untrusted code and the swarm's outputs never get: secrets and git that runs programs.

A leaf package: it imports nothing of the swarm, so the journal, the worker, the
coordinator and the agents all take the one rule from here.

    safety.redact   which names and values are secrets; redaction for the journal and its views;
                    environments without them (a worker's own, an agent command's)
    safety.gitsafe  every git call the swarm makes runs no hook, fsmonitor or filter/merge driver;
                    a worker's clone is cleaned of what a trial may have planted in .git
"""
