"""The argument binder: counts, JSON types, optional arguments, defaults (no server)."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import InvalidArgument
from handlers.chat import ChatNamespace
from handlers.routing import EVENTS, Route, routes_of


class Hub:
    async def send(
        self, caller: Any, sender_id: str, count: int, flag: bool, note: str | None = None
    ) -> None: ...

    async def page(self, caller: Any, cursor: str | None = None, limit: int = 200) -> None: ...


SEND = Route.of("Send", Hub().send)
PAGE = Route.of("Page", Hub().page)


def test_params_are_read_from_the_signature_in_wire_names() -> None:
    assert [p.wire for p in SEND.params] == ["senderId", "count", "flag", "note"]
    assert SEND.required == 3 and PAGE.required == 0


def test_missing_optional_arguments_take_their_defaults() -> None:
    assert SEND.bind(("a", 1, True)) == ["a", 1, True, None]
    assert PAGE.bind(()) == [None, 200]
    assert PAGE.bind(("c", 7)) == ["c", 7]


def test_integers_up_to_javascripts_safe_limit_are_accepted() -> None:
    assert SEND.bind(("a", 2**53 - 1, True))[1] == 2**53 - 1
    assert SEND.bind(("a", -(2**53 - 1), True))[1] == -(2**53 - 1)


def test_integral_doubles_become_integers_and_none_is_accepted_where_optional() -> None:
    assert SEND.bind(("a", 5.0, False, None)) == ["a", 5, False, None]
    assert isinstance(SEND.bind(("a", 5.0, False))[1], int)
    assert PAGE.bind((None, 3)) == [None, 3]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "takes 3 to 4 arguments, got 0"),
        (("a", 1, True, "n", "extra"), "takes 3 to 4 arguments, got 5"),
        ((1, 1, True), "senderId must be a string"),
        (("a", "1", True), "count must be an integer"),
        (("a", True, True), "count must be an integer"),
        (("a", 1.5, True), "count must be an integer"),
        (("a", float("nan"), True), "count must be an integer"),
        (("a", 10**30, True), "count must be an integer of at most 15 digits"),
        (("a", -(2**53), True), "count must be an integer of at most 15 digits"),
        (("a", int("9" * 120), True), "count must be an integer of at most 15 digits"),
        (("a", 1, 1), "flag must be a boolean"),
        (("a", 1, True, 7), "note must be a string"),
        ((None, 1, True), "senderId is required"),
        ((["a"], 1, True), "senderId must be a string"),
    ],
)
def test_wrong_count_or_type_is_invalid_argument_naming_the_parameter(
    args: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        SEND.bind(args)


def test_every_hub_method_of_the_protocol_has_a_route() -> None:
    routes = routes_of(ChatNamespace.__new__(ChatNamespace))
    assert set(routes) == set(EVENTS)
    assert [p.wire for p in routes["SendMessage"].params] == [
        "senderId", "receiverId", "message", "clientMessageId",
    ]
    assert [p.wire for p in routes["GetMessageHistory"].params] == [
        "user1Id", "user2Id", "skip", "take",
    ]
