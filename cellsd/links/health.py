"""The health of one neighbour, with hysteresis: up, suspect, down, disabled.

A :class:`NeighbourHealth` follows the links of one neighbour on the
injected clock and says what state the neighbour is in and why. The state
is computed from timestamps when it is asked for, so no timer is left
behind and a ``task.Clock`` drives every transition in tests.

The transitions (thresholds from ``[cells]``, defaults in brackets):

* **never connected** → *down* ("not connected yet"); the first link that
  comes up makes the neighbour *up* at once (it has no history of flapping).
* *up* → the last live link is lost → *suspect*.
* *suspect* (no live link) → *down* after ``health_down_after`` seconds
  without a live link [30 s], or after ``health_down_failures``
  consecutive failed attempts (connections that failed or were refused)
  [3], whichever comes first.
* *suspect* → a link comes back before the neighbour went down → *up*.
* *down* → a link comes back → *suspect* ("recovering") until the link has
  stayed up ``health_up_after`` seconds [10 s] → *up*. A recovering
  neighbour whose link drops again is *down* at once: it never recovered.
* *disabled* is set and cleared by the operator (configuration); it wins
  over everything else and keeps its own reason.
* A neighbour added while the cell runs (a configuration reload,
  :mod:`cellsd.ops.reload`) starts *joining*: it counts as *disabled*
  ("joining: …") until its first link is up, which enables it at once (the
  state it is then in is *up*). No call is sent to it and the scheduler
  does not pick it before that.

Calls are refused at once whenever a neighbour has no live link (suspect or
down); the runner reports :meth:`NeighbourHealth.reason` in the
CellUnreachable it answers. The scheduler skips *down* and *disabled* cells.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

#: Seconds without a live link before a suspect neighbour is down.
DEFAULT_DOWN_AFTER = 30.0
#: Consecutive failed attempts before a neighbour without a link is down.
DEFAULT_DOWN_FAILURES = 3
#: Seconds a link must stay up before a neighbour that was down is up again.
DEFAULT_UP_AFTER = 10.0
#: The reason a neighbour added by a reload gives until its link is up.
JOINING_REASON = "joining: added by a configuration reload; enabled once its link is up"


class Health(enum.Enum):
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"
    DISABLED = "disabled"


@attrs.frozen
class HealthThresholds:
    """The hysteresis of :class:`NeighbourHealth` (see the module doc)."""

    down_after: float = DEFAULT_DOWN_AFTER
    down_failures: int = DEFAULT_DOWN_FAILURES
    up_after: float = DEFAULT_UP_AFTER

    @classmethod
    def from_settings(cls, cells: Any) -> HealthThresholds:
        """From a ``[cells]`` section; missing fields take the defaults."""
        return cls(
            down_after=getattr(cells, "health_down_after", DEFAULT_DOWN_AFTER),
            down_failures=getattr(cells, "health_down_failures", DEFAULT_DOWN_FAILURES),
            up_after=getattr(cells, "health_up_after", DEFAULT_UP_AFTER),
        )


class NeighbourHealth:
    """The health state machine of one neighbour (see the module doc)."""

    def __init__(self, clock: IReactorTime, thresholds: HealthThresholds | None = None) -> None:
        self.clock = clock
        self.thresholds = thresholds or HealthThresholds()
        self._live = False
        self._ever_up = False
        #: Clock time of the last change between "some live link" and "none".
        self._since = clock.seconds()
        #: The link is live again after the neighbour was down.
        self._recovering = False
        #: Lost while recovering: down until a link comes back.
        self._latched = False
        self._failing = 0
        self._last_error: str | None = None
        self._disabled: str | None = None
        self._joining = False

    # -- events --------------------------------------------------------------

    def link_up(self) -> None:
        """The neighbour's first live link came up."""
        if self._live:
            return
        was_down = self.state() is Health.DOWN
        self._recovering = was_down and self._ever_up
        self._live, self._ever_up, self._latched = True, True, False
        self._since = self.clock.seconds()
        self._failing = 0
        self._joining = False

    def link_lost(self, why: str | None = None) -> None:
        """The neighbour's last live link was lost."""
        if not self._live:
            return
        self._latched = self.state() is Health.SUSPECT
        self._live, self._recovering = False, False
        self._since = self.clock.seconds()
        self._last_error = why or "the link was lost"

    def attempt_failed(self, why: str) -> None:
        """A connection to or from the neighbour failed or was refused
        before it became a link."""
        if self._live:
            return
        self._failing += 1
        self._last_error = why

    def disable(self, reason: str = "disabled by configuration") -> None:
        self._disabled = reason

    def enable(self) -> None:
        self._disabled = None

    def join(self) -> None:
        """A neighbour added while running: disabled until its first link
        is up (see the module doc); a live link already counts."""
        self._joining = not self._live

    @property
    def joining(self) -> bool:
        return self._joining

    # -- queries -------------------------------------------------------------

    def state(self) -> Health:
        return self.evaluate()[0]

    def reason(self) -> str:
        return self.evaluate()[1]

    def evaluate(self) -> tuple[Health, str]:
        """The state now, and why in words an operator can act on."""
        if self._disabled is not None:
            return Health.DISABLED, self._disabled
        if self._joining:
            return Health.DISABLED, JOINING_REASON
        t = self.thresholds
        age = self.clock.seconds() - self._since
        if self._live:
            if self._recovering and age < t.up_after:
                return Health.SUSPECT, (
                    f"recovering: link up for {age:.0f}s, up after {t.up_after:g}s"
                )
            self._recovering = False
            return Health.UP, f"link up for {age:.0f}s"
        last = f": {self._last_error}" if self._last_error else ""
        if not self._ever_up:
            tries = f" after {self._failing} failed attempts" if self._failing else ""
            return Health.DOWN, f"not connected yet{tries}{last}"
        if self._latched:
            return Health.DOWN, f"link lost again while recovering{last}"
        if self._failing >= t.down_failures:
            return Health.DOWN, f"{self._failing} consecutive failed attempts{last}"
        if age >= t.down_after:
            return Health.DOWN, f"no live link for {age:.0f}s{last}"
        return Health.SUSPECT, f"no live link for {age:.0f}s{last}"

    def as_dict(self) -> dict[str, Any]:
        state, reason = self.evaluate()
        return {"state": state.value, "reason": reason}

    def usable(self) -> bool:
        """Whether the scheduler may pick this neighbour (not down or
        disabled)."""
        return self.state() not in (Health.DOWN, Health.DISABLED)
