"""S3Source: the objects under an S3 prefix, as messages (extra ``pywork[s3]``).

Built on ``aiobotocore``. Any number of consumers share a prefix; each object is
claimed by one of them at a time with a **claim marker**, a small object at
``claims_prefix + key`` (outside `prefix`, so it is never a message itself):

- **claim**: ``PutObject`` of the marker with ``If-None-Match: *``: atomic, exactly
  one consumer creates it. The marker holds ``{"owner", "attempt", "hold"}``;
- **lease**: a marker is valid for ``hold`` seconds after its ``Last-Modified``, judged
  on the server's clock (the ``Date`` of the response), so consumers' clocks need not
  agree; a held claim gets :data:`CLOCK_RESOLUTION` more, as S3 times are whole seconds.
  The holder renews it every ``lease / 3`` s by rewriting it with ``If-Match: <its
  ETag>``; a consumer that died stops renewing and, once the marker expired, another
  takes it over with ``If-Match: <the stale ETag>`` (atomic too) and ``attempt + 1``;
- **ack**: delete the object, then the marker (``If-Match``);
- **nack(delay)**: rewrite the marker as released for `delay` seconds (owner ``""``); the
  next claim after that counts ``attempt + 1``;
- **dead letter**: copy the object to ``prefix + "dead/" + key[len(prefix):]`` with
  ``reason`` (URL-quoted, at most 1024 characters) in its user metadata, delete the
  object, then the marker. ``dead/`` is never consumed.

Listing pages through the prefix with continuation tokens (1000 keys a page, shuffled
so that consumers rarely race for the same key); a pass that ends starts over after
``poll_interval`` seconds when it found nothing to claim. Keys seen claimed by others
are skipped until their marker can expire. Objects come in no particular order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections import deque
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from pywork.sources.base import Message

try:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session
    from botocore.exceptions import ClientError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('S3Source needs the aiobotocore package: pip install "pywork[s3]"') from exc

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ["DEAD", "REASON", "S3Message", "S3Source"]

#: The folder under `prefix` that holds dead letters.
DEAD = "dead/"
#: The user-metadata key of a dead letter's reason.
REASON = "reason"
#: Keys listed per page.
PAGE_SIZE = 1000
#: The share of the lease after which a settle checks the claim is still held.
SAFE_SHARE = 0.8
#: Seconds added to a held claim's lease before another consumer may take it over:
#: ``Last-Modified`` and ``Date`` have one-second resolution.
CLOCK_RESOLUTION = 1.0

_logger = logging.getLogger("pywork.sources.s3")
_decoder = msgspec.json.Decoder()
_LOST = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "412", "409")


def decode(payload: bytes) -> Any:
    """The JSON-decoded body, or the bytes themselves when they are not JSON."""
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError:
        return payload


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _server_age(response: Any) -> float:
    """Seconds since the object's Last-Modified, on the server's clock."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    modified: datetime = response["LastModified"]
    try:
        now = parsedate_to_datetime(headers["date"])
    except (KeyError, TypeError, ValueError):
        return time.time() - modified.timestamp()
    return (now - modified).total_seconds()


class S3Message:
    """An object claimed by an :class:`S3Source`.

    Attributes:
        id: the object key; a redelivery keeps it.
        data: the JSON-decoded body, or bytes.
        attempt: 1 on the first claim; each claim after a nack or an expired claim
            counts one more.
        metadata: the object's user metadata.
    """

    __slots__ = (
        "_delivered",
        "_etag",
        "_lock",
        "_lost",
        "_renewed_at",
        "_settled",
        "_source",
        "attempt",
        "data",
        "id",
        "metadata",
    )

    def __init__(
        self,
        source: S3Source,
        key: str,
        data: Any,
        attempt: int,
        etag: str,
        metadata: dict[str, str],
        renewed_at: float,
    ) -> None:
        self._source = source
        self.id = key
        self.data = data
        self.attempt = attempt
        self.metadata = metadata
        self._etag = etag  # of our claim marker
        self._renewed_at = renewed_at  # monotonic time the marker was last written (before)
        self._lock = asyncio.Lock()  # renewals and settles of the marker, one at a time
        self._lost = False
        self._settled = False
        self._delivered = False

    async def ack(self) -> None:
        """Delete the object (and its claim marker)."""
        await self._source._settle(self, "ack")

    async def nack(self, delay: float | None = None) -> None:
        """Release the claim for `delay` seconds (None or 0: at once); the object stays."""
        await self._source._settle(self, "nack", delay=delay or 0.0)

    def __repr__(self) -> str:
        return f"<S3Message {self.id!r} attempt={self.attempt}>"


