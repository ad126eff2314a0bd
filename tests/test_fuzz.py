"""Property-based fuzzing of every hub method over a real socket.

Hypothesis draws a method (a real one, or any name) and arguments mixing
plausible values (the users, a real message id, a real Sync cursor) with
hostile JSON (huge integers, NaN, lone surrogates, nesting, long strings).
Three invariants hold for every call:

1. it is answered with a well-formed envelope;
2. the answer is never ``internal`` (a client can always be told what it did);
3. a refused call leaves the database exactly as it was.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.chat import ChatNamespace
from handlers.routing import Param, routes_of
from tests.support import ChatClient, Connect, ServerFactory, db_snapshot

# What a refusal may say here. Not `internal`, ever; not `unavailable` or
# `rate_limited` either: the database is up and the budget unlimited, so
# either would be a bad argument reaching where it should not (as `skip`
# = 10^30 once reached SQL and came back `unavailable`).
CODES = {"invalid_argument", "forbidden", "not_found", "unknown_event"}
MESSAGE_ID = "<a real message id>"
CURSOR = "<a real Sync cursor>"
GROUP_ID = "<a real group id>"
GROUP_MESSAGE_ID = "<a real group message id>"
EXAMPLES = 300

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(),  # NaN and ±Infinity included: JSON from Python clients carries them
    st.text(st.characters(codec=None, exclude_categories=()), max_size=20),  # lone surrogates too
    st.text(max_size=5000),
    st.sampled_from(["alice", "bob", "carol", "", " ", "x" * 65, "\u0000", MESSAGE_ID, CURSOR,
                     GROUP_ID, GROUP_MESSAGE_ID, "0.0", "1.2\n", "-1.5",
                     "99999999999999999999.1"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8,
)


class _Signatures:
    """The hub's handlers bound to nothing: enough for routing to read their parameters."""

    def __getattr__(self, name: str) -> Any:
        return types.MethodType(getattr(ChatNamespace, name), self)


ROUTES = routes_of(_Signatures())
user_ids = st.sampled_from(["alice", "alice", "bob", "bob", "carol", "x" * 64])
plausible: dict[type, st.SearchStrategy[Any]] = {
    # Mostly real ids: a call must get past "who are you" for its other arguments to matter.
    str: st.one_of(user_ids, user_ids, user_ids,
                   st.sampled_from([MESSAGE_ID, CURSOR, GROUP_ID, GROUP_MESSAGE_ID, "hello"]),
                   st.text(max_size=30)),
    # Small numbers, and the edges where integers stop fitting a double or a BIGINT.
    int: st.one_of(st.integers(-5, 300), st.sampled_from(
        [2**53 - 1, 2**53, 2**63 - 1, 2**63, 2**64, 10**30, -(2**53), -(2**63) - 1])),
    bool: st.booleans(),
    list: st.lists(st.one_of(user_ids, values), max_size=6),
}


# A valid call of every method; the fuzzer breaks one or two arguments of it at a
# time, so what it draws gets past "who are you" to the code behind.
VALID: dict[str, list[Any]] = {
    "RegisterUser": ["Alice"],
    "SendMessage": ["alice", "bob", "hi", None],
    "GetMessageHistory": ["alice", "bob", 0, 50],
    "GetOnlineStatus": ["bob"],
    "GetOnlineUsers": [],
    "MessageReceived": [MESSAGE_ID],
    "MessageRead": [MESSAGE_ID],
    "GetConversations": [],
    "MarkConversationRead": ["bob"],
    "Typing": ["bob", True],
    "Sync": [CURSOR, 200],
    "SubscribePresence": [["bob"]],
    "GetMessageReceipts": [GROUP_MESSAGE_ID],
    "CreateGroup": ["Team", ["bob", "carol"], None],
    "GetGroup": [GROUP_ID],
    "AddGroupMembers": [GROUP_ID, ["carol"]],
    "RemoveGroupMember": [GROUP_ID, "bob"],
    "RenameGroup": [GROUP_ID, "Another title"],
    "SendGroupMessage": [GROUP_ID, "hi all", None],
    "GetGroupHistory": [GROUP_ID, 0, 50],
    "MarkGroupRead": [GROUP_ID],
    "GroupTyping": [GROUP_ID, True],
}


