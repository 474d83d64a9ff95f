"""The gateway's Prometheus metrics (rendered with the rest of the process by kernel.render_metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from kernel import METRIC_PREFIX

CLIENTS = Gauge(METRIC_PREFIX + "ws_clients", "Authenticated WebSocket clients connected now")
FRAMES_SENT = Counter(METRIC_PREFIX + "ws_frames_sent_total", "Frames written to WebSocket clients")
SEND_QUEUE_DROPS = Counter(
    METRIC_PREFIX + "ws_send_queue_drops_total", "Clients closed with 1013 because their send queue was full"
)
