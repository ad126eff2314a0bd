"""Groups and their members: one row per group, one per member, positions instead of receipts.

Nothing is written per recipient of a message. Each member row keeps two
positions in the group (the last message row delivered to them, the last
read) and two counts that make the unread count O(1): the group's messages up
to their read position, and their own messages after it. A message keeps its
recipient count (frozen at send) and how many recipients have it delivered
and read; when a member's position moves over a range of messages, those
counts move by one statement per range (movers over the same range share it),
and the messages whose counts reach their recipient count move their
aggregate status.

A member who leaves keeps an inactive row (their reads still count); one who
comes back starts again from the group's latest message.
"""

from __future__ import annotations

import uuid as uuidlib
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.domain import ChatMessage, Group, GroupMember, Role, Status
from app.errors import ChatError, Forbidden, InvalidArgument, NotFound
from app.storage import users
from app.storage.messages import (
    NewMessage,
    ReceiptOutcome,
    ReceiptResult,
    Sent,
)
from app.storage.sql import (
    MESSAGE_COLUMNS,
    Room,
    as_datetime,
    chunks,
    group_thread,
    marks,
    message_from_row,
    now_ms,
    stored,
    with_status,
)

if TYPE_CHECKING:
    from app.storage.commit import Batch, GroupCommit, Witness

GROUP_COLUMNS = "id, title, avatar, created_by, created_at, member_count, last_message_id, change_seq"
MEMBER_COLUMNS = (
    "id, group_id, user_id, role, active, joined_at, joined_row, delivered_upto, read_upto,"
    " read_messages, own_unread"
)
# Member lists cached (they go with every group message and typing notice).
CACHED_GROUPS = 10_000


# -- writes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateGroup:
    creator: str
    title: str
    member_ids: tuple[str, ...]  # without the creator, no duplicates
    request_id: str | None


@dataclass(frozen=True, slots=True)
class AddMembers:
    caller: str
    group_id: str
    user_ids: tuple[str, ...]
    max_size: int


@dataclass(frozen=True, slots=True)
class RemoveMember:
    caller: str
    group_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class RenameGroup:
    caller: str
    group_id: str
    title: str


@dataclass(frozen=True, slots=True)
class MarkGroupRead:
    caller: str
    group_id: str


GroupWrite = CreateGroup | AddMembers | RemoveMember | RenameGroup | MarkGroupRead
MEMBERSHIP = (CreateGroup, AddMembers, RemoveMember, RenameGroup)


@dataclass(frozen=True, slots=True)
class Changed:
    """A membership write's outcome: the group as this batch leaves it."""

    group: Group
    changed: bool  # False: nothing happened that anyone must hear of (a repeat, no one new)
    removed: tuple[str, ...] = ()  # who went: they hear of it too


@dataclass(frozen=True, slots=True)
class MarkedRead:
    count: int  # messages from others now read
    read_position: str | None  # the new read position (a message id), None if it did not move
    moved: tuple[ChatMessage, ...]  # messages whose aggregate status moved


@dataclass(frozen=True, slots=True)
class GroupSend:
    """What a group send needs from the group step: recipients when it was sent."""

    recipient_count: int
    recipients: tuple[str, ...]


class MemberCache:
    """Each group's members as of its last change (its change number), least recent out first.

    A member list goes with every group message and typing notice. The
    group's change number, read under the batch's lock (or in the typing
    read), says whether the cached list is still the list: it changes with
    every membership change.
    """

    def __init__(self, size: int = CACHED_GROUPS) -> None:
        self._size = size
        self._lists: OrderedDict[str, tuple[int, tuple[str, ...]]] = OrderedDict()

    def get(self, group_id: str, seq: int) -> tuple[str, ...] | None:
        entry = self._lists.get(group_id)
        if entry is None or entry[0] != seq:
            return None
        self._lists.move_to_end(group_id)
        return entry[1]

    def put(self, group_id: str, seq: int, members: tuple[str, ...]) -> None:
        self._lists[group_id] = (seq, members)
        self._lists.move_to_end(group_id)
        if len(self._lists) > self._size:
            self._lists.popitem(last=False)

    async def members(self, query: Any, group_id: str, seq: int, keep: bool = True) -> tuple[str, ...]:
        """The group's members at change `seq`: cached, or read by `query` (and kept if `keep`)."""
        cached = self.get(group_id, seq)
        if cached is not None:
            return cached
        listed = await _member_ids(query, group_id)
        if keep:
            self.put(group_id, seq, listed)
        return listed


