"""``async def`` inside, Deferreds at the public edges."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred

P = ParamSpec("P")
R = TypeVar("R")


def async_to_deferred(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Deferred[R]]:
    """Make a coroutine function return a Deferred (started at once)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Deferred[R]:
        return Deferred.fromCoroutine(fn(*args, **kwargs))

    return wrapper
