"""The shared kernel: what every Switchyard package may import, and which imports none of them.

The exception root and its branches, database connections and the classification of their
errors, backoff, the reconnecting LISTEN helper, the one logger style, local ports, and the
durable session event log that the dispatcher writes and the gateway reads.
"""

from __future__ import annotations

from kernel.db import (
    CONNECTION_LOST,
    DATABASE_ERRORS,
    VALUE_REFUSED,
    BoundedPool,
    PoolExhausted,
    close_quietly,
    connect,
    create_pool,
    report,
)
from kernel.errors import (
    BackendError,
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    GatewayError,
    SchemaError,
    SwitchyardError,
    WorktreeError,
)
from kernel.eventlog import (
    AgentCommandsPayload,
    ChangesRequestedPayload,
    Event,
    MessageCompletePayload,
    MessageStartedPayload,
    PendingChangePayload,
    PermissionPayload,
    PlanPayload,
    ReviewCommentPayload,
    SessionFrame,
    SessionPayload,
    StatusPayload,
    StoredEvent,
    TaskStatePayload,
    TextPayload,
    ToolCallPayload,
    WorktreeChangedPayload,
    append_event,
    append_events,
    message_complete,
    read_events,
    task_state,
)
from kernel.listen import Connect, Listener
from kernel.logs import EventLogger, configure_logging, get_logger, redact
from kernel.metrics import METRIC_PREFIX, METRICS_CONTENT_TYPE, on_scrape, render_metrics
from kernel.net import free_port, port_is_free
from kernel.procs import process_gone, process_key
from kernel.retry import Backoff, exponential

__all__ = [
    "CONNECTION_LOST",
    "DATABASE_ERRORS",
    "METRICS_CONTENT_TYPE",
    "METRIC_PREFIX",
    "VALUE_REFUSED",
    "AgentCommandsPayload",
    "BackendError",
    "Backoff",
    "BoundedPool",
    "ChangesRequestedPayload",
    "ConfigError",
    "Connect",
    "DatabaseError",
    "DatabaseUnavailable",
    "Event",
    "EventLogger",
    "GatewayError",
    "Listener",
    "MessageCompletePayload",
    "MessageStartedPayload",
    "PendingChangePayload",
    "PermissionPayload",
    "PlanPayload",
    "PoolExhausted",
    "ReviewCommentPayload",
    "SchemaError",
    "SessionFrame",
    "SessionPayload",
    "StatusPayload",
    "StoredEvent",
    "SwitchyardError",
    "TaskStatePayload",
    "TextPayload",
    "ToolCallPayload",
    "WorktreeChangedPayload",
    "WorktreeError",
    "append_event",
    "append_events",
    "close_quietly",
    "configure_logging",
    "connect",
    "create_pool",
    "exponential",
    "free_port",
    "get_logger",
    "message_complete",
    "on_scrape",
    "port_is_free",
    "process_gone",
    "process_key",
    "read_events",
    "redact",
    "render_metrics",
    "report",
    "task_state",
]