# -- the room ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Membership:
    """A user's place in a group, for the reads that check it."""

    active: bool
    role: Role
    joined_row: int


class Groups(Room):
    def __init__(self, *args: Any, commit: GroupCommit, members: MemberCache) -> None:
        super().__init__(*args)
        self._commit = commit
        self._members = members

    async def create(
        self, creator: str, title: str, member_ids: tuple[str, ...], request_id: str | None
    ) -> Changed:
        return await self._commit.write(  # type: ignore[no-any-return]
            CreateGroup(creator, title, member_ids, request_id)
        )

    async def add(self, caller: str, group_id: str, user_ids: tuple[str, ...], max_size: int) -> Changed:
        return await self._commit.write(  # type: ignore[no-any-return]
            AddMembers(caller, group_id, user_ids, max_size)
        )

    async def remove(self, caller: str, group_id: str, user_id: str) -> Changed:
        return await self._commit.write(  # type: ignore[no-any-return]
            RemoveMember(caller, group_id, user_id)
        )

    async def rename(self, caller: str, group_id: str, title: str) -> Changed:
        return await self._commit.write(  # type: ignore[no-any-return]
            RenameGroup(caller, group_id, title)
        )

    async def mark_read(self, caller: str, group_id: str) -> MarkedRead:
        return await self._commit.write(MarkGroupRead(caller, group_id))  # type: ignore[no-any-return]

    @stored
    async def group(self, group_id: str) -> Group | None:
        rows = await self._rows(f"SELECT {GROUP_COLUMNS} FROM chat_group WHERE id = ?", [group_id])
        return await _group(self._rows, rows[0]) if rows else None

    @stored
    async def groups(self, group_ids: list[str]) -> list[Group]:
        """These groups with their members (Sync): three queries a chunk, not two a group."""
        found = []
        for chunk in chunks(group_ids):
            rows = await self._rows(
                f"SELECT {GROUP_COLUMNS} FROM chat_group WHERE id IN ({marks(len(chunk))})", chunk
            )
            if not rows:
                continue
            members: dict[str, list[dict[str, Any]]] = {r["id"]: [] for r in rows}
            for m in await self._rows(
                "SELECT group_id, user_id, role, joined_at FROM chat_group_member"
                f" WHERE group_id IN ({marks(len(members))}) AND active = ? ORDER BY joined_at, id",
                [*members, True],
            ):
                members[m["group_id"]].append(m)
            named = await users.names(self._rows, [m["user_id"] for ms in members.values() for m in ms])
            found += [_built(row, members[row["id"]], named) for row in rows]
        return found

    @stored
    async def membership(self, group_id: str, user_id: str) -> Membership | None:
        """The user's row in the group (active or not), or None; NotFound for no such group."""
        rows = await self._rows(
            "SELECT g.id, gm.active, gm.role, gm.joined_row FROM chat_group g"
            " LEFT JOIN chat_group_member gm ON gm.group_id = g.id AND gm.user_id = ?"
            " WHERE g.id = ?",
            [user_id, group_id],
        )
        if not rows:
            raise NotFound("no such group")
        r = rows[0]
        if r["active"] is None:
            return None
        return Membership(bool(r["active"]), Role(int(r["role"])), int(r["joined_row"]))

    @stored
    async def members(self, group_id: str) -> tuple[str, ...]:
        """The group's current members (from the cache while the group has not changed)."""
        rows = await self._rows("SELECT change_seq FROM chat_group WHERE id = ?", [group_id])
        if not rows:
            raise NotFound("no such group")
        return await self._members.members(self._rows, group_id, int(rows[0]["change_seq"]))

    @stored
    async def read_by(self, group_id: str, message_row: int, sender_id: str) -> tuple[str, ...]:
        """Who has read a message: members (then or now) past it, who joined before it."""
        rows = await self._rows(
            "SELECT user_id FROM chat_group_member"
            " WHERE group_id = ? AND read_upto >= ? AND joined_row < ? AND user_id <> ?"
            " ORDER BY user_id",
            [group_id, message_row, message_row, sender_id],
        )
        return tuple(r["user_id"] for r in rows)


