"""Sources: consume work that other systems produce (contract §15).

A :class:`Source` is an async iterator of :class:`Message`; :meth:`Worker.consume_source
<pywork.Worker.consume_source>` runs a job for each message and settles it with the same
status rules as a durable queue (ack, nack with backoff, dead letter)::

    Source ──__anext__──> Message ──run job.copy()──> status ──> ack / nack(delay) / dead_letter

Two implementations ship, each behind an extra and imported on first use:

- :class:`PulsarSource` (``pip install "pywork[pulsar]"``): a Shared subscription on an
  Apache Pulsar topic, on the official ``pulsar-client``;
- :class:`S3Source` (``pip install "pywork[s3]"``): the objects under an S3 prefix, each
  claimed by one consumer at a time with an expiring marker, on ``aiobotocore``.

Writing another (NATS JetStream, a Kafka-like log) means implementing the two protocols
below; see ``docs/sources.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pywork.sources.base import Message, Source

if TYPE_CHECKING:
    from pywork.sources.pulsar import PulsarSource
    from pywork.sources.s3 import S3Source

__all__ = ["Message", "PulsarSource", "S3Source", "Source"]


def __getattr__(name: str) -> Any:
    # the implementations need extras: import them only when asked for
    if name == "PulsarSource":
        from pywork.sources.pulsar import PulsarSource

        return PulsarSource
    if name == "S3Source":
        from pywork.sources.s3 import S3Source

        return S3Source
    raise AttributeError(f"module 'pywork.sources' has no attribute {name!r}")
