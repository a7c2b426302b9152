"""Progress on a terminal while cellsctl waits for a long answer.

A broadcast over many cells or a sync waits for the slowest cell, up to the
call's deadline. On a terminal, after half a second, cellsctl shows how
long it has waited and how long it will wait at most; the line is cleared
before the answer is printed. Nothing is written when stderr is not a
terminal, so pipes and ``--json`` consumers see only the answer.
"""

from __future__ import annotations

from typing import IO, Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Progress:
    def __init__(
        self,
        clock: IReactorTime,
        stream: IO[str],
        what: str,
        deadline: float,
        delay: float = 0.5,
        interval: float = 0.25,
    ) -> None:
        self.clock = clock
        self.stream = stream
        self.what = what
        self.deadline = deadline
        self.delay = delay
        self.interval = interval
        self._started = 0.0
        self._call: IDelayedCall | None = None
        self._shown = False

    def start(self) -> None:
        isatty: Any = getattr(self.stream, "isatty", None)
        if isatty is None or not isatty():
            return
        self._started = self.clock.seconds()
        self._call = self.clock.callLater(self.delay, self._tick)

    def _tick(self) -> None:
        waited = self.clock.seconds() - self._started
        self.stream.write(
            f"\r{self.what}: waiting for the cells, {waited:.1f}s "
            f"(deadline {self.deadline:.0f}s)\x1b[K"
        )
        self.stream.flush()
        self._shown = True
        self._call = self.clock.callLater(self.interval, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
