"""Prometheus metrics, kept in a registry per app so that apps (and tests) never share counts."""

from __future__ import annotations

import resource

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, instance_id: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Each instance serves its own /metrics; this names it (Prometheus adds host:port).
        self.instance = Gauge(
            "chat_instance_info", "This instance (1)", ["instance_id"], registry=self.registry
        )
        if instance_id is not None:
            self.instance.labels(instance_id).set(1)
        # process_open_fds and process_max_fds (the soft limit), CPU, memory.
        ProcessCollector(registry=self.registry)
        self.max_fds_hard = Gauge(
            "chat_max_fds_hard", "The hard limit on open files the soft one may be raised to",
            registry=self.registry,
        )
        self.max_fds_hard.set_function(lambda: resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        self.connections = Gauge(
            "chat_connections", "Open Socket.IO connections to /chat", registry=self.registry
        )
        self.connects = Counter(
            "chat_connects", "Accepted /chat handshakes", registry=self.registry
        )
        self.refused = Counter(
            "chat_connects_refused", "Refused /chat handshakes", ["code"], registry=self.registry
        )
        self.messages_sent = Counter(
            "chat_messages_sent", "Messages stored (not counting idempotent repeats)",
            registry=self.registry,
        )
        self.errors = Counter(
            "chat_errors", "Client->server calls that failed, by error code", ["code"],
            registry=self.registry,
        )
        self.protocol_errors = Counter(
            "chat_protocol_errors", "Sockets closed for frames the protocol cannot carry", ["kind"],
            registry=self.registry,
        )
        self.cut_off = Counter(
            "chat_sessions_cut_off",
            "Engine.IO sessions ended or refused by a guard (slow consumer, never joined, ...)",
            ["why"], registry=self.registry,
        )
        self.events = Histogram(
            "chat_event_seconds", "Time to answer a client->server call", ["event"],
            registry=self.registry,
        )

        self.write_batch = Histogram(
            "chat_write_batch_size", "Writes committed together in one group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )

        self.publish_failures = Counter(
            "chat_backplane_publish_failures", "Emits the other instances did not get (Redis away)",
            registry=self.registry,
        )
        self.publish_dropped = Counter(
            "chat_backplane_publish_dropped",
            "Emits dropped because the publish queue was full (Redis slow or frozen)",
            registry=self.registry,
        )
        self.publish_queue = Gauge(
            "chat_backplane_publish_queue", "Emits waiting to be published to Redis",
            registry=self.registry,
        )
        self.redis_reconnects = Counter(
            "chat_backplane_reconnects", "Times the backplane listener subscribed again after a gap",
            registry=self.registry,
        )
        self.sync_pending = Gauge(
            "chat_sync_required_pending",
            "1 while a backplane gap's SyncRequired waits for the gap to settle", registry=self.registry,
        )
        self.sync_required = Counter(
            "chat_sync_required",
            "SyncRequired sent to this instance's sockets (once per gap in what they heard)",
            registry=self.registry,
        )
        self.budget_fallbacks = Counter(
            "chat_budget_fallbacks",
            "Times Redis did not answer a budget check in time and this instance counted alone",
            registry=self.registry,
        )
        self.rest_rate_limited = Counter(
            "chat_rest_rate_limited", "REST requests answered 429, by whose budget ran out",
            ["budget"], registry=self.registry,
        )
        self.presence_reaped = Counter(
            "chat_presence_reaped", "Users announced offline because their instance died",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
