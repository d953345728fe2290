"""
`swarm`: the command line of autoresearch-swarm.

    swarm run     [--campaign TAG] [--workers N] [--address RAY] [--journal URL] [--until 07:00] ...
    swarm resume  [--campaign TAG]          the same campaign, state rebuilt from the journal
    swarm status  [--campaign TAG]          workers, queue, running trials, mainline per track, noise
    swarm stop    [--campaign TAG]          ask the running coordinator to stop (it sees it within ~1 s)
    swarm journal ...                       the lab journal (table, markdown, results.tsv, plot)
    swarm trial   ...                       run one commit once, as a worker would
    swarm doctor  ...                       is this machine / journal / Ray cluster ready?
    swarm init    --repo FORK               a commented target.toml for an upstream-shaped fork
    swarm dashboard ...                     a live web page of the campaign (dashboard/)

Settings come from flags over an optional swarm.toml (at the repo root, or
--config) over the defaults of coordinator/config.py. Every import of the
heavy pieces happens inside its subcommand, so `swarm --help` always works.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
import time


def _run_flags(p: argparse.ArgumentParser):
    p.add_argument("--campaign", "--tag", dest="campaign", default=None,
                   help="campaign tag (run: default today's date like 'mar5', an existing tag resumes it; "
                        "resume: default the most recent)")
    p.add_argument("--repo", default=None, help="the research repository (default: .)")
    p.add_argument("--config", default=None, help="settings file (default: <repo>/swarm.toml when present)")
    p.add_argument("--journal", default=None,
                   help="redis://:PASSWORD@host:port/db or a file (default: $SWARM_JOURNAL or .swarm/journal.db)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--workers", type=int, default=None,
                   help="local: worker actors (default 1); cluster: at most this many (default: one per mlx)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training per trial "
                   "(default: the profile's)")
    p.add_argument("--baseline-trials", type=int, default=None, help="trials of a new mainline before it judges anything (default 5)")
    p.add_argument("--retest-trials", type=int, default=None, help="fresh seeds for a merge (default 4)")
    p.add_argument("--confidence", type=float, default=None, help="one-sided confidence per candidate (default 0.9)")
    p.add_argument("--retest-confidence", type=float, default=None,
                   help="one-sided confidence of a merge's re-test (default 0.9)")
    p.add_argument("--min-effect", type=float, default=None, help="smallest improvement kept, bpb (default 0)")
    p.add_argument("--max-seeds", type=int, default=None, help="trials per candidate at most (default 8)")
    p.add_argument("--lease", dest="lease_s", type=float, default=None,
                   help="seconds a silent worker keeps its trial (default 60)")
    p.add_argument("--until", default=None, help="stop at: '07:00', '8h', '90m' or an ISO date-time")
    p.add_argument("--max-trials", type=int, default=None, help="stop after this many trials")
    p.add_argument("--agent", default=None,
                   help="auto (default: Anthropic with $ANTHROPIC_API_KEY, else --agent-command, else offline), "
                        "offline, anthropic, command, or package.module:factory")
    p.add_argument("--model", default=None, help="model of the anthropic agent")
    p.add_argument("--agent-command", default=None, help="coding-agent command, e.g. 'claude -p'")
    p.add_argument("--seed", type=int, default=None, help="agent seed (default 0)")
    p.add_argument("--buffer", type=int, default=None, help="candidates kept ready per track beyond one per "
                   "worker (default 2)")
    p.add_argument("--agent-threads", type=int, default=None, help="agent calls in flight at once (default: 8 "
                   "for a model backend, in the agent's Ray actor; 0: in the coordinator's loop)")
    p.add_argument("--workdir", default=None, help="worker clones (default .swarm/workers)")
    p.add_argument("--no-smoke", dest="smoke", action="store_const", const=False, default=None,
                   help="skip the smoke run before a candidate's first trial")
    p.add_argument("--no-heldout", dest="heldout", action="store_const", const=False, default=None,
                   help="do not evaluate the test split on promotion")
    p.add_argument("--sandbox", default=None, choices=("auto", "bwrap", "sandbox-exec", "off"),
                   help="how trials are confined (default auto: bubblewrap on Linux, sandbox-exec on macOS); "
                        "off is for debugging only and is journaled on every trial")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for every trial (repeatable)")


def _where_flags(p: argparse.ArgumentParser):
    p.add_argument("--campaign", "--tag", dest="campaign", default=None,
                   help="campaign tag (default: the most recently active one)")
    p.add_argument("--journal", default=None,
                   help="redis://:PASSWORD@host:port/db or a file (default: $SWARM_JOURNAL or .swarm/journal.db)")
    p.add_argument("--repo", default=None, help="the research repository (default: .)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarm", description="A swarm of research agents improving "
                                     "train.py, judged against a measured noise floor.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _run_flags(sub.add_parser("run", help="start (or continue) a campaign"))
    _run_flags(sub.add_parser("resume", help="continue a campaign from its journal"))
    _where_flags(sub.add_parser("status", help="workers, queue, running trials, mainlines, noise floors"))
    p = sub.add_parser("stop", help="ask the running coordinator to stop")
    _where_flags(p)
    p.add_argument("--reason", default=None, help="why (journaled)")
    p = sub.add_parser("journal", help="read a campaign's lab journal", add_help=True)
    _lazy(p, "journal.cli")
    p = sub.add_parser("trial", help="run one commit once, as a worker would")
    _lazy(p, "worker.cli")
    p = sub.add_parser("doctor", help="check that this machine, the journal and the Ray cluster are ready")
    _lazy(p, "swarm.doctor")
    p = sub.add_parser("init", help="write a commented target.toml for your autoresearch fork")
    _lazy(p, "swarm.init")
    p = sub.add_parser("dashboard", help="a live web page of a campaign, served from its journal")
    _lazy(p, "dashboard.cli")
    return parser


def _lazy(p: argparse.ArgumentParser, module: str):
    """Let another package's CLI define the sub-command's flags (imported only when it exists)."""
    try:
        mod = __import__(module, fromlist=["configure_parser"])
        mod.configure_parser(p)
        p.set_defaults(_delegate=mod)
    except Exception as e:  # not there yet, or broken: `swarm --help` must still work
        p.set_defaults(_delegate=None, _delegate_error=f"{type(e).__name__}: {e}")


def _flags(args) -> dict:
    keys = ("campaign", "repo", "journal", "address", "workers", "time_budget", "baseline_trials",
            "retest_trials", "confidence", "retest_confidence", "min_effect", "max_seeds", "lease_s", "until",
            "max_trials", "agent", "seed", "buffer", "agent_threads", "workdir", "smoke", "heldout", "sandbox")
    flags = {k: getattr(args, k, None) for k in keys}
    env = {}
    for item in getattr(args, "env", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            from coordinator.config import ConfigError
            raise ConfigError(f"--env takes KEY=VALUE, got {item!r}")
        env[key] = value
    if env:
        flags["env"] = env
    agents = {k: v for k, v in (("model", getattr(args, "model", None)),
                                 ("command", getattr(args, "agent_command", None))) if v}
    if agents:
        flags["agents"] = agents
    return flags


def cmd_run(args, resume: bool) -> int:
    from coordinator.campaign import Campaign, CampaignError
    from coordinator.config import load_config
    from coordinator.mainline import MainlineError
    from journal import JournalError
    from worker.sandbox import SandboxError, resolve_mode

    try:
        cfg = load_config(_flags(args), args.config)
        if cfg.address is None:     # workers on this machine: no sandbox, no campaign (Ray not started yet)
            resolve_mode(cfg.sandbox)
        campaign = Campaign(cfg, resume_only=resume)
        reason = campaign.run()
    except (CampaignError, MainlineError, JournalError, SandboxError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    fatal = campaign.state is not None and campaign.state.fatal
    return 1 if fatal or reason.startswith("no usable worker") else 0


def _open_existing(args):
    """(journal, campaign tag) for status/stop: the given tag or the most recently active one."""
    from coordinator.config import load_config
    from journal import JournalError, open_journal

    cfg = load_config({"journal": args.journal, "repo": args.repo})
    url = cfg.journal_url
    if "://" not in url and not os.path.exists(url):
        raise JournalError(f"no journal at {url}: start a campaign with `swarm run` (or pass --journal)")
    probe = open_journal(url, create=False)
    try:
        have = probe.campaigns()
    finally:
        probe.close()
    tag = args.campaign or (have[0] if have else None)
    if tag is None or tag not in have:
        raise JournalError(f"no campaign {tag!r} in {url} (campaigns: {', '.join(have) or 'none'})")
    return open_journal(url, campaign=tag), tag


def _replayed(args):
    """(journal, tag, state) of an existing campaign, or None after printing why."""
    from coordinator.state import CampaignState
    from journal import JournalError
    try:
        journal, tag = _open_existing(args)
    except (JournalError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    st = CampaignState(tag)
    for pos, ev in journal.read():
        st.apply(ev, pos)
    return journal, tag, st


def cmd_stop(args) -> int:
    got = _replayed(args)
    if got is None:
        return 2
    journal, tag, st = got
    with journal:
        if not st.running():
            print(f"campaign {tag} is not running (stopped: {st.stop_reason or 'never started'})")
            return 0
        who = f"{getpass.getuser()}@{socket.gethostname()}"
        journal.emit("stop_requested", source=who, reason=args.reason or f"swarm stop by {who}")
    print(f"asked campaign {tag} to stop; its coordinator stops within a few seconds "
          f"(running trials are aborted and re-run on resume)")
    return 0


def cmd_status(args) -> int:
    got = _replayed(args)
    if got is None:
        return 2
    journal, tag, st = got
    journal.close()
    from rich.console import Console
    render_status(st, Console())
    return 0


def render_status(st, console):
    """The status page: campaign line, workers, running trials, mainline per track, queue."""
    from rich.table import Table

    from coordinator.config import config_from_dict
    from coordinator.scheduler import Policy, baseline_demand, candidate_demand, fresh_candidates, retest_demand

    now = time.time()
    state = "running" if st.running() else f"stopped ({st.stop_reason})"
    console.print(f"[bold]campaign {st.campaign}[/bold]: {state}; {st.finished_count} trials, "
                  f"{len(st.candidates)} candidates, {len(st.merges)} merges, "
                  f"{sum(1 for m in st.merges.values() if m.outcome == 'promoted')} promoted")
    if st.fatal:
        console.print(f"[red]cannot go on:[/red] {st.fatal}")
    for note in st.trust_notes():
        console.print(f"[yellow]note:[/yellow] {note}")
    usage = list(getattr(st, "usage", {}).values())
    if usage:
        console.print(f"agent usage: {sum(u.calls for u in usage)} calls, "
                      f"{sum(u.input_tokens for u in usage):,} input + {sum(u.output_tokens for u in usage):,} "
                      f"output tokens ({sum(u.cache_read_tokens for u in usage):,} cache read), "
                      f"${sum(u.cost_usd for u in usage):.4f}, mean latency "
                      f"{sum(u.latency_s for u in usage) / max(1, sum(u.calls for u in usage)):.1f}s")

    workers = Table(title="workers", title_justify="left")
    for col in ("worker", "track", "state", "trial", "kind", "progress", "loss", "left", "seen"):
        workers.add_column(col)
    for w in sorted(st.workers.values(), key=lambda w: w.worker):
        lease = next((x for x in st.leases.values() if x.worker == w.worker), None)
        t = st.trials.get(lease.trial_id) if lease else None
        p = (t.progress or {}) if t else {}
        workers.add_row(w.worker, w.track or "-", "busy" if lease else w.state,
                        lease.trial_id[:8] if lease else "-", lease.kind if lease else "-",
                        f"{100 * p['progress']:.0f}%" if p.get("progress") is not None else "-",
                        f"{p['loss']:.3f}" if p.get("loss") is not None else "-",
                        f"{p['seconds_left']:.0f}s" if p.get("seconds_left") is not None else "-",
                        f"{now - w.last_seen:.0f}s ago" if w.last_seen else "-")
    console.print(workers)
    from journal.export import ACCELERATOR_HEADER, accelerator_rows   # #14: training share per worker
    rows = accelerator_rows(st)
    if rows:
        acc = Table(title="accelerator time (trials' wall seconds)", title_justify="left")
        for col in ACCELERATOR_HEADER:
            acc.add_column(col)
        for row in rows:
            acc.add_row(*row)
        console.print(acc)

    policy = Policy.from_config(config_from_dict(st.config or {}), st.direction)
    tracks = Table(title="mainline per track", title_justify="left")
    for col in ("track", "trusted", "mean", "n", "noise sigma", "dof", "merge re-testing", "promotions"):
        tracks.add_column(col)
    queue = Table(title="queue", title_justify="left")
    for col in ("track", "baseline", "more seeds", "re-test", "new candidates", "to merge", "to implement"):
        queue.add_column(col)
    for name, ts in sorted(st.swarm.items()):
        vals = st.commit_values(name, ts.trusted)
        sigma, dof = st.noise(name)
        merge = st.merges[ts.merge] if ts.merge else None
        tracks.add_row(name, ts.trusted[:12], f"{sum(vals) / len(vals):.4f}" if vals else "-", str(len(vals)),
                       f"{sigma:.4f}" if sigma is not None else "-", str(dof),
                       f"{merge.commit[:12]} ({st.retest_done(merge.candidate_id)} trials)" if merge else "-",
                       str(sum(1 for p in st.promotions if p[0] == name)))
        promising = sum(candidate_demand(st, c, policy) for c in ts.open
                        if st.candidates[c].verdict is not None)
        impl = sum(1 for h in st.pending_impl if st.hyp.get(h, {}).get("track") == name)
        queue.add_row(name, str(baseline_demand(st, name, policy)), str(promising),
                      str(retest_demand(st, ts.merge, policy)) if ts.merge else "-",
                      str(fresh_candidates(st, name)), str(len(ts.confirmed)), str(impl))
    console.print(tracks)
    console.print(queue)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("run", "resume"):
        return cmd_run(args, resume=args.command == "resume")
    if args.command == "status":
        return cmd_status(args)
    if args.command == "stop":
        return cmd_stop(args)
    delegate = getattr(args, "_delegate", None)
    if delegate is None:
        print(f"error: `swarm {args.command}` is not available: {getattr(args, '_delegate_error', '')}",
              file=sys.stderr)
        return 2
    return delegate.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
