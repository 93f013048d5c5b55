"""pywork: background work with the abstractions of an HTTP framework.

A :class:`Job` is a request, a handler sets an HTTP-like :class:`Status`, adapters
(middleware) wrap handlers, and a :class:`Worker` performs jobs now, later,
repeatedly or for every value received from a :class:`Channel`.
"""

from __future__ import annotations

from pywork.brokers import Broker, JobRecord, JobState, QueueStats, ScheduleRecord, connect
from pywork.channel import Channel
from pywork.concurrent import ConcurrentJob, PerformWith
from pywork.errors import (
    BadRequest,
    BrokerClosed,
    BrokerError,
    BrokerUnavailable,
    ChannelClosed,
    ChannelFull,
    Forbidden,
    HandlerAlreadyRegistered,
    HandlerNotFound,
    InternalError,
    InvalidArgs,
    JobError,
    JobTimeout,
    NoResponse,
    NotFound,
    PyworkError,
    SerializationError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    WorkerNotRunning,
    status_for,
)
from pywork.handler import adapt
from pywork.job import (
    AGGREGATE_LOGGER,
    REQUEST_SIZE,
    RESPONSE_SIZE,
    TRACING_CONTEXT,
    Context,
    Job,
    Progress,
)
from pywork.schedule import Execution, Schedule
from pywork.status import Status
from pywork.sync import SyncBroker, connect_sync
from pywork.task import Task
from pywork.types import Adapter, Handler
from pywork.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "AGGREGATE_LOGGER",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TRACING_CONTEXT",
    "Adapter",
    "BadRequest",
    "Broker",
    "BrokerClosed",
    "BrokerError",
    "BrokerUnavailable",
    "Channel",
    "ChannelClosed",
    "ChannelFull",
    "ConcurrentJob",
    "Context",
    "Execution",
    "Forbidden",
    "Handler",
    "HandlerAlreadyRegistered",
    "HandlerNotFound",
    "InternalError",
    "InvalidArgs",
    "Job",
    "JobError",
    "JobRecord",
    "JobState",
    "JobTimeout",
    "NoResponse",
    "NotFound",
    "PerformWith",
    "Progress",
    "PyworkError",
    "QueueStats",
    "Schedule",
    "ScheduleRecord",
    "SerializationError",
    "Status",
    "SyncBroker",
    "Task",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Worker",
    "WorkerNotRunning",
    "__version__",
    "adapt",
    "connect",
    "connect_sync",
    "status_for",
]
