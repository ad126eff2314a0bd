"""Typed application state: every resource the app holds, under one AppKey each."""

from __future__ import annotations

from typing import TYPE_CHECKING

import socketio
from aiohttp import web
from redis.asyncio import Redis

if TYPE_CHECKING:
    from app.auth import TokenVerifier
    from app.config import Config
    from app.storage.db import Database
    from app.metrics import Metrics
    from app.presence import Presence
    from app.groups import GroupService
    from app.service import ChatService
    from app.shutdown import ShutdownClock
    from app.storage.store import Storage
    from handlers.backplane import RedisHubManager
    from handlers.chat import ChatNamespace
    from handlers.limits import Budgets

CONFIG: web.AppKey[Config] = web.AppKey("config")
DB: web.AppKey[Database] = web.AppKey("db")
STORE: web.AppKey[Storage] = web.AppKey("store")
SIO: web.AppKey[socketio.AsyncServer] = web.AppKey("sio", socketio.AsyncServer)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
PRESENCE: web.AppKey[Presence] = web.AppKey("presence")
VERIFIER: web.AppKey[TokenVerifier] = web.AppKey("verifier")
CHAT: web.AppKey[ChatService] = web.AppKey("chat")
GROUPS: web.AppKey[GroupService] = web.AppKey("groups")
NAMESPACE: web.AppKey[ChatNamespace] = web.AppKey("namespace")
# What /readyz last said of each check, so the log says it once per change.
READINESS: web.AppKey[dict[str, str]] = web.AppKey("readiness", dict)
# What users (and clients without a token) may spend: socket calls and REST share it.
BUDGETS: web.AppKey[Budgets] = web.AppKey("budgets")
# Only with CHAT_REDIS_URL: the presence client and the Socket.IO backplane.
REDIS: web.AppKey[Redis] = web.AppKey("redis", Redis)
BACKPLANE: web.AppKey[RedisHubManager] = web.AppKey("backplane")
# When the shutdown must be over: the closing steps share what is left (app/shutdown.py).
SHUTDOWN: web.AppKey[ShutdownClock] = web.AppKey("shutdown")