async def _group(query: Any, row: dict[str, Any]) -> Group:
    """A group row with its current members and their names."""
    members = await query(
        "SELECT user_id, role, joined_at FROM chat_group_member"
        " WHERE group_id = ? AND active = ? ORDER BY joined_at, id",
        [row["id"], True],
    )
    return _built(row, members, await users.names(query, [m["user_id"] for m in members]))


def _built(row: dict[str, Any], members: list[dict[str, Any]], named: dict[str, str]) -> Group:
    return Group(
        id=row["id"],
        title=row["title"],
        avatar=row["avatar"],
        created_by=row["created_by"],
        created_at=as_datetime(row["created_at"]),
        members=tuple(
            GroupMember(m["user_id"], named[m["user_id"]], Role(int(m["role"])), as_datetime(m["joined_at"]))
            for m in members
        ),
    )


async def _member_ids(query: Any, group_id: str) -> tuple[str, ...]:
    rows = await query(
        "SELECT user_id FROM chat_group_member WHERE group_id = ? AND active = ?", [group_id, True]
    )
    return tuple(r["user_id"] for r in rows)


# -- steps of a batch (app/storage/commit.py) ---------------------------------------------


async def change_membership(batch: Batch) -> None:
    """Create, add, remove, rename: one write at a time, each answered with the group after it."""
    writes = batch.of(MEMBERSHIP)
    if not writes:
        return
    await batch.hold_changes()
    for i, write in writes:
        try:
            batch.answer(i, await _membership(batch, write))
        except ChatError as refused:  # this write only: the others go on
            batch.answer(i, refused)


async def _membership(batch: Batch, write: Any) -> Changed:
    if isinstance(write, CreateGroup):
        return await _create(batch, write)
    group = await _group_row(batch, write.group_id)
    caller = await _member_row(batch, write.group_id, write.caller)
    if caller is None or not caller["active"]:
        raise Forbidden("you are not a member of this group")
    is_admin = int(caller["role"]) == Role.ADMIN
    if isinstance(write, AddMembers):
        if not is_admin:
            raise Forbidden("only admins add members")
        return await _add(batch, group, write)
    if isinstance(write, RemoveMember):
        if write.user_id != write.caller and not is_admin:
            raise Forbidden("only admins remove others; anyone may leave")
        return await _remove(batch, group, write)
    if not is_admin:
        raise Forbidden("only admins rename the group")
    if group["title"] == write.title:
        return Changed(await _group(batch.query, group), False)
    seq = await batch.change_number()
    await batch.execute(
        "UPDATE chat_group SET title = ?, change_seq = ? WHERE id = ?", [write.title, seq, group["id"]]
    )
    batch.witness(_group_at(group["id"], seq))
    return Changed(await _group(batch.query, {**group, "title": write.title}), True)


