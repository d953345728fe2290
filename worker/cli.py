"""`swarm trial`: run one commit of a repository once, as a worker would, and print the result.

    swarm trial --repo . --commit HEAD --seed 0 --budget 60
    python -m worker --commit HEAD~1 --base HEAD~2       # validate as a candidate of HEAD~2

It runs a commit, not the working tree: commit your change first. The worker
keeps its clone in --workdir (default .swarm/trial-worker), so a second run
is fast. Extra environment for the trial comes from AUTORESEARCH_* variables
and --env KEY=VALUE.
"""

import argparse
import json
import sys
import time
from pathlib import Path

# Where `swarm trial` keeps its worker (clone, logs) unless told otherwise.
DEFAULT_WORKDIR = ".swarm/trial-worker"


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--repo", default=".", help="research repository (default: .)")
    p.add_argument("--commit", default="HEAD", help="commit to run (default: HEAD)")
    p.add_argument("--base", default=None,
                   help="validate as a candidate of this commit (only editable files may differ)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=None, help="seconds of training (default: the profile's)")
    p.add_argument("--no-smoke", action="store_true", help="skip the short smoke run")
    p.add_argument("--kind", default="baseline", choices=["baseline", "candidate", "retest", "heldout"])
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"worker's folder (default: {DEFAULT_WORKDIR})")
    p.add_argument("--name", default="local", help="worker name (default: local)")
    p.add_argument("--campaign", default="trial", help="campaign tag (branch swarm/<campaign>/<name>)")
    p.add_argument("--journal", default=None, help="journal to write events to (path or redis:// URL)")
    p.add_argument("--expect-fingerprint", default=None, help="refuse unless the data fingerprint is this")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra trial environment")
    p.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "sandbox-exec", "off"),
                   help="how the trial is confined (default auto); off is for debugging only")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def run(args) -> int:
    """0 when the trial ran ok, 1 when it crashed / was invalid, 2 when the worker cannot run at all."""
    from safety.gitsafe import GitError, git
    from safety.redact import scrub_environ

    from .repo import make_bundle
    from .worker import TrialSpec, Worker

    scrub_environ()     # the worker (its git, its smoke runs) never holds an API key or the journal's password

    extra = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: --env takes KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        extra[key] = value
    try:
        root = git(args.repo, "rev-parse", "--show-toplevel").strip()
        commit = git(root, "rev-parse", "--verify", f"{args.commit}^{{commit}}").strip()
        base = git(root, "rev-parse", "--verify", f"{args.base}^{{commit}}").strip() if args.base else None
    except (GitError, OSError) as e:
        print(f"error: {args.repo}: cannot find commit {args.commit}"
              f"{' / ' + args.base if args.base else ''} in a git repository ({e})", file=sys.stderr)
        return 2

    w = Worker(args.name, Path(args.workdir), journal_url=args.journal, campaign=args.campaign,
               expected_fingerprint=args.expect_fingerprint, env=extra, sandbox=args.sandbox)
    try:
        # the worker's reference (target.toml, fixed-file hashes, data fingerprint) is the base
        w.load_repo(make_bundle(root, base or commit))
        info = w.info()
        if info["problem"]:
            print(f"error: worker {args.name}: {info['problem']}", file=sys.stderr)
            return 2
        if not args.json:
            print(f"worker {args.name}: {info['track']} ({info['hardware']['chip']}, "
                  f"MLX {info['mlx_version']} {info['mlx_backend']})", flush=True)
        trial_id = f"{args.name}-{commit[:10]}-s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        spec = TrialSpec(trial_id=trial_id, commit=commit, seed=args.seed,
                         bundle=make_bundle(root, commit), base_commit=base, kind=args.kind,
                         time_budget=args.budget, smoke=not args.no_smoke)
        result = w.run_trial(spec)
    finally:
        w.stop()
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
    else:
        print(f"status:   {result.status}" + (f" ({result.crash_class})" if result.crash_class else ""))
        if result.val_bpb is not None:
            print(f"val_bpb:  {result.val_bpb:.6f} ({result.metric_source})")
        print(f"sandbox:  {result.sandbox}" + (" (UNCONFINED: debugging only)" if result.sandbox == "off" else ""))
        if result.reason:
            print(f"reason:   {result.reason}")
        if result.status != "ok" and result.log_tail:
            print("log tail:\n  " + result.log_tail.replace("\n", "\n  "))
        print(f"log:      {result.log_path}")
        print("timings:  " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
    return 0 if result.status == "ok" else 1


def main(argv=None) -> int:
    p = configure_parser(argparse.ArgumentParser(prog="python -m worker", description=__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(p.parse_args(argv))
