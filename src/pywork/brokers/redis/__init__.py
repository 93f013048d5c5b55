"""The Redis broker: sorted sets per queue and state, one Lua script per operation.

Every operation that changes a job (enqueue, claim, renew, settle, cancel, retry) is one
Lua script, so it is atomic and costs one round trip however many jobs it handles. The
scripts are files of this package, ``scripts/<operation>.lua``, each registered once as
``scripts/prelude.lua`` (the shared helpers) followed by its own text. The storage layout
and the reasons for it are in ``docs/brokers-redis.md``; in short, with
``P = "{prefix}:"`` (the braces are a Cluster hash tag: every key is in one slot)::

    P job:<id>          hash: payload, state, queue, handler, key, mr, attempts, lease,
                        status, error, enq, start, fin, run, seq (times in epoch ms),
                        result, progress (encoded JSON, when stored)
    P ready:<q>         zset id -> enqueue sequence (claim order: oldest first)
    P scheduled:<q>     zset id -> run_at (ms)          P failed:<q>  id -> retry at (ms)
    P running:<q>       zset id -> lease deadline (ms)  P dead:<q>    id -> died at (ms)
    P succeeded:<q>     zset id -> finished at (ms)     P cancelled:<q>  (same)
    P queues            set of queue names               P keys  hash unique key -> id
    P seq               enqueue sequence counter         P wake  pub/sub channel (queue names)
    P done              pub/sub channel: JSON arrays of the ids of finished jobs

Times come from the Redis server clock (``TIME``), so consumers on machines with skewed
clocks agree on lease deadlines and delays; only an absolute ``at=`` comes from the
producer's clock. This module holds only the storage side: the
:class:`~pywork.brokers.front.BrokerFront` checks arguments, encodes, decodes and builds
the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pywork._durations import duration
from pywork.brokers.base import (
    LEASE_EXPIRED,
    Claimed,
    Delivery,
    JobState,
    NewJob,
    Outcome,
    QueueStats,
    StoredJob,
    StoredSchedule,
)
from pywork.brokers.front import BrokerFront, duplicate_id
from pywork.brokers.queries import read_resource
from pywork.cron import ScheduleSpec
from pywork.errors import BrokerError, BrokerUnavailable

try:
    from redis.maint_notifications import MaintNotificationsConfig as _MaintNotificationsConfig
except ImportError:  # redis-py < 7
    _MaintNotificationsConfig = None  # type: ignore[assignment,misc,unused-ignore]

__all__ = ["RedisBroker"]

logger = logging.getLogger("pywork.brokers.redis")

_STATE_ARG = {
    JobState.SUCCEEDED: "succeeded",
    JobState.FAILED: "failed",
    JobState.DEAD: "dead",
    JobState.QUEUED: "queued",
}
_REASONS = {b"cancelled": "cancelled", b"lost": "lost"}
#: Pauses between tries of an idempotent call whose connection failed (about 3.5 s in all).
_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0)
#: Seconds the subscription to finished-job notifications outlives its last waiter
#: (``wait`` looks at the record between two waits: it keeps the subscription).
_DONE_LINGER = 5.0
#: Driver errors meaning the server cannot be reached (BrokerUnavailable).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


@functools.cache
def _lua(name: str) -> str:
    """The text of ``scripts/<name>.lua``."""
    return read_resource(__name__, f"scripts/{name}.lua")


class _Scripts:
    """The Lua scripts, registered on one client (each is the prelude plus its own file;
    redis-py sends it by SHA and loads it again after a ``NOSCRIPT``)."""

    def __init__(self, client: aioredis.Redis) -> None:
        prelude = _lua("prelude")

        def register(name: str) -> AsyncScript:
            return client.register_script(prelude + _lua(name))

        self.enqueue = register("enqueue")
        self.claim = register("claim")
        self.due = register("due")
        self.renew = register("renew")
        self.settle = register("settle")
        self.cancel = register("cancel")
        self.get = register("get")
        self.stats = register("stats")
        self.dead_letters = register("dead_letters")
        self.retry_dead = register("retry_dead")
        self.purge_dead = register("purge_dead")
        self.schedule_get = register("schedule_get")
        self.schedule_put = register("schedule_put")
        self.unschedule = register("unschedule")
        self.schedules = register("schedules")
        self.fire = register("fire")


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000.0)


def _text(value: bytes | None) -> str | None:
    """Stored text (bytes that are not UTF-8, written by something else, shown escaped)."""
    return value.decode(errors="backslashreplace") if value else None


def _stored_job(job_id: str, flat: Sequence[bytes]) -> StoredJob | None:
    """The StoredJob of a job hash's HGETALL reply (None when empty: unknown).

    A record written by something else is reported, never fatal: a missing state reads
    as ``""`` and a field that is not a number as unset, each named in the error.
    """
    if not flat:
        return None
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    get = fields.get
    problems: list[str] = []

    def number(name: bytes) -> int | None:
        value = get(name)
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            shown = value[:50].decode(errors="backslashreplace")
            problems.append(f"field {name.decode()!r} is not a number: {shown!r}")
            return None

    def seconds(name: bytes) -> float | None:
        value = number(name)
        return None if value is None else value / 1000.0

    state = get(b"state")
    if state is None:
        problems.append("no state field")
    error = _text(get(b"error"))
    job = StoredJob(
        id=job_id,
        handler=_text(get(b"handler")) or "",
        queue=_text(get(b"queue")) or "",
        payload=get(b"payload", b""),
        state=_text(state) or "",
        status=number(b"status"),
        attempts=number(b"attempts") or 0,
        error=error,
        enqueued_at=seconds(b"enq") or 0.0,
        started_at=seconds(b"start"),
        finished_at=seconds(b"fin"),
        key=_text(get(b"key")),
        run_at=seconds(b"run"),
        result=get(b"result"),
        progress=get(b"progress"),
    )
    if problems:
        note = f"[bad stored record: {'; '.join(problems)}]"
        job = job._replace(error=f"{error} {note}" if error else note)
    return job


def _parse_claimed(data: bytes) -> list[Claimed]:
    """Split the claim script's reply (see ``scripts/claim.lua``)."""
    claimed = []
    pos, end = 0, len(data)
    while pos < end:
        colon = data.index(b":", pos)
        start = colon + 1
        pos = start + int(data[pos:colon])
        job_id = data[start:pos].decode()
        colon = data.index(b":", pos)
        token = str(int(data[pos:colon]) + 1)
        pos = colon + 1
        colon = data.index(b":", pos)
        attempt = int(data[pos:colon]) + 1
        pos = colon + 1
        colon = data.index(b":", pos)
        start = colon + 1
        pos = start + int(data[pos:colon])
        claimed.append(Claimed(job_id, token, attempt, data[start:pos]))
    return claimed


