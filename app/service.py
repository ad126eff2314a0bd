"""The chat domain: the rules behind every hub method and REST view but the group ones.

The service speaks in user ids and domain values. It never sees a connection
and never emits: where something happened that others must hear of, it
returns an :class:`~app.domain.Outcome` whose notices say what happened and
which users must hear it. The edges (handlers/) deliver them.

Groups have their own service (app/groups.py); this one answers for what is
shared by direct and group messages: receipts, Sync, the conversation list
and a message's receipts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from app.domain import (
    HISTORY_TAKE_MAX,
    ChangePosition,
    ChatMessage,
    ConversationSummary,
    MessageArrived,
    MessageEchoed,
    Notice,
    Outcome,
    ReadPositionMoved,
    Receipts,
    Registered,
    Status,
    StatusChanged,
    SyncPage,
    TypingChanged,
    paged,
)
from app.errors import Forbidden, InvalidArgument, NotFound
from app.groups import read_notices
from app.metrics import Metrics
from app.presence import Presence
from app.storage.messages import ReceiptOutcome, ReceiptResult
from app.storage.store import Storage
from app.validation import (
    MESSAGE_MAX_CHARS,
    check_display_name,
    check_range,
    check_text,
    check_user_id,
)

SYNC_LIMIT_MAX = 500
PENDING_PAGE = 500
SUBSCRIBE_MAX = 500
# GetMessageReceipts lists who has read a message up to this many recipients.
READ_BY_MAX = 100
# How many users' token claims to remember, to skip the write on a reconnect.
TOKEN_CACHE_USERS = 100_000


class ChatService:
    def __init__(self, storage: Storage, presence: Presence, metrics: Metrics) -> None:
        self._storage = storage
        self._messages = storage.messages
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
        await self._storage.save_user(user_id, **changes)
        self._token_said[user_id] = said
        self._token_said.move_to_end(user_id)
        if len(self._token_said) > TOKEN_CACHE_USERS:
            self._token_said.popitem(last=False)

    async def register_user(self, caller: str, user_name: str) -> Outcome[Registered]:
        """Set the display name; hand the caller every direct message still waiting for them."""
        name = check_display_name(user_name)
        await self._storage.save_user(caller, display_name=name)
        pending: list[ChatMessage] = []
        after = 0
        while True:
            page = await self._messages.pending(caller, after, PENDING_PAGE)
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
        sent = await self._messages.insert(sender, receiver, body, client_message_id)
        if not sent.created:  # an idempotent repeat: deliver nothing again
            return Outcome(sent.message.id)
        self._metrics.messages_sent.inc()
        return Outcome(
            sent.message.id,
            (
                Notice.to_users(MessageArrived(sent.message), receiver),
                Notice.to_users(MessageEchoed(sent.message), sender, except_caller=True),
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
        return await self._messages.history(a, b, skip, take)

    async def history_page(
        self, caller: str, other_id: str, before: str | None, limit: int
    ) -> tuple[list[ChatMessage], str | None]:
        """Cursor paging for the REST API: newest first, strictly older than `before`."""
        other = check_user_id(other_id, "userId")
        check_range(limit, "limit", 1, HISTORY_TAKE_MAX)
        before_row = None
        if before is not None:
            anchor = await self._messages.get(before)
            if anchor is None or anchor.group_id is not None or {
                anchor.sender_id, anchor.receiver_id
            } != {caller, other}:
                raise NotFound("before names no message of this conversation")
            before_row = anchor.row
        page = await self._messages.history_before(caller, other, before_row, limit + 1)
        return paged(page, limit)

    async def mark_status(self, caller: str, message_id: str, status: Status) -> Outcome[None]:
        """A receipt for one message: a direct one's status, or the caller's position in a group.

        No notice when nothing moved (a status or position reached already).
        """
        if not message_id:
            raise InvalidArgument("messageId must be a non-empty string")
        outcome = await self._messages.receipt(caller, message_id, status)
        if outcome.result is ReceiptResult.MISSING:
            raise NotFound("no such message")
        if outcome.result is ReceiptResult.NOT_RECEIVER:
            raise Forbidden(
                "only the receiver, or a recipient who is still a member, acknowledges a message"
            )
        return Outcome(None, _receipt_notices(caller, outcome))

    async def mark_conversation_read(self, caller: str, other_user_id: str) -> Outcome[int]:
        other = check_user_id(other_user_id, "otherUserId")
        changed = await self._messages.mark_read(other, caller)
        return Outcome(len(changed), tuple(_direct_status(m) for m in changed))

    async def receipts(self, caller: str, message_id: str) -> Receipts:
        """Who has a message the caller sent, and who has read it (direct or group)."""
        if not message_id:
            raise InvalidArgument("messageId must be a non-empty string")
        found = await self._messages.counts(message_id)
        if found is None:
            raise NotFound("no such message")
        message, recipients, delivered, read = found
        if message.sender_id != caller:
            raise Forbidden("only the sender sees a message's receipts")
        if message.group_id is not None:
            membership = await self._storage.groups.membership(message.group_id, caller)
            if membership is None or not membership.active:
                raise Forbidden("you are no longer a member of this message's group")
        if message.group_id is None:
            receiver = message.receiver_id or ""
            return Receipts(
                1,
                int(message.status >= Status.DELIVERED),
                int(message.status >= Status.READ),
                (receiver,) if message.status >= Status.READ else (),
            )
        read_by = None
        if recipients <= READ_BY_MAX:
            read_by = await self._storage.groups.read_by(message.group_id, message.row, caller)
        return Receipts(recipients, delivered, read, read_by)

    async def sync(self, caller: str, cursor: str | None, limit: int) -> SyncPage:
        """Every change the caller may see after `cursor`, direct and group, in change order."""
        check_range(limit, "limit", 1, SYNC_LIMIT_MAX)
        after = ChangePosition.decode(cursor)
        page, changed = await self._storage.changes.changes(caller, after, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        end = page[-1].position if page else after
        if more:
            # Group changes up to the page's last change go with it; later ones with later pages.
            changed = [c for c in changed if c.seq <= end.seq]
        elif changed and changed[-1].seq > end.seq:
            end = ChangePosition(changed[-1].seq, 0)
        groups = await self._storage.groups.groups(list(dict.fromkeys(c.group_id for c in changed)))
        return SyncPage(page, end, more, groups)

    # -- conversations and presence ---------------------------------------

    async def conversations(self, caller: str) -> list[ConversationSummary]:
        rows = await self._storage.conversations.of(caller)
        online = await self._presence.online_among(r.id for r in rows if r.member_count is None)
        return [
            ConversationSummary(
                id=r.id,
                name=r.name,
                avatar=r.avatar,
                preview=r.preview,
                last_at=r.last_at,
                is_active=r.member_count is None and r.id in online,
                unread=r.unread,
                member_count=r.member_count,
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


def _receipt_notices(caller: str, outcome: ReceiptOutcome) -> tuple[Notice, ...]:
    if outcome.group_id is None:
        return tuple(_direct_status(m) for m in outcome.moved)
    return read_notices(caller, outcome.group_id, outcome.moved, outcome.read_position)


def _direct_status(message: ChatMessage) -> Notice:
    # The sender's connections and the receiver's other ones; the caller knows already.
    return Notice.to_users(
        StatusChanged(message.id, message.status),
        message.sender_id,
        message.receiver_id or "",
        except_caller=True,
    )
