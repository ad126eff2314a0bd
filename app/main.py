"""The app factory: one aiohttp application with the Socket.IO hub attached."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import socketio
from aiohttp import web

from app import http
from app.api import setup_api
from app.auth import TokenVerifier
from app.chat import ChatService
from app.config import Config
from app.db import Database, orm_ctx
from app.keys import CHAT, CONFIG, DB, METRICS, NAMESPACE, PRESENCE, SIO, VERIFIER
from app.metrics import Metrics
from app.presence import LocalPresence
from app.store import MessageStore
from handlers.chat import ChatNamespace

logger = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent.parent / "client-demo"


def create_app(config: Config) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app[METRICS] = metrics = Metrics()
    app[DB] = db = Database(config)
    app[PRESENCE] = presence = LocalPresence()
    app[CHAT] = chat = ChatService(MessageStore(), presence)
    app[VERIFIER] = verifier = TokenVerifier(config)

    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins=_socketio_origins(config),
        max_http_buffer_size=config.max_packet_bytes,
        logger=False,
        engineio_logger=False,
    )
    namespace = ChatNamespace(config, db, chat, presence, verifier, metrics)
    sio.register_namespace(namespace)
    sio.attach(app, socketio_path="socket.io")
    app[SIO] = sio
    app[NAMESPACE] = namespace

    app.cleanup_ctx.append(orm_ctx)
    app.cleanup_ctx.append(sio_ctx)
    app.add_routes(http.routes)
    setup_api(app)
    demo_dir = config.demo_dir or (DEMO_DIR if config.dev_mode else None)
    if demo_dir is not None and demo_dir.is_dir():
        app.router.add_get("/", _index(demo_dir))
        app.router.add_static("/demo/", demo_dir, follow_symlinks=False)
    return app


async def sio_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[NAMESPACE].close()
    await app[SIO].shutdown()


def _socketio_origins(config: Config) -> str | list[str] | None:
    if "*" in config.cors_origins:
        return "*"
    # None keeps python-socketio's same-origin check; a list allows those origins too.
    return list(config.cors_origins) or None


def _index(demo_dir: Path) -> web.Handler:
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(demo_dir / "index.html")

    return index
