"""Message method arguments checked against their annotations
(cellsd.messaging.arguments), and what a caller is told when one is wrong."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
from twisted.internet.task import Clock

from cellsd.context import RequestContext
from cellsd.errors import InvalidArguments
from cellsd.messaging.arguments import (
    argument_checks,
    check_arguments,
    filter_values,
    integer,
    mapping,
)
from cellsd.messaging.methods import install_cell_methods
from cellsd.messaging.runner import MessageRunner
from cellsd.state import CellStateManager


def method(
    message: Any,
    name: str,
    count: int,
    ratio: float,
    flag: bool,
    tags: list[str],
    caps: Mapping[str, Iterable[str]],
    note: str | None = None,
    anything: Any = None,
    seq: Sequence[int] = (),
) -> None:
    """A method with one argument of each kind the checks know."""


CHECKS = argument_checks(method)
GOOD: dict[str, Any] = {
    "name": "a",
    "count": 1,
    "ratio": 1,
    "flag": False,
    "tags": ["x"],
    "caps": {"os": ["linux"]},
}


def reason(**changes: Any) -> str | None:
    try:
        check_arguments("method", CHECKS, {**GOOD, **changes})
    except InvalidArguments as e:
        return str(e)
    return None


def test_valid_arguments_pass() -> None:
    """The good arguments, local forms (tuples, sets) and optional ones
    pass; Any and the message are not checked."""
    assert reason() is None
    assert reason(tags=("x", "y"), caps={"os": {"linux"}}, seq=(1, 2)) is None
    assert reason(note=None) is None
    assert reason(note="n", anything=object()) is None
    assert set(CHECKS) == {"name", "count", "ratio", "flag", "tags", "caps", "note", "seq"}


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"name": []}, "name must be a string, not a list"),
        ({"count": True}, "count must be an integer, not a boolean"),
        ({"count": 1.5}, "count must be an integer, not a number"),
        ({"ratio": "1"}, "ratio must be a number, not a string"),
        ({"flag": 0}, "flag must be a boolean, not a number"),
        ({"tags": "x"}, "tags must be a list, not a string"),
        ({"tags": ["x", 3]}, "tags[1] must be a string, not a number"),
        ({"caps": []}, "caps must be an object, not a list"),
        ({"caps": {"os": 5}}, "caps['os'] must be a list, not a number"),
        ({"caps": {"os": [None]}}, "caps['os'][0] must be a string, not null"),
        ({"note": 5}, "note must be a string or null, not a number"),
    ],
)
def test_wrong_types_named(changes: dict[str, Any], says: str) -> None:
    """A wrong argument is named with where in it, what it must be, and
    what it is (in JSON's words)."""
    assert reason(**changes) == f"Bad arguments for method: {says}"


def test_loose_arguments() -> None:
    """Ids as integers or digit strings; objects (None: empty) with the
    keys required; filters of values or lists of values."""
    assert integer("m", "id", 5) == 5
    assert integer("m", "id", " 42") == 42
    for bad in ("x", True, None, 1.5, [1]):
        with pytest.raises(InvalidArguments, match="id must be an integer"):
            integer("m", "id", bad)
    assert mapping("m", "info", None) == {}
    assert mapping("m", "info", {"a": 1}, ("a",)) == {"a": 1}
    with pytest.raises(InvalidArguments, match="info has no 'b'"):
        mapping("m", "info", {"a": 1}, ("a", "b"))
    with pytest.raises(InvalidArguments, match="info must be an object, not a list"):
        mapping("m", "info", [("a", 1)])
    assert filter_values("m", {"uuid": ["a", "b"], "deleted": False}) == {
        "uuid": ["a", "b"],
        "deleted": False,
    }
    with pytest.raises(InvalidArguments, match="filter 'host' must be a value or a list"):
        filter_values("m", {"host": {"name": "h"}})


def test_runner_answers_invalid_arguments() -> None:
    """Injected: update_capabilities with a capability list of numbers,
    executed by a runner. Seen: a failure Response carrying InvalidArguments
    naming the argument, the type it must have and the one it got."""
    clock = Clock()
    state = CellStateManager("api", [], clock)
    runner = MessageRunner(state, None, clock)  # type: ignore[arg-type]  # no message leaves
    install_cell_methods(runner)
    d = runner.send_targeted(
        RequestContext(is_admin=True),
        "api",
        "update_capabilities",
        {"cell_name": "child1", "capabilities": {"os": [1]}},
        need_response=True,
    )
    answered: list[Any] = []
    d.addCallback(answered.append)
    (response,) = answered
    assert response.failure
    assert isinstance(response.value, InvalidArguments)
    assert "capabilities['os'][0] must be a string, not a number" in str(response.value)
