"""REST API under /api: conversations, cursor-paged history, online users.

Views parse, call one ChatService method, and answer JSON in the protocol's
shapes. The middleware authenticates, spends from the budgets, and turns
domain errors into ``{"error": {"code", "message"}}`` with the matching HTTP
status.

Every request spends one call from a budget (handlers/limits.py): a request
with a valid token from its user's, the very budget the user's socket calls
spend from; any other (no token, a bad one, the public paths) from its client
address's. Over it: 429 with ``Retry-After``, before any other work.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import aiohttp_cors
from aiohttp import web

from app.appkeys import BUDGETS, CHAT, CONFIG, GROUPS, METRICS, VERIFIER
from app.auth import Identity, TokenVerifier, bearer_token
from app.domain import ChatMessage
from app.errors import ChatError, InvalidArgument, RateLimited, Unauthorized, client_error
from handlers.http import request_address
from handlers.limits import retry_after_s
from handlers.wire import conversation_dto, group_dto, message_dto

# ChatService.history_page and GroupService.history_page: (caller, thread, before, limit).
HistoryPage = Callable[[str, str, str | None, int], Awaitable[tuple[list[ChatMessage], str | None]]]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_PREFIX = "/api/"
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")
OPENAPI = json.loads(Path(__file__).with_name("openapi.json").read_text())
DEV_TOKEN_TTL_S = 12 * 3600
# Paths under /api that need no token.
PUBLIC_PATHS = frozenset({"/api/openapi.json", "/api/dev/token"})
# Tokens remembered as verified (see VerifiedTokens).
VERIFIED_TOKENS_KEPT = 4096

routes = web.RouteTableDef()


def error_response(error: ChatError) -> web.Response:
    return web.json_response(
        {"error": {"code": error.code, "message": error.message}}, status=error.http_status
    )


class VerifiedTokens:
    """The verifier, remembering the tokens it accepted until they expire.

    A client that repeats one token, as a flood does, would otherwise cost a
    signature check per request, most of them ending in a 429: the profile of
    a one-user flood showed the check as the largest part of the server's
    time. A token is an immutable signed string, so one accepted stays
    acceptable until it expires; only accepted tokens are kept, at most
    ``VERIFIED_TOKENS_KEPT``, the least recently used forgotten first.
    """

    def __init__(self, verifier: TokenVerifier, kept: int = VERIFIED_TOKENS_KEPT) -> None:
        self._verifier = verifier
        self._kept = kept
        self._known: OrderedDict[str, Identity] = OrderedDict()

    def verify(self, token: str | None) -> Identity:
        if token is None:
            return self._verifier.verify(token)  # refused: no token
        identity = self._known.get(token)
        if identity is not None and identity.expires_at > time.time():
            self._known.move_to_end(token)
            return identity
        identity = self._verifier.verify(token)
        self._known[token] = identity
        if len(self._known) > self._kept:
            self._known.popitem(last=False)
        return identity


VERIFIED: web.AppKey[VerifiedTokens] = web.AppKey("verified_tokens", VerifiedTokens)

# The 429 bodies, encoded once: a flood is answered with them thousands of times a second.
_REFUSALS = {
    whose: json.dumps({"error": {
        "code": RateLimited.code, "message": f"too many requests from this {whose}, slow down",
    }}).encode()
    for whose in ("user", "address")
}


def rate_limited(wait_s: float, whose: str) -> web.Response:
    """429 with the protocol's error body and when to try again."""
    return web.Response(
        body=_REFUSALS[whose], status=RateLimited.http_status, content_type="application/json",
        headers={"Retry-After": str(retry_after_s(wait_s))},
    )


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(API_PREFIX) or request.method == "OPTIONS":
        return await handler(request)
    app = request.app
    try:
        identity: Identity | None = None
        refusal: Unauthorized | None = None
        if request.path not in PUBLIC_PATHS:
            try:
                identity = app[VERIFIED].verify(bearer_token(request.headers.get("Authorization")))
            except Unauthorized as exc:
                refusal = exc
        if identity is not None:
            wait = await app[BUDGETS].spend_call(identity.user_id)
            whose = "user"
        else:  # no valid token: whoever it is, it is counted by where it comes from
            address = request_address(request, app[CONFIG].trusted_proxies)
            wait = await app[BUDGETS].spend_anonymous(address)
            whose = "address"
        if wait:
            app[METRICS].rest_rate_limited.labels(whose).inc()
            return rate_limited(wait, whose)
        if refusal is not None:
            raise refusal
        if identity is not None:
            request[IDENTITY] = identity
        return await handler(request)
    except web.HTTPException:
        raise  # aiohttp's own 404/405 for unknown routes
    except Exception as exc:
        return error_response(client_error(exc, f"{request.method} {request.path}"))


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer") from None


@routes.get("/api/conversations")
async def conversations(request: web.Request) -> web.Response:
    caller = request[IDENTITY].user_id
    conversations = await request.app[CHAT].conversations(caller)
    return web.json_response({"conversations": [conversation_dto(c) for c in conversations]})


@routes.get("/api/conversations/{userId}/messages")
async def messages(request: web.Request) -> web.Response:
    return await _history(request, request.app[CHAT].history_page, request.match_info["userId"])


@routes.get("/api/groups/{groupId}")
async def group(request: web.Request) -> web.Response:
    caller = request[IDENTITY].user_id
    found = await request.app[GROUPS].get(caller, request.match_info["groupId"])
    return web.json_response(group_dto(found))


@routes.get("/api/groups/{groupId}/messages")
async def group_messages(request: web.Request) -> web.Response:
    return await _history(request, request.app[GROUPS].history_page, request.match_info["groupId"])


async def _history(request: web.Request, history_page: HistoryPage, thread: str) -> web.Response:
    """A cursor page of a direct conversation's or a group's history (newest first)."""
    limit = _int_query(request, "limit", 50)
    before = request.query.get("before") or None
    page, next_before = await history_page(request[IDENTITY].user_id, thread, before, limit)
    return web.json_response(
        {"messages": [message_dto(m) for m in page], "nextBefore": next_before}
    )


@routes.get("/api/users/online")
async def online_users(request: web.Request) -> web.Response:
    return web.json_response({"users": await request.app[CHAT].online_users()})


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def dev_token(request: web.Request) -> web.Response:
    """Dev mode only: a token for any user id, so the demo can sign in as anyone."""
    try:
        body: Any = await request.json()
    except ValueError:
        raise InvalidArgument("body must be JSON: {\"userId\": \"...\"}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("body must be a JSON object")
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidArgument("name must be a string")
    user_id = body.get("userId")
    if not isinstance(user_id, str):
        raise InvalidArgument("userId must be a string")
    token = request.app[VERIFIER].issue(user_id, name or None, DEV_TOKEN_TTL_S)  # validates user_id
    return web.json_response({"token": token, "userId": user_id})


def setup_api(app: web.Application) -> None:
    app[VERIFIED] = VerifiedTokens(app[VERIFIER])
    app.middlewares.append(api_middleware)
    app.add_routes(routes)
    if app[CONFIG].dev_mode:
        app.router.add_post("/api/dev/token", dev_token)
    origins = app[CONFIG].cors_origins
    if origins:
        cors = aiohttp_cors.setup(
            app,
            defaults={
                origin: aiohttp_cors.ResourceOptions(
                    allow_headers=("Authorization", "Content-Type"), max_age=600
                )
                for origin in origins
            },
        )
        for route in list(app.router.routes()):
            if route.resource is not None and route.resource.canonical.startswith("/api/"):
                cors.add(route)

