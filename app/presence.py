"""Who is online: a user is online while at least one of their connections is open."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Presence(Protocol):
    """Tracks open connections per user. Implementations may span server instances."""

    async def connect(self, user_id: str, connection_id: str) -> bool:
        """Record a connection; True when it is the user's first (they came online)."""

    async def disconnect(self, user_id: str, connection_id: str) -> bool:
        """Forget a connection; True when it was the user's last (they went offline)."""

    async def is_online(self, user_id: str) -> bool: ...

    async def online_users(self) -> list[str]: ...

    async def online_among(self, user_ids: Iterable[str]) -> set[str]: ...

    async def close(self) -> None: ...


class LocalPresence:
    """Presence for a single server process."""

    def __init__(self) -> None:
        self._connections: dict[str, set[str]] = {}

    async def connect(self, user_id: str, connection_id: str) -> bool:
        conns = self._connections.setdefault(user_id, set())
        first = not conns
        conns.add(connection_id)
        return first

    async def disconnect(self, user_id: str, connection_id: str) -> bool:
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
