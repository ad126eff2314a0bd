"""Prometheus metrics, kept in a registry per app so that apps (and tests) never share counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        self.events = Histogram(
            "chat_event_seconds", "Time to answer a client->server call", ["event"],
            registry=self.registry,
        )

        self.write_batch = Histogram(
            "chat_write_batch_size", "Writes committed together in one group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
