"""Group conversations: the rules behind the group methods of the hub and REST.

Like ChatService, it speaks in user ids and returns :class:`~app.domain.Outcome`
values whose notices name who must hear what; the edge delivers them, one
emit per event to the rooms of every user it names (however many).

Who is in a group is decided in storage, inside the group commit: a send
reaches exactly the members at the moment it is stored, so a removed member
hears nothing of the group from then on, on any instance.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.domain import (
    HISTORY_TAKE_MAX,
    ChatMessage,
    Group,
    GroupChanged,
    GroupMessageArrived,
    GroupTypingChanged,
    MessageEchoed,
    Notice,
    Outcome,
    ReadPositionMoved,
    StatusChanged,
    paged,
)
from app.errors import Forbidden, InvalidArgument, NotFound
from app.metrics import Metrics
from app.storage.groups import Changed, Membership
from app.storage.store import Storage
from app.validation import (
    MESSAGE_MAX_CHARS,
    check_id,
    check_range,
    check_text,
    check_title,
    check_user_id,
)

class GroupService:
    def __init__(self, storage: Storage, metrics: Metrics, max_group_size: int) -> None:
        self._groups = storage.groups
        self._messages = storage.messages
        self._metrics = metrics
        self._max_size = max_group_size

    # -- membership ---------------------------------------------------------------------

    async def create(
        self, caller: str, title: str, member_ids: list[object], client_request_id: str | None
    ) -> Outcome[Group]:
        """A group with the caller as its one admin and these members (duplicates and the
        caller ignored); a repeat with the same clientRequestId returns the first group."""
        name = check_title(title)
        members = self._user_ids(member_ids, "memberIds")
        members = tuple(u for u in members if u != caller)
        if 1 + len(members) > self._max_size:
            raise InvalidArgument(
                f"a group holds at most {self._max_size} members ({1 + len(members)} asked)"
            )
        if client_request_id is not None:
            check_id(client_request_id, "clientRequestId")
        return _told(await self._groups.create(caller, name, members, client_request_id))

    async def get(self, caller: str, group_id: str) -> Group:
        gid = check_id(group_id, "groupId")
        await self._member(caller, gid)
        group = await self._groups.group(gid)
        if group is None:
            raise NotFound("no such group")
        return group

    async def add_members(self, caller: str, group_id: str, user_ids: list[object]) -> Outcome[Group]:
        gid = check_id(group_id, "groupId")
        wanted = self._user_ids(user_ids, "userIds")
        return _told(await self._groups.add(caller, gid, wanted, self._max_size))

    async def remove_member(self, caller: str, group_id: str, user_id: str) -> Outcome[None]:
        """An admin removes anyone; anyone removes themself (leaves)."""
        gid = check_id(group_id, "groupId")
        target = check_user_id(user_id, "userId")
        changed = await self._groups.remove(caller, gid, target)
        return Outcome(None, _told(changed).notices)

    async def rename(self, caller: str, group_id: str, title: str) -> Outcome[Group]:
        gid = check_id(group_id, "groupId")
        return _told(await self._groups.rename(caller, gid, check_title(title)))

    # -- messages --------------------------------------------------------------------------

    async def send(
        self, caller: str, group_id: str, text: str, client_message_id: str | None
    ) -> Outcome[str]:
        gid = check_id(group_id, "groupId")
        body = check_text(text, "message", MESSAGE_MAX_CHARS)
        if client_message_id is not None:
            check_id(client_message_id, "clientMessageId")
        sent = await self._messages.insert_in_group(caller, gid, body, client_message_id)
        if not sent.created:  # an idempotent repeat: deliver nothing again
            return Outcome(sent.message.id)
        self._metrics.messages_sent.inc()
        return Outcome(
            sent.message.id,
            (
                Notice.to_users(GroupMessageArrived(sent.message), *sent.recipients),
                Notice.to_users(MessageEchoed(sent.message), caller, except_caller=True),
            ),
        )

    async def history(
        self, caller: str, group_id: str, skip: int, take: int
    ) -> list[ChatMessage]:
        """The messages since the caller (last) joined, newest first."""
        gid = check_id(group_id, "groupId")
        check_range(skip, "skip", 0)
        check_range(take, "take", 1, HISTORY_TAKE_MAX)
        member = await self._member(caller, gid)
        return await self._messages.group_history(gid, member.joined_row, None, skip, take)

    async def history_page(
        self, caller: str, group_id: str, before: str | None, limit: int
    ) -> tuple[list[ChatMessage], str | None]:
        """Cursor paging for the REST API: newest first, strictly older than `before`."""
        gid = check_id(group_id, "groupId")
        check_range(limit, "limit", 1, HISTORY_TAKE_MAX)
        member = await self._member(caller, gid)
        before_row = None
        if before is not None:
            anchor = await self._messages.get(before)
            if anchor is None or anchor.group_id != gid or anchor.row <= member.joined_row:
                raise NotFound("before names no message of this group")
            before_row = anchor.row
        page = await self._messages.group_history(gid, member.joined_row, before_row, 0, limit + 1)
        return paged(page, limit)

    async def mark_read(self, caller: str, group_id: str) -> Outcome[int]:
        """The caller's read position moves to the group's latest message."""
        gid = check_id(group_id, "groupId")
        marked = await self._groups.mark_read(caller, gid)
        return Outcome(marked.count, read_notices(caller, gid, marked.moved, marked.read_position))

    async def typing(self, caller: str, group_id: str, is_typing: bool) -> Outcome[None]:
        """A typing notice for the other members. Nothing is stored."""
        gid = check_id(group_id, "groupId")
        members = await self._groups.members(gid)
        if caller not in members:
            raise Forbidden("you are not a member of this group")
        event = GroupTypingChanged(gid, caller, is_typing)
        return Outcome(None, (Notice.to_users(event, *(m for m in members if m != caller)),))

    # -- helpers -----------------------------------------------------------------------------

    async def _member(self, caller: str, group_id: str) -> Membership:
        member = await self._groups.membership(group_id, caller)
        if member is None or not member.active:
            raise Forbidden("you are not a member of this group")
        return member

    def _user_ids(self, values: list[object], name: str) -> tuple[str, ...]:
        # Duplicates are ignored before the size is counted, as the protocol says. The
        # list itself is bounded by the packet size limit, so checking each id is cheap.
        distinct = tuple(dict.fromkeys(check_user_id(v, f"{name}[]") for v in values))
        if len(distinct) > self._max_size:
            raise InvalidArgument(f"{name} must hold at most {self._max_size} user ids")
        return distinct


def read_notices(
    caller: str, group_id: str, moved: Iterable[ChatMessage], read_position: str | None
) -> tuple[Notice, ...]:
    """What a member's receipt or read tells others: each message whose aggregate status
    moved, to its sender (never the reader); a new read position, to the reader's other
    devices (their unread count clears)."""
    notices = [Notice.to_users(StatusChanged(m.id, m.status), m.sender_id) for m in moved]
    if read_position is not None:
        position = ReadPositionMoved(group_id, read_position)
        notices.append(Notice.to_users(position, caller, except_caller=True))
    return tuple(notices)


def _told(changed: Changed) -> Outcome[Group]:
    """The group, and (when something changed) GroupChanged for every member and whoever went.

    Every socket of theirs, the calling one too: RemoveGroupMember answers
    nothing, and one handler of group changes is simpler for a client.
    """
    if not changed.changed:
        return Outcome(changed.group)
    group = changed.group
    return Outcome(
        group, (Notice.to_users(GroupChanged(group), *group.member_ids, *changed.removed),)
    )
