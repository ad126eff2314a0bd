"""The private names and copied code of our libraries, checked against the installed versions.

Each entry of docs/internals.md is checked here: the name exists, takes the
parameters the code calls it with, is still called where the code relies on
it, and copied or re-implemented code still has the source it was copied
from. A failure names the entry and the code that relies on it, so an
upgrade fails here, with what to revisit, instead of quietly elsewhere.
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import asyncmy.pool
import engineio
import pytest
import redis.asyncio.client
import socketio
from aiohttp import web
from engineio import async_socket, base_socket
from engineio.async_drivers import aiohttp as engineio_aiohttp
from socketio import async_pubsub_manager, packet

import tortoise.backends.base.client as tortoise_client
import tortoise.backends.mysql.client as tortoise_mysql
import tortoise.context as tortoise_context
from handlers.engine import HubManager, HubPacket, HubServer

DOC = Path(__file__).resolve().parent.parent / "docs" / "internals.md"

# The minor version each library's internals were read from (docs/internals.md).
READ_FROM = {
    "python-socketio": "5.18",
    "python-engineio": "4.15",
    "aiohttp": "3.14",
    "tortoise-orm": "1.1",
    "asyncmy": "0.2",
    "redis": "8.1",
}


@dataclass(frozen=True)
class Use:
    """One private name (or copied code, or pass-through keyword) the code relies on."""

    library: str  # its distribution name
    name: str  # as the failure message shows it
    anchor: str  # its entry: docs/internals.md#anchor
    user: str  # the code that relies on it
    find: Callable[[], Any]  # the object; raises AttributeError if it is gone
    params: tuple[str, ...] | None = None  # its parameters, in order (self included)
    keywords: tuple[str, ...] = ()  # names it must still take (pass-through keywords)
    source: str | None = None  # sha256 prefix of its source, for copied code
    calls: tuple[tuple[Callable[[], Any], str], ...] = field(default=())  # (caller, text it holds)

    def failure(self, what: str) -> str:
        shown = self.name + (f"({', '.join(p for p in self.params if p != 'self')})"
                             if self.params is not None else "")
        return (f"{self.library} {shown} changed ({what}): see docs/internals.md#{self.anchor}; "
                f"{self.user} relies on it")


def source_of(obj: Any) -> str:
    return textwrap.dedent(inspect.getsource(obj))


def digest(obj: Any) -> str:
    return hashlib.sha256(source_of(obj).encode()).hexdigest()[:16]


SIO, EIO = "python-socketio", "python-engineio"
AsyncServer = socketio.AsyncServer
AsyncRedisManager = socketio.AsyncRedisManager
PubSubManager = async_pubsub_manager.AsyncPubSubManager

USES = [
    # -- python-socketio: the server's engine.io hooks --------------------------------------
    Use(SIO, "AsyncServer._handle_eio_connect", "asyncserver_handle_eio_connect",
        "handlers/engine.py HubServer", lambda: AsyncServer._handle_eio_connect,
        params=("self", "eio_sid", "environ"),
        calls=((lambda: socketio.base_server.BaseServer.__init__,
                "self.eio.on('connect', self._handle_eio_connect)"),)),
    Use(SIO, "AsyncServer._handle_eio_message", "asyncserver_handle_eio_message",
        "handlers/engine.py HubServer", lambda: AsyncServer._handle_eio_message,
        params=("self", "eio_sid", "data"),
        calls=((lambda: socketio.base_server.BaseServer.__init__,
                "self.eio.on('message', self._handle_eio_message)"),
               (lambda: AsyncServer._handle_eio_message,
                "pkt = self.packet_class(encoded_packet=data)"))),
    Use(SIO, "AsyncServer._handle_eio_disconnect", "asyncserver_handle_eio_disconnect",
        "handlers/engine.py HubServer", lambda: AsyncServer._handle_eio_disconnect,
        params=("self", "eio_sid", "reason"),
        calls=((lambda: socketio.base_server.BaseServer.__init__,
                "self.eio.on('disconnect', self._handle_eio_disconnect)"),)),
    Use(SIO, "AsyncServer.not_handled", "asyncservernot_handled",
        "handlers/chat.py ChatNamespace._call", lambda: socketio.base_server.BaseServer.__init__,
        calls=((lambda: socketio.base_server.BaseServer.__init__, "self.not_handled = object()"),
               (lambda: AsyncServer._handle_event_internal,
                "if r != self.not_handled and id is not None:"))),
    # -- python-socketio: packets ---------------------------------------------------------
    Use(SIO, "Packet.decode", "packetdecode", "handlers/engine.py HubPacket",
        lambda: packet.Packet.decode, params=("self", "encoded_packet"),
        calls=((lambda: packet.Packet.__init__,
                "self.attachment_count = self.decode(encoded_packet) or 0"),
               (lambda: socketio.base_server.BaseServer.__init__,
                "self.packet_class = serializer"))),
    Use(SIO, "Packet.uses_binary_events", "packetuses_binary_events",
        "handlers/engine.py HubPacket", lambda: packet.Packet.uses_binary_events,
        calls=((lambda: packet.Packet.__init__, "if self.uses_binary_events and"),)),
    # -- python-socketio: the manager ------------------------------------------------------
    Use(SIO, "AsyncManager.pre_connect", "manager-hooks", "handlers/engine.py HubManagerMixin",
        lambda: socketio.AsyncManager.pre_connect, params=("self", "eio_sid", "namespace")),
    Use(SIO, "AsyncManager.connect", "manager-hooks", "handlers/engine.py HubManagerMixin",
        lambda: socketio.AsyncManager.connect, params=("self", "sid", "namespace")),
    Use(SIO, "AsyncManager.disconnect", "manager-hooks", "handlers/engine.py HubManagerMixin",
        lambda: socketio.AsyncManager.disconnect, params=("self", "sid", "namespace", "kwargs")),
    Use(SIO, "BaseManager.get_participants", "manager-hooks",
        "handlers/engine.py HubManagerMixin", lambda: socketio.AsyncManager.get_participants,
        params=("self", "namespace", "room")),
    Use(SIO, "BaseManager.eio_sid_from_sid", "manager-hooks",
        "handlers/engine.py HubManagerMixin.connect",
        lambda: socketio.AsyncManager.eio_sid_from_sid, params=("self", "sid", "namespace")),
    Use(SIO, "AsyncServer._handle_connect", "manager-hooks",
        "handlers/engine.py HubManagerMixin (when connect and disconnect are called)",
        lambda: AsyncServer._handle_connect, source="335c42d04e8d4ae1"),
    Use(SIO, "AsyncManager.emit", "asyncmanageremit-re-implemented",
        "handlers/engine.py HubManagerMixin._emit_here", lambda: socketio.AsyncManager.emit,
        params=("self", "event", "data", "namespace", "room", "skip_sid", "callback", "to",
                "kwargs"),
        source="974bad6cde33d1a6"),
    # -- python-socketio: the Redis backplane ------------------------------------------------
    Use(SIO, "AsyncRedisManager.__init__", "backplane-attributes",
        "handlers/backplane.py RedisHubManager", lambda: AsyncRedisManager.__init__,
        keywords=("url", "channel", "redis_options")),
    Use(SIO, "AsyncRedisManager._redis_connect", "asyncredismanager_redis_connect",
        "handlers/backplane.py RedisHubManager._redis_connect",
        lambda: AsyncRedisManager._redis_connect, params=("self",), source="982157b8eed980ba"),
    Use(SIO, "AsyncRedisManager._redis_listen_with_retries",
        "asyncredismanager_redis_listen_with_retries",
        "handlers/backplane.py RedisHubManager._redis_listen_with_retries",
        lambda: AsyncRedisManager._redis_listen_with_retries, params=("self",),
        source="4b3ea1c1843081cb"),
    Use(SIO, "AsyncRedisManager._listen", "asyncredismanager_listen",
        "handlers/backplane.py RedisHubManager._listen", lambda: AsyncRedisManager._listen,
        params=("self",), source="0e0da0c7983a5989"),
    Use(SIO, "AsyncPubSubManager._handle_emit", "asyncpubsubmanager_handle_emit",
        "handlers/backplane.py RedisHubManager._handle_emit", lambda: PubSubManager._handle_emit,
        params=("self", "message"), source="254aa23735515ac9"),
    Use(SIO, "AsyncPubSubManager.emit", "asyncpubsubmanageremit-re-implemented",
        "handlers/backplane.py RedisHubManager.emit", lambda: PubSubManager.emit,
        source="f7c569d7b006efdc"),
    Use(SIO, "AsyncPubSubManager._thread", "asyncpubsubmanager_thread-and-the-message-format",
        "handlers/backplane.py RedisHubManager (its messages, _listen)",
        lambda: PubSubManager._thread, params=("self",), source="f867805c44ce1a99"),
    Use(SIO, "AsyncPubSubManager.thread", "backplane-attributes",
        "handlers/backplane.py RedisHubManager.close", lambda: PubSubManager.initialize,
        calls=((lambda: PubSubManager.initialize,
                "self.thread = self.server.start_background_task(self._thread)"),)),
    # -- python-engineio ------------------------------------------------------------------
    Use(EIO, "AsyncSocket.close", "asyncsocketqueue-close-upgraded",
        "handlers/engine.py HubServer.cut_off", lambda: async_socket.AsyncSocket.close,
        params=("self", "wait", "abort", "reason")),
    Use(EIO, "BaseSocket.queue", "eiocreate_queue", "handlers/transport.py guard_transports",
        lambda: base_socket.BaseSocket.__init__,
        calls=((lambda: base_socket.BaseSocket.__init__,
                "self.queue = self.server.create_queue()"),)),
    Use(EIO, "AsyncServer._async", "eio_async", "handlers/transport.py guard_transports",
        lambda: engineio.AsyncServer.handle_request,
        calls=((lambda: engineio.AsyncServer.handle_request,
                "translate_request = self._async['translate_request']"),
               (lambda: async_socket.AsyncSocket._upgrade_websocket,
                "ws = self.server._async['websocket'](\n"
                "            self._websocket_handler, self.server)"))),
    Use(EIO, "async_drivers.aiohttp.WebSocket.__call__", "the-aiohttp-drivers-websocket-copied",
        "handlers/transport.py GuardedWebSocket.__call__",
        lambda: engineio_aiohttp.WebSocket.__call__, params=("self", "environ"),
        source="ab81905a4baf2354"),
    Use(EIO, "async_drivers.aiohttp.WebSocket.__init__", "the-aiohttp-drivers-websocket-copied",
        "handlers/transport.py GuardedWebSocket (self.handler, self.server, self._sock)",
        lambda: engineio_aiohttp.WebSocket.__init__, params=("self", "handler", "server"),
        calls=((lambda: engineio_aiohttp.WebSocket.__init__, "self._sock = None"),)),
    Use(EIO, "async_drivers.aiohttp.WebSocket.wait", "the-aiohttp-drivers-websocket-copied",
        "handlers/transport.py GuardedWebSocket.wait", lambda: engineio_aiohttp.WebSocket.wait,
        params=("self",)),
    Use(EIO, "async_drivers.aiohttp.translate_request", "eio_async",
        "handlers/transport.py guard_transports", lambda: engineio_aiohttp.translate_request,
        params=("request",)),
    Use(EIO, "AsyncSocket.handle_post_request", "the-polling-body-wsgiinput",
        "handlers/transport.py _Body", lambda: async_socket.AsyncSocket.handle_post_request,
        calls=((lambda: async_socket.AsyncSocket.handle_post_request,
                "(await environ['wsgi.input'].read(length))"),)),
    Use(EIO, "AsyncServer.send_packet", "asyncmanageremit-re-implemented",
        "handlers/engine.py HubManagerMixin._emit_here", lambda: engineio.AsyncServer.send_packet,
        params=("self", "sid", "pkt")),
    # -- keywords that **kwargs would swallow if renamed ----------------------------------
    Use("aiohttp", "web.run_app", "keywords-passed-through-kwargs", "app/cli.py main",
        lambda: web.run_app,
        keywords=("host", "port", "print", "loop", "backlog", "access_log_class",
                  "keepalive_timeout", "shutdown_timeout")),
    Use("aiohttp", "WebSocketResponse", "keywords-passed-through-kwargs",
        "handlers/transport.py GuardedWebSocket.__call__", lambda: web.WebSocketResponse.__init__,
        keywords=("max_msg_size", "compress")),
    Use(EIO, "AsyncServer.__init__", "keywords-passed-through-kwargs",
        "app/main.py create_app (through python-socketio's **kwargs)",
        lambda: engineio.AsyncServer.__init__,
        keywords=("async_mode", "cors_allowed_origins", "max_http_buffer_size", "logger", "json")),
    Use(SIO, "AsyncServer.__init__", "keywords-passed-through-kwargs", "app/main.py create_app",
        lambda: socketio.base_server.BaseServer.__init__,
        keywords=("client_manager", "logger", "serializer", "json", "namespaces"),
        calls=((lambda: socketio.base_server.BaseServer.__init__,
                "engineio_options.pop('engineio_logger', None)"),)),
    # -- tortoise-orm, asyncmy (app/storage/db.py) ----------------------------------------
    Use("tortoise-orm", "context._current_context", "tortoisecontext_current_context",
        "app/storage/db.py Database.bound", lambda: tortoise_context._current_context,
        calls=((lambda: tortoise_context.TortoiseContext.__enter__,
                "self._token = _current_context.set(self)"),
               (lambda: tortoise_context.get_current_context, "ctx = _current_context.get()"))),
    Use("tortoise-orm", "TransactionContextPooled", "transactioncontextpooled-internals",
        "app/storage/db.py _give_back", lambda: tortoise_client.TransactionContextPooled,
        calls=((lambda: tortoise_client.TransactionContextPooled.__aenter__,
                "self.client._connection = await self.client._parent._pool.acquire()"),
               (lambda: tortoise_client.TransactionContextPooled.__aenter__,
                "self.token = get_connections().set(self.connection_name, self.client)"))),
    Use("tortoise-orm", "MySQLClient._pool", "mysqlclient_pool-and-asyncmys-pool",
        "app/storage/db.py Database._pools", lambda: tortoise_mysql.MySQLClient.__init__,
        calls=((lambda: tortoise_mysql.MySQLClient.__init__,
                "self._pool: mysql.Pool | None = None"),
               (lambda: tortoise_mysql.TransactionWrapper.__init__,
                "self._parent = connection"))),
    Use("asyncmy", "Pool.clear", "mysqlclient_pool-and-asyncmys-pool",
        "app/storage/db.py Database.suspect", lambda: asyncmy.pool.Pool.clear),
    Use("asyncmy", "Pool.terminate", "mysqlclient_pool-and-asyncmys-pool",
        "app/storage/db.py Database.close", lambda: asyncmy.pool.Pool.terminate),
    Use("asyncmy", "Pool.release", "mysqlclient_pool-and-asyncmys-pool",
        "app/storage/db.py _give_back", lambda: asyncmy.pool.Pool.release),
    # -- redis ----------------------------------------------------------------------------
    Use("redis", "asyncio.client.PubSub.on_connect", "pubsubon_connect",
        "handlers/backplane.py _Subscriber", lambda: redis.asyncio.client.PubSub.on_connect,
        params=("self", "connection"),
        calls=((lambda: redis.asyncio.client.PubSub,
                "self.connection.register_connect_callback(self.on_connect)"),)),
    Use("redis", "asyncio.client.PubSub.__init__", "pubsubon_connect",
        "handlers/backplane.py RedisHubManager._redis_connect",
        lambda: redis.asyncio.client.PubSub.__init__,
        keywords=("connection_pool", "ignore_subscribe_messages")),
    # -- tests ----------------------------------------------------------------------------
    Use(SIO, "AsyncClient._send_packet", "test-only-socketioasyncclient-internals",
        "tests/test_messaging.py", lambda: socketio.AsyncClient._send_packet,
        params=("self", "pkt")),
    Use(SIO, "AsyncClient._generate_ack_id", "test-only-socketioasyncclient-internals",
        "tests/test_messaging.py", lambda: socketio.AsyncClient._generate_ack_id,
        params=("self", "namespace", "callback")),
    Use("aiohttp", "ClientWebSocketResponse._response", "test-only-clientwebsocketresponse_response",
        "tests/test_http.py", lambda: aiohttp.ClientWebSocketResponse.__init__,
        calls=((lambda: aiohttp.ClientWebSocketResponse.__init__, "self._response = response"),)),
]


@pytest.mark.parametrize("use", USES, ids=[f"{u.library}:{u.name}" for u in USES])
def test_each_private_name_still_has_the_shape_the_code_relies_on(use: Use) -> None:
    try:
        obj = use.find()
    except AttributeError as exc:
        gone = str(exc)
    else:
        gone = None
    if gone is not None:
        pytest.fail(use.failure(f"gone: {gone}"), pytrace=False)
    if use.params is not None or use.keywords:
        parameters = list(inspect.signature(obj).parameters)
        if use.params is not None and parameters != list(use.params):
            pytest.fail(use.failure(f"its parameters are now {parameters}"), pytrace=False)
        if missing := [k for k in use.keywords if k not in parameters]:
            pytest.fail(use.failure(f"no longer takes {missing}"), pytrace=False)
    if use.source is not None and (now := digest(obj)) != use.source:
        pytest.fail(use.failure(f"its source differs from the one copied (sha256 {now}, "
                                f"recorded {use.source})"), pytrace=False)
    for caller, text in use.calls:
        if _words(text) not in _words(source_of(caller())):
            name = getattr(caller(), "__qualname__", repr(caller()))
            pytest.fail(use.failure(f"{name} no longer holds {text!r}"), pytrace=False)


def test_installed_versions_are_the_ones_the_internals_were_read_from() -> None:
    for library, minor in READ_FROM.items():
        installed = version(library)
        assert installed == minor or installed.startswith(minor + "."), (
            f"{library} {installed} is installed; its internals were read from {minor}: re-read "
            f"its entries in docs/internals.md, then update READ_FROM here and its pin"
        )


def test_the_document_names_every_library_version_and_entry_cited() -> None:
    text = DOC.read_text()
    anchors = {_slug(heading) for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
    assert not (cited := {u.anchor for u in USES} - anchors), f"not in docs/internals.md: {cited}"
    for library, minor in READ_FROM.items():
        assert re.search(rf"^\| {library} \| {re.escape(minor)}\.\d+ \|", text, re.MULTILINE), (
            f"docs/internals.md does not say which {library} {minor}.x it was read from"
        )


def test_a_hub_server_runs_its_overrides_and_its_engine_io_pieces() -> None:
    """What the code relies on, on real instances: the hooks are the ones engine.io calls."""
    server = HubServer(async_mode="aiohttp", client_manager=HubManager(), serializer=HubPacket)
    eio = server.eio
    hooks = {"connect": "_handle_eio_connect", "message": "_handle_eio_message",
             "disconnect": "_handle_eio_disconnect"}
    for event, name in hooks.items():
        assert eio.handlers.get(event) == getattr(server, name), (
            f"python-socketio no longer gives engine.io HubServer.{name} for {event!r}: "
            f"see docs/internals.md#asyncserver{name}"
        )
    assert server.packet_class is HubPacket, "docs/internals.md#packetdecode"
    assert isinstance(eio.sockets, dict), "docs/internals.md#eiosockets"
    assert {"websocket", "translate_request"} <= set(eio._async), "docs/internals.md#eio_async"
    assert eio.max_http_buffer_size > 0, "docs/internals.md#the-aiohttp-drivers-websocket-copied"
    assert eio.reason.SERVER_DISCONNECT, "docs/internals.md#asyncsocketqueue-close-upgraded"
    socket = async_socket.AsyncSocket(eio, "sid")
    for attribute in ("sid", "queue", "upgraded", "closed"):
        assert hasattr(socket, attribute), (
            f"python-engineio AsyncSocket.{attribute} is gone: "
            "see docs/internals.md#asyncsocketqueue-close-upgraded"
        )
    assert type(socket.queue).__name__ == "OutgoingQueue", "docs/internals.md#eiocreate_queue"


def test_a_redis_manager_has_the_attributes_the_backplane_reads() -> None:
    manager = AsyncRedisManager("redis://127.0.0.1:1/0", channel="contract")  # never connects
    for attribute in ("host_id", "channel", "redis", "pubsub", "json"):
        assert hasattr(manager, attribute), (
            f"python-socketio AsyncRedisManager.{attribute} is gone: "
            "see docs/internals.md#backplane-attributes"
        )
    pool = redis.asyncio.ConnectionPool.from_url("redis://127.0.0.1:1/0")  # never connects
    subscriber = redis.asyncio.client.PubSub(pool, ignore_subscribe_messages=True)
    assert hasattr(subscriber, "channels"), "redis PubSub.channels: docs/internals.md#pubsubon_connect"
    assert isinstance(tortoise_context._current_context, contextvars.ContextVar)


def _words(text: str) -> str:
    return " ".join(text.split())


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
