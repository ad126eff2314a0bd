"""The chat domain: the rules behind every hub method and REST view.

The service speaks in user ids and domain values. It never sees a connection
and never emits: where something happened that others must hear of, it
returns an :class:`~app.domain.Outcome` whose notices say what happened and
which users must hear it. The edges (handlers/) deliver them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from app.domain import (
    ChangePosition,
    Status,
    ChatMessage,
    ConversationSummary,
    MessageArrived,
    MessageEchoed,
    Notice,
    Outcome,
    Registered,
    StatusChanged,
    SyncPage,
    TypingChanged,
)
from app.errors import Forbidden, InvalidArgument, NotFound
from app.metrics import Metrics
from app.presence import Presence
from app.storage.store import MessageStore, ReceiptResult
from app.validation import (
    MESSAGE_MAX_CHARS,
    check_display_name,
    check_range,
    check_text,
    check_user_id,
)

HISTORY_TAKE_MAX = 100
SYNC_LIMIT_MAX = 500
PENDING_PAGE = 500
SUBSCRIBE_MAX = 500
# How many users' token claims to remember, to skip the write on a reconnect.
TOKEN_CACHE_USERS = 100_000


class ChatService:
    def __init__(self, store: MessageStore, presence: Presence, metrics: Metrics) -> None:
        self._store = store
        self._presence = presence
        self._metrics = metrics
        # user id -> what their token last said that we stored (least recent first).
        self._token_said: OrderedDict[str, tuple[tuple[str, str | None], ...]] = OrderedDict()

    # -- connections ------------------------------------------------------

    async def user_connected(self, user_id: str, name: str | None, avatar: str | None) -> None:
        """Remember what the token says about the user, when it says something new.

        A reconnect storm is mostly users whose tokens say what they said last
        time: those connects write nothing.
        """
        changes: dict[str, str | None] = {"token_name": name}
        if avatar is not None:
            changes["avatar"] = avatar
        said = tuple(sorted(changes.items()))
        if self._token_said.get(user_id) == said:
            self._token_said.move_to_end(user_id)
            return
        await self._store.save_user(user_id, **changes)
        self._token_said[user_id] = said
        self._token_said.move_to_end(user_id)
        if len(self._token_said) > TOKEN_CACHE_USERS:
            self._token_said.popitem(last=False)

    async def register_user(self, caller: str, user_name: str) -> Outcome[Registered]:
        """Set the display name; hand the caller every message still waiting for them."""
        name = check_display_name(user_name)
        await self._store.save_user(caller, display_name=name)
        pending: list[ChatMessage] = []
        after = 0
        while True:
            page = await self._store.pending(caller, after, PENDING_PAGE)
            pending.extend(page)
            if len(page) < PENDING_PAGE:
                break
            after = page[-1].row
        return Outcome(
            Registered(caller, len(pending)),
            tuple(Notice.to_caller(MessageArrived(m)) for m in pending),
        )

    # -- messages ---------------------------------------------------------

    async def send_message(
        self,
        caller: str,
        sender_id: str,
        receiver_id: str,
        text: str,
        client_message_id: str | None = None,
    ) -> Outcome[str]:
        sender = check_user_id(sender_id, "senderId")
        receiver = check_user_id(receiver_id, "receiverId")
        body = check_text(text, "message", MESSAGE_MAX_CHARS)
        if client_message_id is not None:
            # Same shape rules as a user id, and the same 64-character limit.
            check_user_id(client_message_id, "clientMessageId")
        if sender != caller:
            raise Forbidden("senderId must be your own user id")
        if receiver == sender:
            raise InvalidArgument("receiverId must be another user")
        message, created = await self._store.insert_message(
            sender, receiver, body, client_message_id
        )
        if not created:  # an idempotent repeat: deliver nothing again
            return Outcome(message.id)
        self._metrics.messages_sent.inc()
        return Outcome(
            message.id,
            (
                Notice.to_users(MessageArrived(message), receiver),
                Notice.to_users(MessageEchoed(message), sender, except_caller=True),
            ),
        )

    async def history(
        self, caller: str, user1_id: str, user2_id: str, skip: int, take: int
    ) -> list[ChatMessage]:
        a = check_user_id(user1_id, "user1Id")
        b = check_user_id(user2_id, "user2Id")
        check_range(skip, "skip", 0)
        check_range(take, "take", 1, HISTORY_TAKE_MAX)
        if caller not in (a, b):
            raise Forbidden("you can only read conversations you take part in")
        return await self._store.history(a, b, skip, take)

    async def history_page(
        self, caller: str, other_id: str, before: str | None, limit: int
    ) -> tuple[list[ChatMessage], str | None]:
        """Cursor paging for the REST API: newest first, strictly older than `before`."""
        other = check_user_id(other_id, "userId")
        check_range(limit, "limit", 1, HISTORY_TAKE_MAX)
        before_row = None
        if before is not None:
            anchor = await self._store.get(before)
            if anchor is None or {anchor.sender_id, anchor.receiver_id} != {caller, other}:
                raise NotFound("before names no message of this conversation")
            before_row = anchor.row
        page = await self._store.history_before(caller, other, before_row, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return page, (page[-1].id if more else None)

    async def mark_status(self, caller: str, message_id: str, status: Status) -> Outcome[None]:
        """Receipt for one message; no notice when the status was already reached."""
        if not message_id:
            raise InvalidArgument("messageId must be a non-empty string")
        result, message = await self._store.receipt(caller, message_id, status)
        if result is ReceiptResult.MISSING:
            raise NotFound("no such message")
        if result is ReceiptResult.NOT_RECEIVER:
            raise Forbidden("only the receiver can acknowledge a message")
        if message is None:  # ALREADY: a no-op
            return Outcome(None)
        return Outcome(None, (_status_notice(message, status),))

    async def mark_conversation_read(self, caller: str, other_user_id: str) -> Outcome[int]:
        other = check_user_id(other_user_id, "otherUserId")
        changed = await self._store.mark_read(other, caller)
        return Outcome(len(changed), tuple(_status_notice(m, Status.READ) for m in changed))

    async def sync(self, caller: str, cursor: str | None, limit: int) -> SyncPage:
        check_range(limit, "limit", 1, SYNC_LIMIT_MAX)
        after = ChangePosition.decode(cursor)
        page = await self._store.changes(caller, after, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return SyncPage(page, page[-1].position if page else after, more)

    # -- conversations and presence ---------------------------------------

    async def conversations(self, caller: str) -> list[ConversationSummary]:
        rows = await self._store.conversations(caller)
        online = await self._presence.online_among(r.peer_id for r in rows)
        return [
            ConversationSummary(
                peer_id=r.peer_id,
                name=r.name,
                avatar=r.avatar,
                preview=r.preview,
                last_at=r.last_at,
                is_active=r.peer_id in online,
                unread=r.unread,
            )
            for r in rows
        ]

    async def subscribe_presence(
        self, user_ids: list[object], watch: Callable[[frozenset[str]], Awaitable[None]]
    ) -> dict[str, bool]:
        """Watch these users' presence (replacing what was watched); whether each is online now.

        ``watch`` is the edge's: it makes the caller's connection hear these
        users' changes from now on. It runs before the read, so a change
        between the two is heard rather than lost.
        """
        if len(user_ids) > SUBSCRIBE_MAX:
            raise InvalidArgument(f"userIds must hold at most {SUBSCRIBE_MAX} user ids")
        wanted = [check_user_id(u, "userIds[]") for u in user_ids]
        await watch(frozenset(wanted))
        online = await self._presence.online_among(wanted)
        return {u: u in online for u in wanted}

    async def is_online(self, user_id: str) -> bool:
        return await self._presence.is_online(check_user_id(user_id, "userId"))

    async def online_users(self) -> list[str]:
        return await self._presence.online_users()

    def typing(self, caller: str, receiver_id: str, is_typing: bool) -> Outcome[None]:
        """A typing notice for the receiver. Nothing is stored."""
        receiver = check_user_id(receiver_id, "receiverId")
        if receiver == caller:
            raise InvalidArgument("receiverId must be another user")
        return Outcome(None, (Notice.to_users(TypingChanged(caller, is_typing), receiver),))


def _status_notice(message: ChatMessage, status: Status) -> Notice:
    # The sender's connections and the receiver's other ones; the caller knows already.
    return Notice.to_users(
        StatusChanged(message.id, status),
        message.sender_id,
        message.receiver_id,
        except_caller=True,
    )
