"""`swarm journal`: read the merged lab journal of a campaign.

    swarm journal [URL|PATH] [--campaign TAG] [--format table|markdown|tsv|json] [--plot FILE.png] [--follow]

The lead wires configure_parser/run into the `swarm` CLI; `python -m journal` runs it alone.
"""

import argparse
import os
import sys

from .backend import JournalError, check_campaign, open_journal
from .views import replay

# Where a one-machine campaign keeps its journal unless told otherwise.
DEFAULT_JOURNAL = ".swarm/journal.db"
FORMATS = ("table", "markdown", "tsv", "json")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("journal", nargs="?", default=None,
                        help="redis://:PASSWORD@host:port/db or a journal file "
                             f"(default: $SWARM_JOURNAL or {DEFAULT_JOURNAL})")
    parser.add_argument("--campaign", default=None,
                        help="campaign tag (default: the only or most recently active one)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="table (default), markdown lab journal, tsv (results.tsv columns first), "
                             "json (one event per line)")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="write a progress plot (trials, mainline, held-out line)")
    parser.add_argument("--follow", action="store_true",
                        help="after the journal so far, print new events as they arrive (Ctrl-C stops)")
    return parser


def choose_campaign(journal, wanted, follow=False) -> str:
    have = journal.campaigns()
    if wanted:
        check_campaign(wanted)
        if wanted not in have and not follow:
            raise JournalError(f"no campaign {wanted!r} in {journal.url}; campaigns there: "
                               f"{', '.join(have) or 'none yet'}")
        return wanted
    if not have:
        raise JournalError(f"journal {journal.url} has no campaigns yet (start one, or pass another journal)")
    if len(have) > 1:
        print(f"note: {len(have)} campaigns in {journal.url}: {', '.join(have)}; showing the most "
              f"recent, {have[0]} (pick one with --campaign)", file=sys.stderr)
    return have[0]


def _print_view(state, events, fmt):
    from . import export, labjournal
    if fmt == "table":
        if sys.stdout.isatty():
            from rich.console import Console
            export.render_table(state, Console())
        else:
            sys.stdout.write(export.table_text(state))
    elif fmt == "markdown":
        sys.stdout.write(labjournal.markdown(state))
    elif fmt == "tsv":
        sys.stdout.write(export.tsv(state))
    elif fmt == "json":
        sys.stdout.write(export.json_lines(events))
    sys.stdout.flush()


def _follow(journal, state, fmt, after):
    from . import export
    for pos, ev in journal.follow(after=after):
        state.apply(ev, pos)
        if fmt == "json":
            line = ev.to_json()
        elif fmt == "tsv":
            t = state.trials.get(str(ev.data.get("trial_id")))
            if not (ev.type == "trial_finished" and ev.known and t):
                continue
            line = export.tsv_row(state, t)
        else:
            line = export.event_line(ev)
        print(line, flush=True)


def run(args) -> int:
    url = args.journal or os.environ.get("SWARM_JOURNAL") or DEFAULT_JOURNAL
    fmt = args.format or (None if args.plot else "table")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        print(f"error: cannot write the plot to {args.plot}: its folder does not exist", file=sys.stderr)
        return 1
    try:
        with open_journal(url, create=False) as journal:
            journal.campaign = choose_campaign(journal, args.campaign, args.follow)
            events = list(journal.read())
            state = replay(events, journal.campaign)
            if fmt:
                _print_view(state, events, fmt)
            if args.plot:
                from .plot import plot
                try:
                    plot(state, args.plot)
                except OSError as e:
                    raise JournalError(f"cannot write the plot to {args.plot}: {e}") from e
                print(f"wrote {args.plot}", file=sys.stderr)
            if args.follow:
                _follow(journal, state, fmt or "table", events[-1][0] if events else None)
    except JournalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m journal", description=__doc__.split("\n\n")[0])
    configure_parser(parser)
    return run(parser.parse_args(argv))