@st.composite
def mutated_calls(draw: st.DrawFn) -> tuple[str, list[Any]]:
    event = draw(st.sampled_from(sorted(VALID)))
    params: tuple[Param, ...] = ROUTES[event].params
    args = list(VALID[event])
    for _ in range(draw(st.integers(1, 2)) if params else 0):
        i = draw(st.integers(0, len(params) - 1))
        args[i] = draw(st.one_of(plausible[params[i].kind], values))
    arity = draw(st.sampled_from(["keep", "keep", "keep", "fewer", "more"]))
    if arity == "fewer" and args:
        args = args[: draw(st.integers(0, len(args) - 1))]
    elif arity == "more" or not params:
        args = args + draw(st.lists(values, min_size=1, max_size=2))
    return event, args


calls = st.one_of(
    mutated_calls(),
    mutated_calls(),
    st.tuples(st.sampled_from(sorted(ROUTES)), st.lists(values, max_size=5)),
    st.tuples(st.text(max_size=12), st.lists(values, max_size=3)),
)


def test_every_hub_method_is_fuzzed() -> None:
    assert set(VALID) == set(ROUTES)
    assert all(len(VALID[e]) == len(ROUTES[e].params) for e in ROUTES)


Snapshot = Callable[[], Awaitable[dict[str, Any]]]


def well_formed(reply: Any) -> bool:
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        return False
    if reply["ok"]:
        return set(reply) == {"ok", "data"}
    error = reply.get("error")
    return (
        set(reply) == {"ok", "error"}
        and isinstance(error, dict)
        and set(error) == {"code", "message"}
        and isinstance(error["message"], str)
        and bool(error["message"])
    )


@pytest.fixture
async def fuzz_target(
    start_server: ServerFactory, connect: Connect
) -> tuple[TestServer, ChatClient, dict[str, str], Snapshot]:
    """A server with a little history, alice connected to call, and a database snapshot."""
    server = await start_server(rate_limit_per_s=100_000, rate_limit_burst=100_000)
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    first = await bob.ok("SendMessage", "bob", "alice", "hello", "c1")
    await alice.ok("SendMessage", "alice", "bob", "hi", "c2")
    cursor = (await alice.ok("Sync", None, 1))["cursor"]
    group = (await alice.ok("CreateGroup", "Care team", ["bob"], "g1"))["id"]
    in_group = await alice.ok("SendGroupMessage", group, "hello team", "c3")
    real = {MESSAGE_ID: first, CURSOR: cursor, GROUP_ID: group, GROUP_MESSAGE_ID: in_group}

    async def snapshot() -> dict[str, Any]:
        return await db_snapshot(server)

    return server, alice, real, snapshot


def substitute(value: Any, real: dict[str, str]) -> Any:
    if isinstance(value, str):
        return real.get(value, value)
    if isinstance(value, list):
        return [substitute(v, real) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, real) for k, v in value.items()}
    return value


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout; a failure prints its seed
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)
@given(call=calls)
async def test_every_call_gets_an_envelope_never_internal_and_refusals_change_nothing(
    fuzz_target: tuple[TestServer, ChatClient, dict[str, str], Snapshot],
    call: tuple[str, list[Any]],
) -> None:
    _, alice, real, snapshot = fuzz_target
    method, args = call
    args = substitute(args, real)
    before = await snapshot()
    reply = await alice.call(method, *args)
    assert well_formed(reply), (method, args, reply)
    if reply["ok"]:
        return
    code = reply["error"]["code"]
    assert code in CODES, (method, args, reply)
    assert await snapshot() == before, f"refused {method}{args} ({code}) changed the database"
