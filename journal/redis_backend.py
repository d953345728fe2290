"""Redis journal (the swarm's): one stream per campaign, appends idempotent by event id.

Keys (prefix per campaign):
  swarm:<campaign>:events   stream, one entry per event, field "e" = the event's JSON
  swarm:<campaign>:ids      hash event id -> stream id (what makes a retried append a no-op)
  swarm:campaigns           sorted set campaign -> last append time (ms), for listing
A Lua script checks the id and XADDs atomically, so a client that lost the reply
and sends the same event again gets the first copy's position back. The stream
gives one order to every reader. A lost connection is retried briefly (redis-py's
backoff, ~9 s in all), then raises JournalUnavailable: the writers (coordinator,
workers) keep their events and retry them in order for up to several minutes.
"""

import json
import re
import urllib.parse

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import AuthenticationError, ConnectionError, NoScriptError, RedisError, TimeoutError
from redis.retry import Retry

from safety.redact import redact_text

from .backend import FOLLOW_BLOCK_S, PAGE_SIZE, Journal, JournalError, JournalUnavailable
from .events import Event, malformed

# Key namespace shared by all campaigns of a swarm.
KEY_PREFIX = "swarm"
# Reconnect attempts per command and their backoff: ~9 s in all, then JournalUnavailable
# (the writers ride out longer outages themselves: coordinator/recorder.py, worker/worker.py).
RETRIES = 8
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 2.0
# A host that does not answer fails the open after this long.
CONNECT_TIMEOUT_S = 5.0
# Reads may block FOLLOW_BLOCK_S inside Redis; a reply later than this means a dead link.
SOCKET_TIMEOUT_S = FOLLOW_BLOCK_S + 10.0
# XRANGE "(" exclusive ranges and ZADD GT arrived in Redis 6.2.
MIN_REDIS = (6, 2)
STREAM_ID_RE = re.compile(r"^\d+-\d+$")

# KEYS: events stream, ids hash, campaigns zset.  ARGV: event id, event JSON, campaign.
# Returns the stream id of the event (of its first copy when the id was seen before).
APPEND_LUA = """
local pos = redis.call('HGET', KEYS[2], ARGV[1])
if pos then return pos end
pos = redis.call('XADD', KEYS[1], '*', 'e', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], pos)
redis.call('ZADD', KEYS[3], 'GT', tonumber(string.match(pos, '^%d+')), ARGV[3])
return pos
"""
# KEYS: events stream.  ARGV: start ('-' or '(id'), count.  A page as three strings:
# stream ids, JSON byte lengths, and the JSONs joined by commas (a JSON array once
# bracketed). One reply and one json.loads per page instead of thousands of nested
# replies: that is what makes a Python client replay 100k events in seconds.
PAGE_LUA = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local ids, lens, docs = {}, {}, {}
for i, e in ipairs(entries) do
  local doc = ''
  local f = e[2]
  for k = 1, #f, 2 do
    if f[k] == 'e' then doc = f[k + 1] end
  end
  ids[i], lens[i], docs[i] = e[1], #doc, doc
