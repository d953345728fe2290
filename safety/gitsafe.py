"""Git that runs nothing a repository names: every git call of the swarm goes through here.

This module is the swarm's one git layer: plain `git` subprocesses (run_git, git), not a
library. The reason is the safety below: every call must carry options that override the
repository's own config, and git's own child processes must inherit them; with a
subprocess that is one argument list and one environment, visible in one place (GitPython,
which the original design named, runs the same subprocesses behind `repo.git.x`).

A candidate's code runs in the worker's clone and could plant things in `.git`
that git itself would run on the worker's next checkout, with the worker's own
environment and outside the trial's limits: a hook (.git/hooks/post-checkout,
or core.hooksPath pointing anywhere), core.fsmonitor (a command run on every
index refresh), a filter driver (`filter.<x>.smudge`, named by a .gitattributes
in the commit and defined in .git/config), a merge driver. So:

- every call gets `-c core.hooksPath=/dev/null` (git looks for /dev/null/<hook>,
  which never exists: no hook runs, and the command line beats .git/config),
  `-c core.fsmonitor=false`, and every filter and merge driver configured in
  any scope switched off (empty filter commands, `false` as merge driver, so a
  file that needs one is a conflict). The options travel to git's own child
  processes (GIT_CONFIG_PARAMETERS);
- a worker's clone is cleaned before each use (clean_clone): hooks removed,
  .git/config rewritten to what `git init` wrote plus the worker's identity (no
  include, worktree, driver or command settings survive), and the files that
  redirect git elsewhere (commondir, config.worktree, info/attributes, grafts)
  deleted.

The research files are plain text compared by hash, so no driver is lost; a
repository that keeps them in git-lfs is not supported.
"""

import re
import shutil
import subprocess
from pathlib import Path

# Where git looks for hooks: nothing exists under /dev/null, so no hook ever runs.
HOOKS_PATH = "/dev/null"
# Settings every call runs with (over every config file).
SAFE_CONFIG = {"core.hooksPath": HOOKS_PATH, "core.fsmonitor": "false"}
# Configured drivers that run a program: filter.<name>.<key> and merge.<name>.driver.
DRIVER_KEY = re.compile(r"^(filter|merge)\.(.+)\.([a-z]+)$")
# What replaces them: a filter with no command is no filter; `false` makes a driver's merge a conflict.
DRIVER_OFF = {"filter": {"clean": "", "smudge": "", "process": "", "required": "false"},
              "merge": {"driver": "false"}}
# .git/config keys a clean clone keeps (what `git init` writes on Linux and macOS).
CLONE_KEYS = ("core.repositoryformatversion", "core.filemode", "core.bare", "core.logallrefupdates",
              "core.ignorecase", "core.precomposeunicode", "core.symlinks", "extensions.objectformat")
# A kept value is a plain word: true, false, 0, sha1 ...
PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# Files in .git that make git read config, attributes or history from elsewhere.
REDIRECTS = ("commondir", "config.worktree", "info/attributes", "info/grafts")


def safe_config(cwd) -> dict:
    """The -c settings for git run in `cwd`: SAFE_CONFIG plus every driver it would find, off."""
    out = dict(SAFE_CONFIG)
    p = subprocess.run(["git", "config", "--null", "--get-regexp", r"^(filter|merge)\."],
                       cwd=str(cwd), capture_output=True, text=True)
    for item in p.stdout.split("\0"):
        m = DRIVER_KEY.match(item.split("\n", 1)[0])
        if m and "=" not in m.group(2):      # `-c` splits at the first '='; no clone can hold one
            for key, value in DRIVER_OFF[m.group(1)].items():
                out[f"{m.group(1)}.{m.group(2)}.{key}"] = value
    return out


def git_options(cwd) -> list[str]:
    """["-c", "key=value", ...] to put between `git` and its subcommand."""
    return [arg for k, v in safe_config(cwd).items() for arg in ("-c", f"{k}={v}")]


class GitError(RuntimeError):
    """A git command failed: the message is git's own (stderr, one line)."""


def run_git(args, cwd, options=None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(["git", <safe options>, *args], cwd=cwd, **kwargs). options: git_options(cwd)
    computed once by a caller that makes many calls on a repository it keeps clean."""
    opts = git_options(cwd) if options is None else options
    return subprocess.run(["git", *opts, *args], cwd=str(cwd), **kwargs)


def git(cwd, *args, options=None, input=None, env=None, text: bool = True):
    """git's stdout (str, or bytes with text=False); GitError with git's message when it fails."""
    p = run_git(args, cwd, options=options, input=input, env=env, capture_output=True, text=text)
    if p.returncode != 0:
        err = p.stderr if text else p.stderr.decode("utf-8", "replace")
        said = " ".join(line.strip() for line in (err or "").splitlines() if line.strip())
        raise GitError(said[:500] or f"git {args[0]} exited {p.returncode}")
    return p.stdout


def agent_git_env() -> dict:
    """SAFE_CONFIG as environment (GIT_CONFIG_COUNT...): for a program that runs git itself."""
    env = {"GIT_CONFIG_COUNT": str(len(SAFE_CONFIG))}
    for i, (k, v) in enumerate(SAFE_CONFIG.items()):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = k, v
    return env


def clean_clone(path, identity: dict, kept: dict | None = None) -> dict:
    """Make the clone at `path` (one the swarm owns, never the user's repository) hold nothing
    git would run or follow: empty hooks, a config of CLONE_KEYS plus `identity`
    ({"user.name": ..., "user.email": ...}), no redirecting files. `kept`: the CLONE_KEYS values a
    previous call returned (saves reading the config again). ValueError when .git is not a
    plain folder (replaced by a file or link: the clone cannot be trusted and must be rebuilt)."""
    gd = Path(path) / ".git"
    if gd.is_symlink() or not gd.is_dir():
        raise ValueError(f"{gd} is not a plain folder (replaced by a file or a link)")
    hooks = gd / "hooks"
    if hooks.is_symlink() or (hooks.exists() and not hooks.is_dir()):
        hooks.unlink()
    elif hooks.is_dir() and any(hooks.iterdir()):
        shutil.rmtree(hooks)
    hooks.mkdir(exist_ok=True)
    for rel in REDIRECTS:
        f = gd / rel
        if f.is_symlink() or f.is_file():
            f.unlink()
        elif f.is_dir():
            shutil.rmtree(f)
    config = gd / "config"
    if kept is None:
        p = subprocess.run(["git", "config", "--file", str(config), "--null", "--list"],
                           capture_output=True, text=True)   # --file: includes are not followed
        kept = {}
        for item in p.stdout.split("\0"):
            key, _, value = item.partition("\n")
            if key in CLONE_KEYS and PLAIN_VALUE.match(value):
                kept[key] = value
        kept.setdefault("core.repositoryformatversion", "0")
        kept["core.bare"] = "false"
    sections: dict[str, list[str]] = {}
    for key, value in {**kept, **identity}.items():
        section, name = key.rsplit(".", 1)
        sections.setdefault(section, []).append(f"\t{name} = {_quote(value)}\n")
    text = "".join(f"[{s}]\n" + "".join(lines) for s, lines in sections.items())
    if config.is_symlink():
        config.unlink()
    if not config.exists() or config.read_text(errors="replace") != text:
        config.write_text(text)
    return kept


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
