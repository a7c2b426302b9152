"""CellStore: the database of one cell, every method returning a Deferred.

The methods live in one module per responsibility (instances, records,
hosts, actions, cells) on top of :class:`~cellsd.store.core.StoreCore`, which
runs each call's SQL in one transaction on a Twisted thread pool.
"""

from __future__ import annotations

from zope.interface import implementer

from cellsd.interfaces import ICellStore, IDeliveryStore
from cellsd.store.actions import ActionStore
from cellsd.store.cells import CellTableStore
from cellsd.store.delivery import DeliveryStore
from cellsd.store.hosts import HostStore
from cellsd.store.instances import InstanceStore
from cellsd.store.records import RecordStore


@implementer(ICellStore, IDeliveryStore)
class CellStore(InstanceStore, RecordStore, HostStore, ActionStore, CellTableStore, DeliveryStore):
    """A cell's store: ``CellStore(reactor, url, threadpool=None)``, then
    ``start()`` (connects and migrates) and finally ``stop()``.

    ``url`` is ``sqlite:///PATH`` or ``postgresql://...`` (run through
    psycopg 3).
    """
