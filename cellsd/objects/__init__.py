"""Versioned objects and their primitive (wire) form.

Importing this package registers every object class, so that
:func:`cellsd.objects.base.deserialize` can rebuild them.
"""

from cellsd.objects.base import CellsObject, PersistentObject
from cellsd.objects.compute import ComputeNode, Migration, Service, TaskLog
from cellsd.objects.instance import Flavor, Instance
from cellsd.objects.records import (
    BandwidthUsage,
    BlockDeviceMapping,
    Cell,
    InstanceAction,
    InstanceActionEvent,
    InstanceFault,
    KeyPair,
)

__all__ = [
    "BandwidthUsage",
    "BlockDeviceMapping",
    "Cell",
    "CellsObject",
    "ComputeNode",
    "Flavor",
    "Instance",
    "InstanceAction",
    "InstanceActionEvent",
    "InstanceFault",
    "KeyPair",
    "Migration",
    "PersistentObject",
    "Service",
    "TaskLog",
]