async def _create(batch: Batch, write: CreateGroup) -> Changed:
    if write.request_id is not None:
        rows = await batch.query(
            f"SELECT {GROUP_COLUMNS} FROM chat_group WHERE created_by = ? AND client_request_id = ?",
            [write.creator, write.request_id],
        )
        if rows:  # a retry: the first group, nothing created
            return Changed(await _group(batch.query, rows[0]), False)
    seq = await batch.change_number()
    group_id = str(uuidlib.uuid4())
    now = now_ms()
    await batch.execute(
        "INSERT INTO chat_group (id, title, avatar, created_by, created_at, client_request_id,"
        " member_count, message_count, last_message_id, last_at, change_seq)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?)",
        [group_id, write.title, None, write.creator, now, write.request_id,
         1 + len(write.member_ids), now, seq],
    )
    batch.witness(_group_at(group_id, seq), exact=True)
    roles = [(write.creator, Role.ADMIN)] + [(u, Role.MEMBER) for u in write.member_ids]
    await _join(batch, group_id, roles, last_row=0, message_count=0, seq=seq, now=now)
    group = await batch.query(f"SELECT {GROUP_COLUMNS} FROM chat_group WHERE id = ?", [group_id])
    return Changed(await _group(batch.query, group[0]), True)


async def _add(batch: Batch, group: dict[str, Any], write: AddMembers) -> Changed:
    wanted = [u for u in dict.fromkeys(write.user_ids)]
    rows = await _member_rows(batch, group["id"], wanted)
    new = [u for u in wanted if not (u in rows and rows[u]["active"])]
    if not new:
        return Changed(await _group(batch.query, group), False)
    size = int(group["member_count"]) + len(new)
    if size > write.max_size:
        raise InvalidArgument(f"a group holds at most {write.max_size} members ({size} with these)")
    seq = await batch.change_number()
    await _join(
        batch, group["id"], [(u, Role.MEMBER) for u in new], last_row=int(group["last_message_id"]),
        message_count=int(group["message_count"]), seq=seq, now=now_ms(),
    )
    await batch.execute(
        "UPDATE chat_group SET member_count = ?, change_seq = ? WHERE id = ?",
        [size, seq, group["id"]],
    )
    batch.witness(_group_at(group["id"], seq))
    return Changed(await _group(batch.query, group), True)


async def _join(
    batch: Batch, group_id: str, roles: list[tuple[str, Role]], last_row: int,
    message_count: int, seq: int, now: Any,
) -> None:
    """Members in (again): they see and receive what comes after the group's latest message."""
    columns = (
        "group_id", "user_id", "role", "active", "joined_at", "joined_row", "delivered_upto",
        "read_upto", "read_messages", "own_unread", "change_seq",
    )
    for chunk in chunks(roles, 200):
        params: list[Any] = []
        for user_id, role in chunk:
            params += [group_id, user_id, int(role), True, now, last_row, last_row, last_row,
                       message_count, 0, seq]
        await batch.execute(
            batch.sql.upsert(
                "chat_group_member", columns, "group_id, user_id", len(chunk), columns[2:]
            ),
            params,
        )


async def _remove(batch: Batch, group: dict[str, Any], write: RemoveMember) -> Changed:
    target = await _member_row(batch, group["id"], write.user_id)
    if target is None or not target["active"]:
        raise NotFound("no such member of this group")
    seq = await batch.change_number()
    await batch.execute(
        "UPDATE chat_group_member SET active = ?, change_seq = ? WHERE id = ?",
        [False, seq, target["id"]],
    )
    if int(target["role"]) == Role.ADMIN:
        admins = await batch.query(
            "SELECT id FROM chat_group_member WHERE group_id = ? AND active = ? AND role = ?",
            [group["id"], True, int(Role.ADMIN)],
        )
        if not admins:  # the last admin went: the member who joined first takes over
            await batch.execute(
                "UPDATE chat_group_member SET role = ? WHERE id = (SELECT id FROM"
                " (SELECT id FROM chat_group_member WHERE group_id = ? AND active = ?"
                " ORDER BY joined_at, id LIMIT 1) AS first_member)",
                [int(Role.ADMIN), group["id"], True],
            )
    await batch.execute(
        "UPDATE chat_group SET member_count = member_count - 1, change_seq = ? WHERE id = ?",
        [seq, group["id"]],
    )
    batch.witness(_group_at(group["id"], seq))
    return Changed(await _group(batch.query, group), True, removed=(write.user_id,))


async def _group_row(batch: Batch, group_id: str) -> dict[str, Any]:
    rows = await batch.query(
        f"SELECT {GROUP_COLUMNS}, message_count FROM chat_group WHERE id = ?", [group_id]
    )
    if not rows:
        raise NotFound("no such group")
    return rows[0]


