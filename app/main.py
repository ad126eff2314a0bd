"""The app factory: one aiohttp application with the Socket.IO hub attached."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from app.appkeys import (
    BACKPLANE, BUDGETS, CHAT, CONFIG, DB, GROUPS, METRICS, NAMESPACE, PRESENCE, READINESS,
    REDIS, SHUTDOWN, SIO, STORE, VERIFIER,
)
from app.auth import TokenVerifier
from app.cluster import MAINTAIN_EVERY_S, ClusterPresence, redis_client
from app.config import Config
from app.storage.db import Database
from app.metrics import Metrics
from app.presence import Audience, LocalPresence, Presence
from app.groups import GroupService
from app.service import ChatService
from app.shutdown import CLOSING_S, ShutdownClock, within
from app.storage.store import Storage
from handlers import health
from handlers.backplane import CLOSE_FLUSH_S, RedisHubManager
from handlers.chat import NAMESPACE as HUB_NAMESPACE
from handlers.chat import ChatNamespace
from handlers.engine import (
    FastJson,
    Guards,
    HubManager,
    HubPacket,
    HubServer,
    allowed_origins,
)
from handlers.http import polling_guard
from handlers.limits import Budgets, ClusterBudgets, UserBudgets
from handlers.rest import setup_api

logger = logging.getLogger(__name__)

# The demo page and the Angular app live in a source checkout, not in the
# installed package (they need npm); CHAT_DEMO_DIR points an install at one.
DEMO_DIR = Path(__file__).resolve().parent.parent / "client-demo"
SOCKETIO_CLIENT = Path("node_modules") / "socket.io-client" / "dist" / "socket.io.min.js"


def create_app(config: Config) -> web.Application:
    """Wire the domain to its edges. Resources open and close in the cleanup contexts."""
    app = web.Application()
    app[CONFIG] = config
    clustered = config.redis_url is not None
    app[METRICS] = metrics = Metrics(config.instance_id if clustered else None)
    app[DB] = db = Database(config)
    app[STORE] = storage = Storage(
        db, config.call_timeout_s, config.dialect, on_batch=metrics.write_batch.observe
    )
    audience = Audience(config.presence_scope, storage.conversations)
    presence: Presence
    budgets: Budgets
    if clustered:
        assert config.redis_url is not None
        app[REDIS] = redis = redis_client(config.redis_url)
        presence = ClusterPresence(
            audience, redis, config.instance_id, config.instance_ttl_s,
            on_reaped=metrics.presence_reaped.inc,
        )
        budgets = ClusterBudgets(
            redis, config.instance_id, config.rate_limit_per_s, config.rate_limit_burst,
            config.max_sockets_per_user, config.instance_ttl_s,
            on_fallback=metrics.budget_fallbacks.inc,
        )
    else:
        presence = LocalPresence(audience)
        budgets = UserBudgets(
            config.rate_limit_per_s, config.rate_limit_burst, config.max_sockets_per_user
        )
    app[PRESENCE] = presence
    app[BUDGETS] = budgets
    app[CHAT] = chat = ChatService(storage, presence, metrics)
    app[GROUPS] = groups = GroupService(storage, metrics, config.max_group_size)
    app[VERIFIER] = verifier = TokenVerifier(config)

    manager: HubManager | RedisHubManager
    if clustered:
        assert config.redis_url is not None
        manager = app[BACKPLANE] = RedisHubManager(
            config.redis_url,
            on_publish_failure=metrics.publish_failures.inc,
            on_publish_dropped=metrics.publish_dropped.inc,
            on_reconnect=metrics.redis_reconnects.inc,
        )
        metrics.publish_queue.set_function(lambda: manager.queued)
        metrics.sync_pending.set_function(lambda: int(manager.sync_pending))
    else:
        manager = HubManager()
    sio = HubServer(
        async_mode="aiohttp",
        client_manager=manager,
        json=FastJson,
        serializer=HubPacket,
        cors_allowed_origins=allowed_origins(config.cors_origins),
        max_http_buffer_size=config.max_packet_bytes,
        # Only the hub: python-socketio would otherwise accept sockets on "/" too.
        namespaces=[HUB_NAMESPACE],
        guards=Guards(
            handshake_timeout_s=config.handshake_timeout_s,
            max_socket_buffer=config.max_socket_buffer,
            max_pending_per_address=config.max_pending_per_address,
            trusted_proxies=config.trusted_proxies,
            ws_compression=config.ws_compression,
        ),
        on_protocol_error=lambda kind: metrics.protocol_errors.labels(kind).inc(),
        on_cut_off=lambda why: metrics.cut_off.labels(why).inc(),
        logger=False,
        engineio_logger=False,
    )
    namespace = ChatNamespace(config, chat, groups, presence, verifier, metrics, budgets)
    manager.on_connected = namespace.connected
    if isinstance(manager, RedisHubManager):
        manager.on_missed = namespace.sync_required
    sio.register_namespace(namespace)
    sio.attach(app, socketio_path="socket.io")
    app.middlewares.append(
        polling_guard(sio, config.max_packet_bytes, config.http_idle_timeout_s)
    )
    app[SIO] = sio
    app[NAMESPACE] = namespace

    app.cleanup_ctx.append(orm_ctx)
    if clustered:
        app.cleanup_ctx.append(cluster_ctx)  # Redis closes after presence has said goodbye
    app.cleanup_ctx.append(presence_ctx)
    app.cleanup_ctx.append(sio_ctx)
    app[SHUTDOWN] = ShutdownClock()
    app.on_shutdown.append(drain_hub)
    app[READINESS] = {}
    app.add_routes(health.routes)
    setup_api(app)
    demo_dir = config.demo_dir or (DEMO_DIR if config.dev_mode else None)
    if demo_dir is not None and demo_dir.is_dir():
        app.router.add_get("/", _file(demo_dir / "index.html"))
        app.router.add_get("/demo/app.js", _file(demo_dir / "app.js"))
        app.router.add_get("/demo/style.css", _file(demo_dir / "style.css"))
        # socket.io-client from the npm package the Makefile installs: no CDN, works offline.
        app.router.add_get("/vendor/socket.io.min.js", _file(demo_dir / SOCKETIO_CLIENT))
        _add_angular_app(app, demo_dir / "angular" / "dist" / "chat-app" / "browser")
    elif demo_dir is not None:
        logger.warning(
            "no demo page or Angular app: %s is not there (they come with a source checkout, "
            "not with the installed package; set CHAT_DEMO_DIR to a checkout's client-demo/)",
            demo_dir,
        )
    return app


# The most each closing step takes; after a SIGTERM, less when less of the
# shutdown's time is left (app/shutdown.py).
STORE_CLOSE_S = 0.5  # answering the writes still queued
DB_CLOSE_S = 0.3
GOODBYE_S = 0.3  # presence and budgets taking this instance out of Redis
REDIS_CLOSE_S = 0.1


async def orm_ctx(app: web.Application) -> AsyncIterator[None]:
    db, clock = app[DB], app[SHUTDOWN]
    await db.open()
    yield
    await app[STORE].close(clock.share(STORE_CLOSE_S))  # answer the writes still queued first
    await db.close(clock.share(DB_CLOSE_S))


async def presence_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    clock = app[SHUTDOWN]
    await within("presence goodbye", app[PRESENCE].close(), clock.share(GOODBYE_S))
    await within("budgets goodbye", app[BUDGETS].close(), clock.share(GOODBYE_S))


async def sio_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[NAMESPACE].close()
    await app[SIO].shutdown()


async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """Several instances: the presence heartbeat, and the backplane closed last.

    Each second the heartbeat renews this instance's, re-asserts its
    connections (and its sockets in the shared budgets) after a Redis outage,
    and finds instances that died without a goodbye; whoever those changes
    bring online or take offline is announced.
    """
    presence, namespace, budgets = app[PRESENCE], app[NAMESPACE], app[BUDGETS]
    assert isinstance(presence, ClusterPresence) and isinstance(budgets, ClusterBudgets)

    async def beat() -> None:
        notices = await presence.maintain()
        await budgets.maintain()
        if notices:  # whoever a dead instance took offline: the other instances' sockets hear it
            await namespace.announce(notices)

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(MAINTAIN_EVERY_S)
            try:
                await beat()
            except Exception:  # noqa: BLE001 - never let the heartbeat die
                logger.exception("presence heartbeat failed")

    await beat()  # register before the first client arrives
    task = asyncio.ensure_future(heartbeat())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    clock = app[SHUTDOWN]
    flush_s = clock.share(CLOSE_FLUSH_S)
    await within("backplane", app[BACKPLANE].close(flush_s), flush_s + clock.share(REDIS_CLOSE_S))
    await within("redis client", app[REDIS].aclose(), clock.share(REDIS_CLOSE_S))


async def drain_hub(app: web.Application) -> None:
    """SIGTERM: finish the calls in flight, then close every socket so clients reconnect elsewhere.

    Runs after the listening socket is closed and before the cleanup contexts,
    so the store is still open for the calls being finished.
    """
    grace_s = app[CONFIG].shutdown_grace_s
    app[SHUTDOWN].start(grace_s + CLOSING_S)
    await app[NAMESPACE].drain(grace_s)


def _add_angular_app(app: web.Application, root: Path) -> None:
    """The built Angular app (client-demo/angular, `make app`) at /app/: a flat folder of files."""

    async def index(request: web.Request) -> web.FileResponse:
        if not (root / "index.html").is_file():
            raise web.HTTPNotFound(text="The Angular app is not built: run `make app`")
        return web.FileResponse(root / "index.html")

    async def asset(request: web.Request) -> web.FileResponse:
        name = request.match_info["name"]  # one path segment: no "/" can reach outside root
        if name.startswith(".") or not (root / name).is_file():  # nor "..", nor dotfiles
            raise web.HTTPNotFound()
        return web.FileResponse(root / name)

    async def slash(request: web.Request) -> web.Response:
        raise web.HTTPFound("/app/")

    app.router.add_get("/app", slash)
    app.router.add_get("/app/", index)
    app.router.add_get(r"/app/{name:[\w.-]+}", asset)


def _file(path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.FileResponse:
        if not path.is_file():
            raise web.HTTPNotFound(text=f"{path.name} is missing; run `make setup`")
        return web.FileResponse(path)

    return serve