class S3Source:
    """The objects under `prefix` in `bucket`, each claimed by one consumer at a time.

    Args:
        bucket: the bucket name.
        prefix: the key prefix of the messages, such as ``"jobs/"`` (not empty: claim
            markers must live outside it).
        endpoint_url: the S3 endpoint (None: AWS's, from the usual configuration).
        lease: seconds a claim stays valid without renewal (renewed every ``lease / 3`` s).
        claims_prefix: where claim markers go (``claims_prefix + key``); must not be under
            `prefix`.
        prefetch: objects claimed ahead of the consumer's demand.
        poll_interval: seconds between listing passes that found nothing to claim.
        region_name: the region to sign for (None: from the AWS configuration, else
            ``us-east-1``).

    Credentials come from the usual AWS chain (environment, config files). Iterating
    never ends by itself; :meth:`close` ends it and releases the claims it holds.

    Raises:
        ValueError: an argument is invalid.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None = None,
        lease: float | timedelta = 30.0,
        claims_prefix: str = ".pywork-claims/",
        prefetch: int = 16,
        poll_interval: float | timedelta = 1.0,
        region_name: str | None = None,
    ) -> None:
        if not isinstance(bucket, str) or not bucket:
            raise ValueError(f"bucket must be a non-empty str, got {bucket!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(
                f"prefix must be a non-empty str such as 'jobs/', got {prefix!r} "
                "(claim markers must live outside it)"
            )
        if not isinstance(claims_prefix, str) or not claims_prefix:
            raise ValueError(f"claims_prefix must be a non-empty str, got {claims_prefix!r}")
        if claims_prefix.startswith(prefix) or prefix.startswith(claims_prefix):
            raise ValueError(
                f"claims_prefix {claims_prefix!r} and prefix {prefix!r} must not contain "
                "one another"
            )
        self.lease = _seconds(lease, "lease")
        if self.lease <= 0:
            raise ValueError(f"lease must be > 0, got {lease!r}")
        self.poll_interval = _seconds(poll_interval, "poll_interval")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.claims_prefix = claims_prefix
        self.prefetch = prefetch
        self.region_name = region_name
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._client: S3Client | None = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._opening: asyncio.Lock | None = None
        self._ready: asyncio.Queue[S3Message | BaseException] | None = None
        self._want: asyncio.Event | None = None
        self._held: dict[str, S3Message] = {}  # claimed, not settled
        self._skip: dict[str, float] = {}  # key -> monotonic time its marker may expire
        self._page: deque[str] = deque()
        self._token: str | None = None  # continuation of the current pass
        self._at_end = False  # the current pass listed its last page
        self._pass_claimed = 0  # objects claimed during the current pass
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # iteration ------------------------------------------------------------------
    def __aiter__(self) -> S3Source:
        return self

    async def __anext__(self) -> S3Message:
        """The next claimed object (waits for one); StopAsyncIteration once closed."""
        if self._closed:
            raise StopAsyncIteration
        await self._open()
        assert self._ready is not None and self._want is not None
        item = await self._ready.get()
        self._want.set()
        if isinstance(item, BaseException):
            if isinstance(item, StopAsyncIteration):
                self._ready.put_nowait(item)
            raise item
        item._delivered = True
        return item

    async def _open(self) -> None:
        if self._client is not None:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._client is not None or self._closed:
                return
            session = get_session()
            region = self.region_name or session.get_config_variable("region") or "us-east-1"
            config = AioConfig(max_pool_connections=max(10, 2 * self.prefetch + 4))
            stack = contextlib.AsyncExitStack()
            self._client = await stack.enter_async_context(
                session.create_client(
                    "s3", endpoint_url=self.endpoint_url, region_name=region, config=config
                )
            )
            self._exit = stack
            self._ready = asyncio.Queue()
            self._want = asyncio.Event()
            self._want.set()
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._claim_loop(), name=f"pywork-s3-claim-{self.prefix}"),
                loop.create_task(self._renew_loop(), name=f"pywork-s3-renew-{self.prefix}"),
            ]

    # claiming -------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        assert self._ready is not None and self._want is not None
        failures = 0
        while True:
            room = self.prefetch - self._ready.qsize()
            if room <= 0:
                self._want.clear()
                await self._want.wait()
                continue
            error: BaseException | None = None
            try:
                keys = await self._candidates(room)
            except Exception as exc:  # S3 unreachable or refusing: reported, then retried
                keys, error = [], exc
            if not keys and error is None:
                await asyncio.sleep(self.poll_interval)
                continue
            results = await asyncio.gather(
                *(self._claim(key) for key in keys), return_exceptions=True
            )
            for result in results:
                if isinstance(result, S3Message):
                    self._pass_claimed += 1
                    self._ready.put_nowait(result)
                elif isinstance(result, Exception) and error is None:
                    error = result
                elif isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result
            if error is None:
                failures = 0
                continue
            failures += 1
            self._ready.put_nowait(error)  # consume_source logs it and asks again
            await asyncio.sleep(min(2.0, 0.05 * 2**failures))

    async def _candidates(self, n: int) -> list[str]:
        """Up to `n` keys worth trying to claim; empty when a whole pass claimed nothing."""
        keys: list[str] = []
        now = time.monotonic()
        dead = self.prefix + DEAD
        while len(keys) < n:
            if not self._page:
                if self._at_end:
                    if keys:
                        return keys
                    idle = self._pass_claimed == 0
                    self._at_end, self._pass_claimed = False, 0
                    if idle:
                        return keys  # the caller waits poll_interval before the next pass
                await self._list_page()
                continue
            key = self._page.popleft()
            if key.startswith(dead) or key.endswith("/") or key in self._held:
                continue
            until = self._skip.get(key)
            if until is not None:
                if until > now:
                    continue
                del self._skip[key]
            keys.append(key)
        return keys

    async def _list_page(self) -> None:
        """List the next page of the pass (the first one when the last pass ended)."""
        assert self._client is not None
        if self._token is None:
            response = await self._client.list_objects_v2(
                Bucket=self.bucket, Prefix=self.prefix, MaxKeys=PAGE_SIZE
            )
        else:
            response = await self._client.list_objects_v2(
                Bucket=self.bucket,
                Prefix=self.prefix,
                MaxKeys=PAGE_SIZE,
                ContinuationToken=self._token,
            )
        page = [item["Key"] for item in response.get("Contents", ())]
        random.shuffle(page)
        self._page.extend(page)
        truncated = response.get("IsTruncated", False)
        self._token = response.get("NextContinuationToken") if truncated else None
        self._at_end = self._token is None
        if len(self._skip) > 10 * PAGE_SIZE:  # forget keys long gone
            now = time.monotonic()
            self._skip = {k: t for k, t in self._skip.items() if t > now}

    def _marker(self, attempt: int, hold: float, owner: str | None = None) -> bytes:
        owner = self.owner if owner is None else owner
        return json.dumps({"owner": owner, "attempt": attempt, "hold": hold}).encode()

    async def _claim(self, key: str) -> S3Message | None:
        """Claim `key` (a new marker, or an expired one taken over); None if not ours."""
        assert self._client is not None
        client, marker = self._client, self.claims_prefix + key
        started = time.monotonic()
        attempt = 1
        try:
            put = await client.put_object(
                Bucket=self.bucket,
                Key=marker,
                Body=self._marker(1, self.lease),
                IfNoneMatch="*",
                ContentType="application/json",
            )
        except ClientError as exc:
            if _code(exc) not in _LOST:
                raise
            taken = await self._take_over(key, marker)
            if taken is None:
                return None
            put, attempt, started = taken
        etag = put["ETag"]
        try:
            got = await client.get_object(Bucket=self.bucket, Key=key)
            body = await got["Body"].read()
        except ClientError as exc:
            if _code(exc) not in ("NoSuchKey", "404"):
                raise
            # settled by another consumer since we listed it: drop our marker
            with contextlib.suppress(ClientError):
                await client.delete_object(Bucket=self.bucket, Key=marker, IfMatch=etag)
            return None
        message = S3Message(
            self, key, decode(body), attempt, etag, dict(got.get("Metadata", {})), started
        )
        self._held[key] = message
        return message

    async def _take_over(self, key: str, marker: str) -> tuple[Any, int, float] | None:
        """Take over an expired marker: (put response, attempt, started) or None."""
        assert self._client is not None
        try:
            got = await self._client.get_object(Bucket=self.bucket, Key=marker)
            raw = await got["Body"].read()
        except ClientError as exc:
            if _code(exc) in _LOST:
                return None  # gone meanwhile: the next pass tries again
            raise
        try:
            state = json.loads(raw)
            attempt, hold, owner = int(state["attempt"]), float(state["hold"]), state["owner"]
        except (ValueError, KeyError, TypeError):
            attempt, hold, owner = 1, self.lease, "?"
        if owner:  # held by a consumer: allow for S3's one-second time resolution
            hold += CLOCK_RESOLUTION
        left = hold - _server_age(got)
        if left > 0:
            self._skip[key] = time.monotonic() + left
            return None
        started = time.monotonic()
        try:
            put = await self._client.put_object(
                Bucket=self.bucket,
                Key=marker,
                Body=self._marker(attempt + 1, self.lease),
                IfMatch=got["ETag"],
                ContentType="application/json",
            )
        except ClientError as exc:
            if _code(exc) in _LOST:
                return None  # another consumer took it first
            raise
        return put, attempt + 1, started

    # leases ---------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        every = self.lease / 3.0
        while True:
            await asyncio.sleep(every)
            held = [m for m in self._held.values() if not m._settled and not m._lost]
            if held:
                await asyncio.gather(*(self._renew(m) for m in held))

    async def _renew(self, message: S3Message) -> None:
        async with message._lock:
            if message._settled or message._lost:
                return
            try:
                await self._rewrite(message, self.lease)
            except Exception as exc:  # S3 unreachable: the next renewal tries again
                _logger.warning("renewing the claim of %s failed: %s", message.id, exc)

    async def _rewrite(self, message: S3Message, hold: float, owner: str | None = None) -> bool:
        """Rewrite our marker (If-Match); False (and the message lost) if it is not ours."""
        assert self._client is not None
        started = time.monotonic()
        try:
            put = await self._client.put_object(
                Bucket=self.bucket,
                Key=self.claims_prefix + message.id,
                Body=self._marker(message.attempt, hold, owner),
                IfMatch=message._etag,
                ContentType="application/json",
            )
        except ClientError as exc:
            if _code(exc) not in _LOST:
                _logger.warning("renewing the claim of %s failed: %s", message.id, exc)
                return True  # not known to be lost; the next renewal tries again
            message._lost = True
            _logger.warning(
                "claim of %s lost (it expired and was taken over): its settle is skipped",
                message.id,
            )
            return False
        message._etag = put["ETag"]
        message._renewed_at = started
        return True

    # settling -------------------------------------------------------------------
    async def _settle(
        self, message: S3Message, how: str, *, delay: float = 0.0, reason: str = ""
    ) -> None:
        assert self._client is not None
        client, marker = self._client, self.claims_prefix + message.id
        async with message._lock:
            if message._settled:
                return
            if message._lost:
                message._settled = True
                self._held.pop(message.id, None)
                return
            if time.monotonic() - message._renewed_at > self.lease * SAFE_SHARE and not (
                await self._rewrite(message, self.lease)
            ):
                message._settled = True
                self._held.pop(message.id, None)
                return
            if how == "nack":
                await self._rewrite(message, delay, owner="")
            else:
                if how == "dead":
                    dead_key = self.prefix + DEAD + message.id[len(self.prefix) :]
                    metadata = {**message.metadata, REASON: quote(reason[:1024], safe=" /:()")}
                    await client.copy_object(
                        Bucket=self.bucket,
                        Key=dead_key,
                        CopySource={"Bucket": self.bucket, "Key": message.id},
                        Metadata=metadata,
                        MetadataDirective="REPLACE",
                    )
                await client.delete_object(Bucket=self.bucket, Key=message.id)
                try:
                    await client.delete_object(
                        Bucket=self.bucket, Key=marker, IfMatch=message._etag
                    )
                except ClientError as exc:
                    _logger.warning("deleting the claim marker of %s failed: %s", message.id, exc)
            message._settled = True
            self._held.pop(message.id, None)

    async def dead_letter(self, message: Message, reason: str) -> None:
        """Move `message` to ``prefix + "dead/" + rest`` with `reason` in its metadata.

        Raises:
            TypeError: `message` did not come from this S3Source.
        """
        if not isinstance(message, S3Message) or message._source is not self:
            raise TypeError(f"expected a message of this S3Source, got {message!r}")
        await self._settle(message, "dead", reason=str(reason))

    async def close(self) -> None:
        """Stop claiming, release the claims held (an object claimed but never returned
        by ``__anext__`` keeps its attempt count), and close the client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []
        if self._client is not None:
            releases = []
            for message in list(self._held.values()):
                if message._delivered:
                    releases.append(self._settle(message, "nack"))
                else:
                    releases.append(self._release(message))
            results = await asyncio.gather(*releases, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    _logger.warning("releasing a claim at close failed: %s", result)
        if self._ready is not None:
            while not self._ready.empty():
                self._ready.get_nowait()
            self._ready.put_nowait(StopAsyncIteration())
        if self._exit is not None:
            exit_stack, self._exit = self._exit, None
            await exit_stack.aclose()
        self._client = None

    async def _release(self, message: S3Message) -> None:
        """Delete the marker of a claim never handed out (its attempt is not counted)."""
        assert self._client is not None
        async with message._lock:
            if message._settled or message._lost:
                return
            message._settled = True
            self._held.pop(message.id, None)
            with contextlib.suppress(ClientError):
                await self._client.delete_object(
                    Bucket=self.bucket, Key=self.claims_prefix + message.id, IfMatch=message._etag
                )

    def __repr__(self) -> str:
        return f"<S3Source s3://{self.bucket}/{self.prefix} lease={self.lease:g}s>"


def _seconds(value: object, name: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be seconds (a float or a timedelta), got {value!r}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)
