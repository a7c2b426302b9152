"""The cells scheduler, its filters and weighers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from twisted.internet.defer import Deferred


class ICellScheduler(Interface):
    """Decides where build_instances goes from this cell (behaviour §6)."""

    def build_instances(message: Any, build_inst_kwargs: Mapping[str, Any]) -> Deferred[Any]:
        """Build here or hand the request to a child cell; fires with where
        the build went (None once it was seen through here)."""


class ICellFilter(Interface):
    """A cells scheduler filter (behaviour §6.3), named in ``[scheduler]
    filters`` by :attr:`name` or by dotted path (``package.module.Class``).
    Filters run in the configured order on every cell the build reaches."""

    name = Attribute("The name ``[scheduler] filters`` lists the filter by.")

    def filter_all(cells: Sequence[Any], request: Any) -> Sequence[Any]:
        """The candidate cells (CellState) that pass, in their order, for a
        cellsd.scheduler.request.SchedulingRequest. Must not change the
        request; a request it refuses raises a CellsError (not retried)."""


class ICellWeigher(Interface):
    """A cells scheduler weigher (behaviour §6.4), named in ``[scheduler]
    weighers`` by :attr:`name` or by dotted path. Each cell's raw value is
    normalized to [0, 1] over the candidates of one request when
    :attr:`normalize` is true, then multiplied by the configured (else the
    default) multiplier and added to the cell's weight."""

    name = Attribute("The name ``[scheduler] weighers`` lists the weigher by.")
    multiplier = Attribute("The default multiplier (float).")
    normalize = Attribute("Whether raw values are normalized per request (bool).")

    def weigh(cell: Any, request: Any) -> float:
        """The raw value of one candidate cell (CellState) for the request."""
