"""Who is online, and who hears when that changes.

A user is online while at least one of their connections is open. The
presence service is the one owner of that fact: the edge reports connections
opening and closing (by an opaque connection id), and gets back the notices
to send; everybody else asks it questions. The app factory picks the one the
deployment needs: the in-process ``LocalPresence``, or with Redis the
cluster-wide ``ClusterPresence`` (app/cluster.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from app.domain import Notice, PresenceChanged
from app.storage.conversations import Conversations


class Presence(Protocol):
    """Connections per user, the first/last transitions, and who hears of them."""

    async def connect(self, user_id: str, connection_id: str) -> tuple[Notice, ...]:
        """Record a connection; on the user's first, the notices announcing them online.

        The announcement never goes to the new connection itself: it is sent
        after the connection is established, which the edge decides.
        """

    async def disconnect(self, user_id: str, connection_id: str) -> tuple[Notice, ...]:
        """Forget a connection; on the user's last, the notices announcing them offline."""

    async def is_online(self, user_id: str) -> bool: ...

    async def online_users(self) -> list[str]: ...

    async def online_among(self, user_ids: Iterable[str]) -> set[str]: ...

    async def close(self) -> None: ...


class Audience:
    """Who hears that a user came or went.

    Scope ``contacts`` (the default): the people who share a conversation with
    them, plus the connections that watch them (SubscribePresence). Scope
    ``all``: every connected user, which costs O(connections) per change.
    """

    def __init__(self, scope: str, conversations: Conversations) -> None:
        self._scope = scope
        self._conversations = conversations

    async def notices(self, user_id: str, online: bool, version: int = 0) -> tuple[Notice, ...]:
        event = PresenceChanged(user_id, online, version)
        # A connection that just arrived is not told of its own arrival; one that
        # leaves is gone, so telling it or not makes no difference.
        except_caller = online
        if self._scope == "all":
            return (Notice.to_everyone(event, except_caller=except_caller),)
        contacts = await self._conversations.peers(user_id)
        return (
            Notice.to_users(
                event, *contacts, except_caller=except_caller, watchers_of=(user_id,)
            ),
        )


class LocalPresence:
    """Presence for a single server process."""

    def __init__(self, audience: Audience) -> None:
        self._audience = audience
        self._connections: dict[str, set[str]] = {}

    async def connect(self, user_id: str, connection_id: str) -> tuple[Notice, ...]:
        conns = self._connections.setdefault(user_id, set())
        first = not conns
        conns.add(connection_id)
        if not first:
            return ()
        try:
            return await self._audience.notices(user_id, True)
        except BaseException:
            # The edge refuses a connection whose connect failed: forget it.
            self._forget(user_id, connection_id)
            raise

    async def disconnect(self, user_id: str, connection_id: str) -> tuple[Notice, ...]:
        if not self._forget(user_id, connection_id):
            return ()
        return await self._audience.notices(user_id, False)

    def _forget(self, user_id: str, connection_id: str) -> bool:
        """Drop one connection; True when it was the user's last."""
        conns = self._connections.get(user_id)
        if not conns or connection_id not in conns:
            return False
        conns.discard(connection_id)
        if conns:
            return False
        del self._connections[user_id]
        return True

    async def is_online(self, user_id: str) -> bool:
        return user_id in self._connections

    async def online_users(self) -> list[str]:
        return sorted(self._connections)

    async def online_among(self, user_ids: Iterable[str]) -> set[str]:
        return {u for u in user_ids if u in self._connections}

    async def close(self) -> None:
        self._connections.clear()