async def _member_row(batch: Batch, group_id: str, user_id: str) -> dict[str, Any] | None:
    rows = await _member_rows(batch, group_id, [user_id])
    return rows.get(user_id)


async def _member_rows(batch: Batch, group_id: str, user_ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for chunk in chunks(user_ids):
        for row in await batch.query(
            f"SELECT {MEMBER_COLUMNS} FROM chat_group_member"
            f" WHERE group_id = ? AND user_id IN ({marks(len(chunk))})",
            [group_id, *chunk],
        ):
            found[row["user_id"]] = row
    return found


def _group_at(group_id: str, seq: int) -> Witness:
    async def check(batch: Batch) -> bool:
        rows = await batch.query("SELECT change_seq FROM chat_group WHERE id = ?", [group_id])
        return bool(rows) and int(rows[0]["change_seq"]) == seq

    return check


# -- sends ------------------------------------------------------------------------------------


async def check_sends(batch: Batch, new: list[tuple[int, NewMessage]]) -> list[tuple[int, NewMessage]]:
    """Refuse group sends from non-members; note each send's recipients. Return what may go in."""
    sends = [(i, w) for i, w in new if w.group_id is not None]
    if not sends:
        return new
    await batch.hold_changes()
    group_ids = list(dict.fromkeys(w.group_id or "" for _, w in sends))
    groups: dict[str, dict[str, Any]] = {}
    for chunk in chunks(group_ids):
        for row in await batch.query(
            f"SELECT {GROUP_COLUMNS}, message_count FROM chat_group WHERE id IN ({marks(len(chunk))})",
            chunk,
        ):
            groups[row["id"]] = row
    senders: dict[tuple[str, str], dict[str, Any]] = {}
    for gid in group_ids:
        wanted = list(dict.fromkeys(w.sender_id for _, w in sends if w.group_id == gid))
        for user_id, row in (await _member_rows(batch, gid, wanted)).items():
            senders[(gid, user_id)] = row
    batch.group_state.update(groups=groups, senders=senders)
    refused: set[int] = set()
    for i, w in sends:
        gid = w.group_id or ""
        sender = senders.get((gid, w.sender_id))
        if gid not in groups:
            batch.answer(i, NotFound("no such group"))
        elif sender is None or not sender["active"]:
            batch.answer(i, Forbidden("you are not a member of this group"))
        else:
            members = await _members_now(batch, groups[gid])
            batch.group_sends[i] = GroupSend(
                int(groups[gid]["member_count"]) - 1,
                tuple(m for m in members if m != w.sender_id),
            )
            continue
        refused.add(i)
    return [(i, w) for i, w in new if i not in refused]


async def _members_now(batch: Batch, group: dict[str, Any]) -> tuple[str, ...]:
    seq = int(group["change_seq"])
    # A list this batch changed is not committed yet: not for the cache.
    return await batch.members.members(batch.query, group["id"], seq, keep=seq != batch.seq)


async def count_sent(batch: Batch, stored_messages: list[tuple[int, ChatMessage]]) -> None:
    """Group messages stored: the group's counters, and each sender's own position.

    A sender who had read everything stays so (their read position moves over
    their own message); otherwise their own message waits after their read
    position, not counted as unread for them.
    """
    if not stored_messages:
        return
    groups: dict[str, dict[str, Any]] = batch.group_state["groups"]
    senders: dict[tuple[str, str], dict[str, Any]] = batch.group_state["senders"]
    changed: dict[int, dict[str, Any]] = {}
    by_group: dict[str, list[ChatMessage]] = defaultdict(list)
    for i, message in stored_messages:
        by_group[message.group_id or ""].append(message)
        batch.answer(i, Sent(message, True, batch.group_sends[i].recipients))
    for gid, sent in by_group.items():
        group = groups[gid]
        last = int(group["last_message_id"])
        for message in sorted(sent, key=lambda m: m.row):
            member = senders[(gid, message.sender_id)]
            if int(member["read_upto"]) >= last:
                member["read_upto"] = member["delivered_upto"] = message.row
                member["read_messages"] = int(member["read_messages"]) + 1
            else:
                member["own_unread"] = int(member["own_unread"]) + 1
            changed[int(member["id"])] = member
            last = message.row
        await batch.execute(
            "UPDATE chat_group SET message_count = message_count + ?, last_message_id = ?,"
            " last_at = ? WHERE id = ?",
            [len(sent), last, sent[-1].created_at, gid],
        )
    await _write_members(batch, changed)


async def _write_members(batch: Batch, rows: dict[int, dict[str, Any]]) -> None:
    """Write members' positions and counts: one UPDATE per distinct set of values.

    Members moving over the same range of a group end with the same values
    (but for the few whose own messages were in it), so a thousand readers of
    the latest message are one statement with a list of ids.
    """
    columns = ("delivered_upto", "read_upto", "read_messages", "own_unread")
    alike: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for row_id, row in rows.items():
        alike[tuple(int(row[c]) for c in columns)].append(row_id)
    sets = ", ".join(f"{c} = ?" for c in columns)
    for values, ids in alike.items():
        for chunk in chunks(ids):
            await batch.execute(
                f"UPDATE chat_group_member SET {sets} WHERE id IN ({marks(len(chunk))})",
                [*values, *chunk],
            )


# -- positions: receipts on group messages, and MarkGroupRead --------------------------------


@dataclass(slots=True)
class _Move:
    index: int
    user_id: str
    group_id: str
    target: int  # a message row; 0: the group's latest
    read: bool


async def move_positions(batch: Batch) -> None:
    """Move members' delivered and read positions; count; move aggregates that are reached."""
    moves: list[_Move] = []
    for i, receipt, message in batch.group_receipts:
        moves.append(
            _Move(i, receipt.user_id, message.group_id or "", message.row, receipt.status == Status.READ)
        )
    for i, write in batch.of(MarkGroupRead):
        moves.append(_Move(i, write.caller, write.group_id, 0, True))
    if not moves:
        return
    await batch.hold_changes()
    receipts = {i: message for i, _, message in batch.group_receipts}
    groups: dict[str, dict[str, Any]] = {}
    for chunk in chunks(list({m.group_id for m in moves})):
        for row in await batch.query(
            f"SELECT {GROUP_COLUMNS}, message_count FROM chat_group WHERE id IN ({marks(len(chunk))})",
            chunk,
        ):
            groups[row["id"]] = row
    # A sender's row was read by check_sends, and count_sent writes it back after this
    # step: moving that same row keeps the move (a copy read here would be overwritten).
    senders: dict[tuple[str, str], dict[str, Any]] = batch.group_state.get("senders", {})
    members: dict[tuple[str, str], dict[str, Any]] = {}
    for gid in groups:
        wanted = {m.user_id for m in moves if m.group_id == gid}
        members.update({(gid, u): senders[(gid, u)] for u in wanted if (gid, u) in senders})
        missing = [u for u in wanted if (gid, u) not in senders]
        if missing:
            for user_id, row in (await _member_rows(batch, gid, missing)).items():
                members[(gid, user_id)] = row

    # Who may move, and to where: a member now, and (for a receipt) a recipient of that message.
    valid: list[_Move] = []
    for move in moves:
        member = members.get((move.group_id, move.user_id))
        received = receipts.get(move.index)
        if move.group_id not in groups:
            batch.answer(move.index, NotFound("no such group"))
        elif member is None or not member["active"]:
            batch.answer(
                move.index,
                ReceiptOutcome(ReceiptResult.NOT_RECEIVER) if received is not None
                else Forbidden("you are not a member of this group"),
            )
        elif received is not None and (
            received.sender_id == move.user_id or received.row <= int(member["joined_row"])
        ):
            batch.answer(move.index, ReceiptOutcome(ReceiptResult.NOT_RECEIVER))
        else:
            if not move.target:
                move.target = int(groups[move.group_id]["last_message_id"])
            valid.append(move)

    # Each member's furthest move; reading a message also delivers it.
    old: dict[tuple[str, str], tuple[int, int]] = {}
    for move in valid:
        member = members[(move.group_id, move.user_id)]
        key = (move.group_id, move.user_id)
        old.setdefault(key, (int(member["delivered_upto"]), int(member["read_upto"])))
        member["delivered_upto"] = max(int(member["delivered_upto"]), move.target)
        if move.read:
            member["read_upto"] = max(int(member["read_upto"]), move.target)

    # Counts: one UPDATE per distinct range per group, shared by every member moving over it.
    read_ranges: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    delivered_ranges: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    for (gid, user_id), (delivered, read) in old.items():
        member = members[(gid, user_id)]
        if int(member["delivered_upto"]) > delivered:
            delivered_ranges[(gid, delivered, int(member["delivered_upto"]))].append(user_id)
        if int(member["read_upto"]) > read:
            read_ranges[(gid, read, int(member["read_upto"]))].append(user_id)
    # Reading implies receiving: a reader who had received up to where they had read
    # moves both counts over the same range, in one statement.
    both = {key for key, movers in read_ranges.items() if delivered_ranges.get(key) == movers}
    for columns, ranges in (
        (("delivered_count", "read_count"), {k: read_ranges[k] for k in both}),
        (("delivered_count",), {k: v for k, v in delivered_ranges.items() if k not in both}),
        (("read_count",), {k: v for k, v in read_ranges.items() if k not in both}),
    ):
        for (gid, low, high), movers in ranges.items():
            step = f" + ? - (CASE WHEN sender_id IN ({marks(len(movers))}) THEN 1 ELSE 0 END)"
            await batch.execute(
                "UPDATE chat_message SET " + ", ".join(f"{c} = {c}{step}" for c in columns)
                + " WHERE pair_key = ? AND id > ? AND id <= ?",
                [*([len(movers), *movers] * len(columns)), group_thread(gid), low, high],
            )
    # Unread bookkeeping: how many messages each reader passed, how many of them their own.
    marked: dict[tuple[str, str], int] = {}
    for (gid, low, high), readers in read_ranges.items():
        by_sender = {
            r["sender_id"]: int(r["n"])
            for r in await batch.query(
                "SELECT sender_id, COUNT(*) AS n FROM chat_message"
                " WHERE pair_key = ? AND id > ? AND id <= ? GROUP BY sender_id",
                [group_thread(gid), low, high],
            )
        }
        total = sum(by_sender.values())
        for user_id in readers:
            member = members[(gid, user_id)]
            own = by_sender.get(user_id, 0)
            member["read_messages"] = int(member["read_messages"]) + total
            member["own_unread"] = max(0, int(member["own_unread"]) - own)
            marked[(gid, user_id)] = total - own
    await _write_members(
        batch, {int(members[key]["id"]): members[key] for key in old if _moved(members[key], old[key])}
    )
    moved = await _aggregates(batch, delivered_ranges, read_ranges)
    if old and any(_moved(members[k], old[k]) for k in old):
        first = next(k for k in old if _moved(members[k], old[k]))
        batch.witness(_position_at(int(members[first]["id"]), members[first]))
    await _answer_moves(batch, valid, members, old, marked, moved)


def _moved(member: dict[str, Any], old: tuple[int, int]) -> bool:
    return (int(member["delivered_upto"]), int(member["read_upto"])) != old


async def _aggregates(
    batch: Batch,
    delivered: dict[tuple[str, int, int], list[str]],
    read: dict[tuple[str, int, int], list[str]],
) -> dict[str, list[ChatMessage]]:
    """Messages whose every recipient now has them (or has read them): their status moves."""
    spans: dict[str, tuple[int, int]] = {}
    for gid, low, high in (*delivered, *read):
        lo, hi = spans.get(gid, (low, high))
        spans[gid] = (min(lo, low), max(hi, high))
    moved: dict[str, list[ChatMessage]] = {}
    for gid, (low, high) in spans.items():
        rows = await batch.query(
            f"SELECT {MESSAGE_COLUMNS}, read_count, recipient_count, (SELECT active FROM"
            " chat_group_member gm WHERE gm.group_id = chat_message.group_id"
            " AND gm.user_id = chat_message.sender_id) AS sender_active FROM chat_message"
            " WHERE pair_key = ? AND id > ? AND id <= ? AND recipient_count > 0"
            " AND ((status < ? AND read_count >= recipient_count)"
            " OR (status < ? AND delivered_count >= recipient_count))",
            [group_thread(gid), low, high, int(Status.READ), int(Status.DELIVERED)],
        )
        if not rows:
            continue
        seq = await batch.change_number()
        now_status = {
            int(r["id"]): Status.READ if int(r["read_count"]) >= int(r["recipient_count"])
            else Status.DELIVERED
            for r in rows
        }
        for status in (Status.DELIVERED, Status.READ):
            ids = [row for row, s in now_status.items() if s == status]
            for chunk in chunks(ids):
                await batch.execute(
                    f"UPDATE chat_message SET status = ?, change_seq = ? WHERE id IN ({marks(len(chunk))})",
                    [int(status), seq, *chunk],
                )
        # Stored for everyone; told only to senders still in the group (one who left
        # hears nothing of it any more).
        moved[gid] = [
            with_status(message_from_row(r), now_status[int(r["id"])], seq)
            for r in rows
            if r["sender_active"]
        ]
    return moved




def _position_at(member_id: int, member: dict[str, Any]) -> Witness:
    delivered, read = int(member["delivered_upto"]), int(member["read_upto"])

    async def check(batch: Batch) -> bool:
        rows = await batch.query(
            "SELECT delivered_upto, read_upto FROM chat_group_member WHERE id = ?", [member_id]
        )
        return bool(rows) and (int(rows[0]["delivered_upto"]), int(rows[0]["read_upto"])) >= (
            delivered, read
        )

    return check


async def _answer_moves(
    batch: Batch,
    moves: list[_Move],
    members: dict[tuple[str, str], dict[str, Any]],
    old: dict[tuple[str, str], tuple[int, int]],
    marked: dict[tuple[str, str], int],
    moved: dict[str, list[ChatMessage]],
) -> None:
    """Each move's answer. The aggregate moves of a group go with its first answer (no repeats);
    a reader's new read position with their last."""
    positions = await _message_ids(
        batch, {int(members[k]["read_upto"]) for k in old if int(members[k]["read_upto"]) > old[k][1]}
    )
    told: set[str] = set()
    last_read = {(m.group_id, m.user_id): m.index for m in moves if m.read}
    receipts = {i for i, _, _ in batch.group_receipts}
    for move in moves:
        key = (move.group_id, move.user_id)
        member = members[key]
        delivered0, read0 = old[key]
        aggregate = () if move.group_id in told else tuple(moved.get(move.group_id, ()))
        told.add(move.group_id)
        read_moved = int(member["read_upto"]) > read0
        position = (
            positions.get(int(member["read_upto"]))
            if read_moved and last_read.get(key) == move.index else None
        )
        if move.index in receipts:
            reached = (read0 if move.read else delivered0) >= move.target
            batch.answer(
                move.index,
                ReceiptOutcome(
                    ReceiptResult.ALREADY if reached else ReceiptResult.CHANGED,
                    list(aggregate), move.group_id, position,
                ),
            )
        else:
            batch.answer(
                move.index,
                MarkedRead(marked.get(key, 0) if position else 0, position, aggregate),
            )


async def _message_ids(batch: Batch, rows: Iterable[int]) -> dict[int, str]:
    wanted = [r for r in rows if r]
    found: dict[int, str] = {}
    for chunk in chunks(wanted):
        for r in await batch.query(
            f"SELECT id, uuid FROM chat_message WHERE id IN ({marks(len(chunk))})", chunk
        ):
            found[int(r["id"])] = str(r["uuid"])
    return found