end
return {table.concat(ids, ' '), table.concat(lens, ' '), table.concat(docs, ',')}
"""


class RedisJournal(Journal):

    def __init__(self, url: str, campaign=None):
        self.campaign = campaign
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or 6379
        except ValueError:
            raise JournalError(f"bad Redis URL {redact_text(url)}: the port must be a number "
                               "(redis://:PASSWORD@host:port/db)") from None
        self.where = f"{parts.hostname or 'localhost'}:{port}"
        self.url = redact_text(url)
        self._password_given = parts.password is not None
        options = dict(socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
                       socket_keepalive=True)
        # First a probe that does not retry: a wrong password or host fails now, clearly.
        try:
            probe = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
        except ValueError as e:
            raise JournalError(f"bad Redis URL {self.url} ({e}): use redis://:PASSWORD@host:port/db") from e
        try:
            version = probe.info("server").get("redis_version", "0")
        except RedisError as e:
            raise self._explain(e) from e
        finally:
            probe.close()
        if tuple(int(x) for x in re.findall(r"\d+", str(version))[:2]) < MIN_REDIS:
            raise JournalError(f"Redis {version} at {self.where} is too old: the journal needs "
                               f"Redis >= {MIN_REDIS[0]}.{MIN_REDIS[1]}")
        self._r = redis.Redis.from_url(
            url, retry=Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), RETRIES),
            **options)
        self._scripts = {APPEND_LUA: None, PAGE_LUA: None}  # script -> sha once loaded

    def _explain(self, e: Exception) -> JournalError:
        if isinstance(e, AuthenticationError) and not self._password_given:
            return JournalError(f"Redis at {self.where} requires a password: put it in the URL, "
                                "redis://:PASSWORD@host:port/db")
        if isinstance(e, AuthenticationError):
            return JournalError(f"Redis at {self.where}: authentication failed: check the password "
                                "in redis://:PASSWORD@host:port/db")
        if isinstance(e, (ConnectionError, TimeoutError)):
            return JournalUnavailable(f"cannot reach Redis at {self.where} ({e}): check that redis-server "
                                "runs there, the host and port in the URL, and the firewall")
        return JournalError(f"Redis at {self.where}: {e}")

    def _script(self, script, *args):
        """EVALSHA, loading the script first time and again after a Redis restart."""
        sha = self._scripts[script]
        if sha is not None:
            try:
                return self._r.execute_command("EVALSHA", sha, *args)
            except NoScriptError:
                pass
        self._scripts[script] = sha = self._r.script_load(script)
        return self._r.execute_command("EVALSHA", sha, *args)

    def _keys(self):
        """(events stream, ids hash, campaigns set) of the current campaign."""
        base = f"{KEY_PREFIX}:{self.campaign}"
        return f"{base}:events", f"{base}:ids", f"{KEY_PREFIX}:campaigns"

    # -- backend primitives ----------------------------------------------------
    def _append(self, event: Event) -> str:
        events, ids, campaigns = self._keys()
        try:
            pos = self._script(APPEND_LUA, 3, events, ids, campaigns, event.id, event.to_json(), event.campaign)
        except RedisError as e:
            raise self._explain(e) from e
        return pos.decode()

    def _page(self, after, count):
        start = "-" if after is None else "(" + _check_pos(after)
        try:
            ids, lens, docs = self._script(PAGE_LUA, 1, self._keys()[0], start, count)
        except RedisError as e:
            raise self._explain(e) from e
        ids = ids.decode().split()
        try:
            dicts = json.loads(b"[" + docs + b"]")
            if len(dicts) == len(ids):
                return [(sid, Event.from_dict(d)) for sid, d in zip(ids, dicts, strict=True)]
        except ValueError:
            pass
        # some entry is not an event (XADDed by hand?): take them one by one
        page, offset = [], 0
        for sid, n in zip(ids, lens.split(), strict=True):
            n = int(n)
            page.append(_decode(sid, docs[offset:offset + n]))
            offset += n + 1
        return page

    def _poll(self, after, wait):
        page = self._page(after, PAGE_SIZE)
        block = int(wait * 1000)
        if page or block < 1:  # BLOCK 0 would mean "forever"
            return page
        try:
            # wait for the next entry, then read from `after` again the fast way
            self._r.xread({self._keys()[0]: after or "0-0"}, count=1, block=block)
        except RedisError as e:
            raise self._explain(e) from e
        return self._page(after, PAGE_SIZE)

    def campaigns(self):
        try:
            return [c.decode() for c in self._r.zrevrange(self._keys()[2], 0, -1)]
        except RedisError as e:
            raise self._explain(e) from e

    def close(self):
        self._r.close()


def _check_pos(pos: str) -> str:
    if not isinstance(pos, str) or not STREAM_ID_RE.match(pos):
        raise JournalError(f"bad position {pos!r} for a Redis journal (a stream id like 1712345678901-0)")
    return pos


def _decode(pos: str, raw: bytes):
    try:
        return pos, Event.from_json(raw)
    except ValueError as e:  # an entry someone XADDed by hand
        return pos, malformed(raw, str(e), pos)
