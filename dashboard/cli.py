"""`swarm dashboard`: a live web page of a campaign, served from its journal.

    swarm dashboard [--journal URL] [--campaign TAG] [--host H --port P] [--repo PATH] [--allow-stop]

Binds 127.0.0.1 unless told otherwise. Any other address needs the token the
command prints as part of the URL: every request without it is refused.
"""

import argparse
import os
import sys
from urllib.parse import urlsplit

from journal.backend import JournalError, check_campaign, open_journal
from journal.cli import DEFAULT_JOURNAL

# The port unless --port says otherwise (optuna-dashboard's is 8080; ours stays clear of it).
DEFAULT_PORT = 8767
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--journal", default=None, help="redis://:PASSWORD@host:port/db or a journal file "
                        f"(default: $SWARM_JOURNAL or {DEFAULT_JOURNAL})")
    parser.add_argument("--campaign", "--tag", dest="campaign", default=None,
                        help="campaign tag (default: the most recently active one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for the LAN, token required)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    parser.add_argument("--repo", default=".", help="the research repository, for diffs the journal does not "
                        "hold (default: .)")
    parser.add_argument("--allow-stop", action="store_true",
                        help="show a stop button (it works only through the printed URL with its token)")
    return parser


def _secrets_of(url: str) -> list:
    """Strings never to show: the journal URL and its password."""
    out = [url]
    try:
        if urlsplit(url).password:
            out.append(urlsplit(url).password)
    except ValueError:
        pass
    return out


def _diff_source(repo):
    """candidate -> `git diff base commit` through the coordinator's git layer, or None."""
    from coordinator.mainline import MainlineError, MainlineRepo
    try:
        mr = MainlineRepo(repo, None)
    except MainlineError:
        return None

    def diff_of(c):
        if not (c.commit and c.base_commit and mr.rev(c.commit) and mr.rev(c.base_commit)):
            return None
        try:
            return mr.diff(c.base_commit, c.commit)
        except MainlineError:
            return None
    return diff_of


def run(args) -> int:
    from .server import Hub, Served, lan_address, make_app, new_token

    url = args.journal or os.environ.get("SWARM_JOURNAL") or DEFAULT_JOURNAL
    try:
        journal = open_journal(url, create=False)
        have = journal.campaigns()             # reaches Redis now: a bad password fails here
        if args.campaign:
            check_campaign(args.campaign)
            if args.campaign not in have:
                raise JournalError(f"no campaign {args.campaign!r} in {journal.url}; campaigns there: "
                                   f"{', '.join(have) or 'none yet'}")
    except JournalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if len(have) > 1 and not args.campaign:
        print(f"note: {len(have)} campaigns in {journal.url}: {', '.join(have)}; showing the most recent, "
              f"{have[0]} (pick one with --campaign)", file=sys.stderr)
    loopback = args.host in LOOPBACK
    token = new_token()
    hub = Hub(journal, args.campaign, _secrets_of(url), _diff_source(args.repo)).start()

    def stop_journal(tag):
        return open_journal(url, campaign=tag)

    app = make_app(hub, token, need_token=not loopback, allow_stop=args.allow_stop,
                   stop_journal=stop_journal, loopback=loopback)
    try:
        served = Served(app, args.host, args.port)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e} (pick another --port)",
              file=sys.stderr)
        return 1
    shown = lan_address() if args.host in ("0.0.0.0", "::", "") else args.host
    shown = f"[{shown}]" if ":" in shown else shown
    link = f"http://{shown}:{served.port}/?token={token}"
    if loopback:
        message = (f"dashboard: http://{shown}:{served.port}/  (read-only; with the stop button: {link})"
                   if args.allow_stop else f"dashboard: http://{shown}:{served.port}/")
    else:
        message = (f"dashboard: {link}\n  the token in this URL is required: share it only with people who "
                   f"may {'stop the campaign' if args.allow_stop else 'read the journal'}")
    try:
        with served:       # the URL is printed once the server listens
            print(message, flush=True)
            served.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        hub.close()
        journal.close()
    return 0
