"""Secrets: which variables and values are secret, and their redaction.

One rule for the whole swarm: a trial's environment drops what is_secret() says
(worker/runner.py), a worker process drops it from its own environment at start
(scrub_environ()), the journal stores and hands out config-carrying events through
redact() (journal/backend.py: so journals written before this rule print no
password either), and an agent command gets an environment without the swarm's
own credentials (agent_env()).
"""

import os
import re

# Names that are never passed on, even when given explicitly: credentials and the journal URL.
SECRET_NAME = re.compile(r"(^ANTHROPIC_|_TOKEN$|_KEY$|SECRET|PASSWORD|PASSWD|^SWARM_JOURNAL$|^REDIS)",
                         re.IGNORECASE)
# A URL carrying a password (redis://:pw@host, https://user:pw@host): group 2 is the password.
CREDENTIAL_URL = re.compile(r"(://[^/\s@]*:)([^@/\s]*)(@)")
# A password given as a URL query parameter (redis://host/0?password=pw): group 2 is the value.
CREDENTIAL_QUERY = re.compile(r"([?&](?:password|passwd|pwd|token|secret)=)([^&#\s]*)", re.IGNORECASE)
# What a redacted secret reads as.
MASK = "***"
# Variables of the swarm's own credentials, by name, on top of SECRET_NAME's rule: the journal,
# Redis and the Ray cluster's token. An agent command never needs them (agent_env()).
SWARM_CREDENTIAL = re.compile(r"^(SWARM_|REDIS|RAY_)", re.IGNORECASE)
# Ray's own variables stay in a worker process: it is part of the cluster (a reconnect reads them).
RUNTIME_KEEP = re.compile(r"^RAY_")


def is_secret(name: str, value="") -> bool:
    """A variable (or config key) whose name looks like a credential, or whose value carries one."""
    value = value if isinstance(value, str) else ""
    return bool(SECRET_NAME.search(str(name)) or CREDENTIAL_URL.search(value)
                or CREDENTIAL_QUERY.search(value))


def redact_text(text: str) -> str:
    """Passwords inside URLs replaced by ***; user, host, port and database stay readable."""
    if "://" not in text and "=" not in text:
        return text
    text = CREDENTIAL_URL.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    return CREDENTIAL_QUERY.sub(lambda m: m.group(1) + MASK, text)


def redact(obj):
    """A copy of JSON-like data with secrets masked: the value of every key whose name looks
    secret, and passwords inside URLs in any string."""
    if isinstance(obj, dict):
        return {k: (MASK if obj[k] not in (None, "") and SECRET_NAME.search(str(k)) else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def secrets_in(obj) -> set:
    """The literal secrets JSON-like data holds (what redact() would mask): passwords inside URLs
    and the string values of secret-named keys. A reader that saw one masks it everywhere after
    (mask_literals): an older journal's password may also stand in free text, a lab note, a log."""
    found = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, str) and v and SECRET_NAME.search(str(k)):
                found.add(v)
            else:
                found |= secrets_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found |= secrets_in(v)
    elif isinstance(obj, str) and ("://" in obj or "=" in obj):
        found |= {m.group(2) for m in CREDENTIAL_URL.finditer(obj) if m.group(2)}
        found |= {m.group(2) for m in CREDENTIAL_QUERY.finditer(obj) if m.group(2)}
    return {f for f in found if f != MASK}


def mask_literals(obj, literals):
    """A copy of JSON-like data with every occurrence of each literal string replaced by ***."""
    if not literals:
        return obj
    if isinstance(obj, dict):
        return {k: mask_literals(v, literals) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_literals(v, literals) for v in obj]
    if isinstance(obj, str):
        for lit in literals:
            if lit in obj:
                obj = obj.replace(lit, MASK)
    return obj


def scrub_environ(environ=None) -> list[str]:
    """Remove secret variables from this process's own environment (default os.environ), so
    nothing it starts (git, a smoke run, a child it forgets to clean) inherits them. Ray's own
    variables stay. Returns the names removed."""
    environ = os.environ if environ is None else environ
    gone = [k for k, v in list(environ.items()) if is_secret(k, v) and not RUNTIME_KEEP.match(k)]
    for k in gone:
        del environ[k]
    return sorted(gone)


def agent_env(environ=None) -> dict:
    """An agent command's environment: everything of `environ` (default os.environ) but the swarm's
    own credentials -- the journal (SWARM_JOURNAL), Redis, the Ray token, and any variable whose
    value is a URL with a password. The command's own login stays (ANTHROPIC_API_KEY for
    `claude -p`, OPENAI_API_KEY for Codex, ...): it is the user's tool, run as the user."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items()
            if not ((SWARM_CREDENTIAL.match(k) and is_secret(k)) or CREDENTIAL_URL.search(v)
                    or CREDENTIAL_QUERY.search(v))}