def _pack(jobs: Sequence[NewJob]) -> bytes:
    """The JSON argument of the enqueue and fire scripts (see ``scripts/enqueue.lua``)."""
    rows = []
    for job in jobs:
        if job.delay is not None:
            when = f"d{_ms(job.delay)}"  # on the server's clock
        elif job.at is not None:
            when = f"a{math.floor(job.at * 1000.0)}"  # the producer's clock
        else:
            when = ""
        mr = "" if job.max_retries is None else str(job.max_retries)
        rows.append([job.id, job.queue, job.payload.decode(), job.handler, job.key or "", mr, when])
    return _encoder.encode(rows)


def _stored_schedule(
    name: str | bytes, declaration: bytes | str, next_run: bytes | int, last_run: bytes | None
) -> StoredSchedule:
    fields = _decoder.decode(declaration)
    return StoredSchedule(
        name=name.decode() if isinstance(name, bytes) else name,
        payload=fields["payload"],
        every=fields["every"],
        cron=fields["cron"],
        timezone=fields["timezone"],
        jitter=fields["jitter"],
        misfire=fields["misfire"],
        next_run_at=int(next_run),
        last_run_at=None if last_run is None else int(last_run),
    )


def _split_url(url: str) -> tuple[str, str]:
    """Return (url for redis-py, prefix), taking ``?prefix=`` out of the query."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "pywork"
    rest = []
    for name, value in query:
        if name == "prefix":
            prefix = value
        else:
            rest.append((name, value))
    if not prefix or any(c in prefix for c in "{}"):
        raise ValueError(
            f"the redis url's prefix must be a non-empty name without braces, got {prefix!r}"
        )
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


class _Waker:
    """One pub/sub subscription per broker, on one connection.

    Its channel ``P wake`` sets `event` when work arrives in a queue of interest. While
    ``wait`` calls are waiting (and :data:`_DONE_LINGER` seconds after), it listens on
    ``P done`` too, where the scripts that finish jobs publish their ids (only while
    someone listens: they check ``PUBSUB NUMSUB`` first), and wakes the waiters of those
    ids. Resubscribes by itself after a disconnect (and then wakes everyone, since
    notifications may have been missed meanwhile).
    """

    def __init__(self, client: aioredis.Redis, channel: str, done_channel: str) -> None:
        self.client = client
        self.channel = channel.encode()
        self.done_channel = done_channel.encode()
        self.event = asyncio.Event()
        self.queues: set[bytes] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # the finished-job side; every (un)subscription is sent under `_control`
        self._control = asyncio.Lock()
        self._pubsub: Any = None  # the live subscription, None while reconnecting
        self._waiters: dict[str, set[asyncio.Event]] = {}  # job id -> its waiters' events
        self._users = 0  # wait_finished calls in progress
        self._wanted = False  # listen on the done channel (now, and after a reconnect)
        self._subscribed = False  # the last done-channel command sent was SUBSCRIBE
        self._sent = 0  # done-channel (un)subscriptions sent on `_pubsub` ...
        self._acked = 0  # ... and confirmed by the server
        self._ready = asyncio.Event()  # subscribed to the done channel, confirmed
        self._generation = 0  # counts the times `_ready` was set
        self._ready_at = 0.0  # when, on the loop's clock
        self._looked: dict[str, int] = {}  # job id -> generation its waiter last looked in
        self._linger: asyncio.TimerHandle | None = None
        self._chores: set[asyncio.Task[None]] = set()

    async def ensure(self, queues: Sequence[str]) -> None:
        """Be subscribed (confirmed by the server) before a claim or wait on `queues`."""
        self.queues.update(q.encode() for q in queues)
        if self._task is not None:
            return
        async with self._lock:
            if self._task is None:
                pubsub = await self._subscribe()  # the first time, errors reach the caller
                self._task = asyncio.create_task(self._run(pubsub), name="pywork-redis-wake")

    async def wait_finished(self, job_id: str, timeout: float) -> None:
        """Return when `job_id` may have finished, or after `timeout` seconds.

        Returns at once (without waiting for a notification) when the done-channel
        subscription was confirmed less than a second ago and after this job's previous
        look: the job may have finished just before it, and the caller looks at the
        record again (once).
        """
        await self.ensure(())
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._users += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    if not self._ready.is_set():
                        # shielded: a send cut short would break the connection
                        await asyncio.shield(self._want_done())
                        await self._ready.wait()
                    fresh = asyncio.get_running_loop().time() - self._ready_at < 1.0
                    if fresh and self._looked.get(job_id) != self._generation:
                        self._looked[job_id] = self._generation
                        return
                    event = asyncio.Event()
                    waiters = self._waiters.setdefault(job_id, set())
                    waiters.add(event)
                    try:
                        await event.wait()
                    finally:
                        waiters.discard(event)
                        if not waiters and self._waiters.get(job_id) is waiters:
                            del self._waiters[job_id]
        finally:
            self._users -= 1
            if not self._users and self._wanted and self._task is not None:
                loop = asyncio.get_running_loop()
                self._linger = loop.call_later(_DONE_LINGER, self._linger_over)

    async def _want_done(self) -> None:
        """Subscribe to the done channel (confirmed later, through `_ready`)."""
        async with self._control:
            self._wanted = True
            pubsub = self._pubsub
            if pubsub is None or self._subscribed:
                return  # a reconnect subscribes, or it is done / under way
            self._subscribed = True
            self._sent += 1
            try:
                await pubsub.subscribe(self.done_channel)
            except Exception as exc:  # the connection failed: _run resubscribes
                logger.debug("redis done-channel subscription failed (%s)", exc)
                if self._pubsub is pubsub:
                    self._subscribed = False
                    self._sent -= 1

    def _linger_over(self) -> None:
        self._linger = None
        task = asyncio.create_task(self._drop_done(), name="pywork-redis-unsubscribe")
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _drop_done(self) -> None:
        """Stop listening on the done channel: nobody waited for `_DONE_LINGER` s."""
        async with self._control:
            if self._users or not self._wanted:
                return
            self._wanted = False
            pubsub = self._pubsub
            if pubsub is None or not self._subscribed:
                return
            self._subscribed = False
            self._ready.clear()
            self._sent += 1
            try:
                await pubsub.unsubscribe(self.done_channel)
            except Exception as exc:  # the connection failed: _run resubscribes
                logger.debug("redis done-channel unsubscription failed (%s)", exc)

    def _on_control(self, message: dict[str, Any]) -> None:
        """Count the server's confirmations of the done channel's (un)subscriptions."""
        if message["channel"] != self.done_channel:
            return
        if message["type"] in ("subscribe", "unsubscribe"):
            self._acked += 1
            if self._acked == self._sent and self._subscribed:
                self._generation += 1
                self._ready_at = asyncio.get_running_loop().time()
                self._looked.clear()
                self._ready.set()

    def _on_done(self, data: bytes) -> None:
        if not self._waiters:
            return
        for job_id in _decoder.decode(data):
            for event in self._waiters.get(job_id, ()):
                event.set()

    def _wake_all(self) -> None:
        self.event.set()
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _subscribe(self) -> Any:
        async with self._control:
            self._pubsub = None
            self._ready.clear()
            self._subscribed = self._wanted
            self._sent = self._acked = 0
            channels = [self.channel]
            if self._subscribed:
                channels.append(self.done_channel)
                self._sent = 1
            pubsub: Any = self.client.pubsub()
            try:
                await pubsub.subscribe(*channels)
                async with asyncio.timeout(10.0):
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is None:
                            continue
                        if message["channel"] == self.done_channel:
                            self._on_control(message)
                        elif message["type"] == "subscribe":
                            break
            except BaseException:
                await pubsub.aclose()
                raise
            self._pubsub = pubsub
            return pubsub

    async def _run(self, pubsub: Any) -> None:
        backoff = 0.05
        while True:
            try:
                if pubsub is None:
                    pubsub = await self._subscribe()
                    self._wake_all()  # we may have missed notifications: look again
                backoff = 0.05
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        self._on_control(message)
                    elif message["channel"] == self.channel:
                        if message["data"] in self.queues:
                            self.event.set()
                    else:
                        self._on_done(message["data"])
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.debug("redis wake-up subscription lost (%s); resubscribing", exc)
            except Exception:  # never let wake-ups die: wait() would fall back to timeouts
                logger.exception("redis wake-up subscription failed; resubscribing")
            finally:
                if pubsub is not None:
                    if self._pubsub is pubsub:
                        self._pubsub = None
                        self._ready.clear()
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                    pubsub = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        tasks = [*self._chores]
        if self._task is not None:
            tasks.append(self._task)
            self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class RedisBroker(BrokerFront):
    """A durable broker on Redis >= 7 (redis-py's asyncio client).

    Use :func:`pywork.connect` with ``redis://host:port/db`` (``rediss://`` for TLS); the
    optional ``?prefix=NAME`` query parameter namespaces the keys (default ``pywork``);
    other query parameters go to redis-py (e.g. ``socket_timeout``).

    Args:
        client: a ``redis.asyncio.Redis`` (bytes responses, i.e. ``decode_responses=False``).
        prefix: the key namespace; keys are ``{prefix}:...`` (a Cluster hash tag).
        retention: seconds the records of succeeded and cancelled jobs are kept.
        url: the URL shown in logs (defaults to a description of the client).
        owns_client: close `client` in :meth:`close`.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "pywork",
        retention: float | timedelta = 3600.0,
        url: str | None = None,
        owns_client: bool = False,
    ) -> None:
        if not isinstance(client, aioredis.Redis):
            raise TypeError(f"client must be a redis.asyncio.Redis, got {client!r}")
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{}"):
            raise ValueError(f"prefix must be a non-empty str without braces, got {prefix!r}")
        super().__init__(url or f"redis://(client {client!r})?prefix={prefix}", retention=retention)
        self.prefix = prefix
        self._client = client
        self._owns_client = owns_client
        self._p = f"{{{prefix}}}:"
        self._keys = [f"{self._p}seq"]
        self._retention_ms = _ms(self.retention)
        self._waker = _Waker(client, f"{self._p}wake", f"{self._p}done")
        self._scripts = _Scripts(client)

    @classmethod
    async def from_url(cls, url: str, *, retention: float | timedelta = 3600.0) -> RedisBroker:
        """Connect to the Redis server at `url` and check that it answers.

        Args:
            url: ``redis://[user:password@]host:port/db[?prefix=NAME&...]`` or ``rediss://``.
            retention: seconds the records of succeeded and cancelled jobs are kept.

        Raises:
            ValueError: the url or retention is invalid.
            BrokerUnavailable: the server cannot be reached (the message names host and
                port, never the password).
        """
        if not isinstance(url, str) or not url.lower().startswith(("redis://", "rediss://")):
            raise ValueError(f"a redis broker url starts with redis:// or rediss://, got {url!r}")
        retention = duration(retention, "retention")
        driver_url, prefix = _split_url(url)
        # Commands are retried only when the server refused them while loading its data
        # after a restart (nothing ran). Never on a lost connection: a script whose reply
        # was lost may have run, and running claim or settle twice is not harmless.
        # Connections the server closed (a restart) are replaced when taken from the pool;
        # other errors reach the caller, and the consumer retries with backoff.
        options: dict[str, Any] = {}
        if _MaintNotificationsConfig is not None:
            # redis-py >= 7 skips its check for connections the server closed while they
            # sat in the pool when these notifications are on ("auto" counts as on)
            options["maint_notifications_config"] = _MaintNotificationsConfig(enabled=False)
        client = aioredis.Redis.from_url(
            driver_url,
            retry=Retry(
                ExponentialBackoff(cap=1.0, base=0.02), 30, supported_errors=(BusyLoadingError,)
            ),
            retry_on_error=[],
            socket_connect_timeout=5.0,
            socket_keepalive=True,
            decode_responses=False,
            protocol=2,
            **options,
        )
        broker = cls(client, prefix=prefix, retention=retention, url=url, owns_client=True)
        try:
            await broker.open()
        except BaseException:
            await broker.close()
            raise
        return broker

    # the driver's errors -------------------------------------------------------------
    def _address(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        if kwargs.get("path"):
            return f"unix:{kwargs['path']}"
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

    def _map_error(self, exc: Exception) -> BrokerError | None:
        if not isinstance(exc, RedisError | OSError):
            return None
        reason = str(exc) or type(exc).__name__
        password = self._client.connection_pool.connection_kwargs.get("password")
        if password:
            for secret in (password, quote(password, safe="")):
                reason = reason.replace(secret, "***")
        if isinstance(exc, _UNREACHABLE):
            return BrokerUnavailable(f"cannot reach Redis at {self._address()} ({reason})")
        return BrokerError(reason)

    async def _run(
        self,
        script: AsyncScript,
        args: list[Any],
        *,
        idempotent: bool = False,
        retry: list[Any] | None = None,
    ) -> Any:
        """Run a script. An idempotent one is retried (with `retry` as its arguments, if
        given) over a few seconds when the connection fails: its reply may have been lost
        after it ran (a server restart)."""
        full = [self._p, self._retention_ms, *args]
        if not idempotent:
            return await script(keys=self._keys, args=full)
        for delay in _RETRY_DELAYS:
            try:
                return await script(keys=self._keys, args=full)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if self._closed:
                    raise
                logger.debug("redis call failed (%s); retrying in %.2fs", exc, delay)
            await asyncio.sleep(delay)
            if retry is not None:
                full = [self._p, self._retention_ms, *retry]
        return await script(keys=self._keys, args=full)

    # lifecycle ---------------------------------------------------------------------
    async def _open(self) -> None:
        await self._client.ping()

    async def _close(self) -> None:
        """Stop the wake-up subscription and close the connections (if owned)."""
        await self._waker.close()
        if self._owns_client:
            await self._client.aclose()

    # producer side -------------------------------------------------------------------
    async def _store(self, jobs: list[NewJob]) -> list[str]:
        packed = _pack(jobs)
        reply = await self._run(
            self._scripts.enqueue, [packed, 1], idempotent=True, retry=[packed, 0]
        )
        ids: list[str] | dict[str, str] = _decoder.decode(reply)
        if isinstance(ids, dict):
            raise duplicate_id(ids["duplicate"])
        return ids

    async def _get(self, job_id: str) -> StoredJob | None:
        return _stored_job(job_id, await self._run(self._scripts.get, [job_id]))

    async def _cancel(self, job_id: str) -> bool:
        return bool(await self._run(self._scripts.cancel, [job_id]))

    async def _stats(self) -> dict[str, QueueStats]:
        flat = await self._run(self._scripts.stats, [])
        return {
            flat[i].decode(errors="backslashreplace"): QueueStats(
                *(int(n) for n in flat[i + 1 : i + 8])
            )
            for i in range(0, len(flat), 8)
        }

    async def _dead_letters(self, queue: str | None, limit: int) -> list[StoredJob]:
        reply = await self._run(self._scripts.dead_letters, [limit, *([queue] if queue else [])])
        ids = (item[0].decode(errors="backslashreplace") for item in reply)
        rows = (_stored_job(job_id, item[1]) for job_id, item in zip(ids, reply, strict=True))
        return [row for row in rows if row is not None]

    async def _retry_dead(self, job_id: str) -> bool:
        return bool(await self._run(self._scripts.retry_dead, [job_id]))

    async def _purge_dead(self, queue: str | None) -> int:
        return int(await self._run(self._scripts.purge_dead, [queue] if queue else []))

    # consumer side -------------------------------------------------------------------
    async def _claim(
        self, queues: list[str], limit: int, lease: float, max_retries: int
    ) -> list[Claimed]:
        # subscribed before the claim, so that no wake-up between it and a wait is missed
        await self._waker.ensure(queues)
        if limit == 0:
            return []
        claim_id = os.urandom(12).hex()
        args = [claim_id, limit, _ms(lease), max_retries, *LEASE_EXPIRED, len(queues), *queues]
        data: bytes = await self._run(self._scripts.claim, args, idempotent=True)
        return _parse_claimed(data)

    async def _wait_for_work(self, queues: list[str], timeout: float) -> None:
        """Sleep on a pub/sub notification, bounded by the earliest due time of the
        queues' scheduled and failed jobs and leases."""
        await self._waker.ensure(queues)
        event = self._waker.event
        if event.is_set():
            event.clear()
            return
        due = int(await self._run(self._scripts.due, [len(queues), *queues]))
        if due == 0:
            return
        if due > 0:
            timeout = min(timeout, due / 1000.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
            event.clear()

    async def _wait_for_finish(self, job_id: str, timeout: float) -> None:
        """Sleep on the ``P done`` notification of `job_id` (see :class:`_Waker`)."""
        await self._waker.wait_finished(job_id, timeout)

    async def _renew(
        self, deliveries: Sequence[Delivery], lease: float, progress: Mapping[str, bytes]
    ) -> dict[str, str]:
        """A lease is "lost" once it was revoked (it expired and a claim took the job back)
        or the record is gone. A lease that ended by its holder's own settle is not
        reported: nothing was lost, its consumer just has not seen the settle's reply yet.
        The `progress` reports travel in the same script call, stored where the lease is
        still held."""
        packed = _encoder.encode([part for d in deliveries for part in (d.id, d.token)])
        args: list[Any] = [_ms(lease), packed]
        for job_id, report in progress.items():
            args += (job_id, report)
        flat = await self._run(self._scripts.renew, args, idempotent=True)
        return {flat[i].decode(): _REASONS[flat[i + 1]] for i in range(0, len(flat), 2)}

    async def _settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        rows: list[str | int] = []
        extra: list[str | bytes] = []  # "<n>r" / "<n>p", value: the n-th one's result / progress
        for n, outcome in enumerate(outcomes, 1):
            if outcome.result is not None:
                extra += (f"{n}r", outcome.result)
            if outcome.progress is not None:
                extra += (f"{n}p", outcome.progress)
            rows += (
                outcome.delivery.id,
                outcome.delivery.token,
                _STATE_ARG[outcome.state],
                "" if outcome.status is None else str(int(outcome.status)),
                outcome.error or "",
                _ms(outcome.retry_in or 0.0),
            )
        packed = _encoder.encode(rows)
        applied: bytes = await self._run(self._scripts.settle, [packed, *extra], idempotent=True)
        return [flag == 49 for flag in applied]  # b"1"

    # cluster schedules (contract §9) ---------------------------------------------------
    async def _declare_schedule(
        self, name: str, payload: bytes, spec: ScheduleSpec, first_run: int
    ) -> StoredSchedule:
        declaration = _encoder.encode(
            {
                "payload": payload.decode(),
                "every": spec.every,
                "cron": spec.cron,
                "timezone": spec.timezone,
                "jitter": spec.jitter,
                "misfire": spec.misfire,
            }
        )
        while True:  # compare-and-set against a concurrent redeclaration
            old, old_next, last = await self._run(self._scripts.schedule_get, [name])
            next_run = first_run
            if old is not None and old_next is not None:
                stored = _stored_schedule(name, old, old_next, None)
                old_spec = ScheduleSpec(
                    stored.every, stored.cron, stored.timezone, stored.jitter, stored.misfire
                )
                if spec.same_timing(old_spec):
                    next_run = int(old_next)
            args = [name, old or "", old_next or "", declaration, next_run]
            if await self._run(self._scripts.schedule_put, args):
                return _stored_schedule(name, declaration, next_run, last)

    async def _unschedule(self, name: str) -> bool:
        return bool(await self._run(self._scripts.unschedule, [name]))

    async def _schedules(self) -> list[StoredSchedule]:
        reply = await self._run(self._scripts.schedules, [""])
        return [_stored_schedule(*row) for row in reply[1:]]

    async def _due_schedules(self, at: int) -> tuple[list[StoredSchedule], int | None]:
        reply = await self._run(self._scripts.schedules, [at])
        later = reply[0]
        return [_stored_schedule(*row) for row in reply[1:]], (int(later) if later else None)

    async def _fire(
        self, name: str, expected: int, next_run_at: int, last_run_at: int, jobs: list[NewJob]
    ) -> bool:
        args = [name, expected, next_run_at, last_run_at, _pack(jobs)]
        return bool(await self._run(self._scripts.fire, args))
