"""Versioned objects: primitive form, plain-dict form, change tracking."""

from __future__ import annotations

import datetime
from typing import Any

import orjson
from twisted.trial.unittest import SynchronousTestCase

from cellsd.errors import (
    IncompatibleObjectVersion,
    MalformedMessage,
    deserialize_remote_exception,
    serialize_remote_exception,
)
from cellsd.messaging.message import dumps
from cellsd.objects import (
    BandwidthUsage,
    BlockDeviceMapping,
    Cell,
    CellsObject,
    ComputeNode,
    Flavor,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    InstanceFault,
    KeyPair,
    Migration,
    Service,
    TaskLog,
)
from cellsd.objects.base import deserialize, obj_from_primitive

UTC = datetime.UTC
T0 = datetime.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def flavor() -> Flavor:
    return Flavor(
        id=7,
        flavorid="m1.small",
        name="m1.small",
        memory_mb=2048,
        vcpus=1,
        root_gb=20,
        ephemeral_gb=0,
        swap=0,
        extra_specs={"hw:cpu_policy": "shared"},
    )


#: One fully populated example of every object class.
EXAMPLES: dict[type[CellsObject], Any] = {
    Flavor: flavor,
    Instance: lambda: Instance(
        id=3,
        uuid="11111111-2222-3333-4444-555555555555",
        user_id="u",
        project_id="p",
        vm_state="active",
        task_state=None,
        host="host1",
        node="node1",
        flavor=flavor(),
        launched_at=T0,
        metadata={"k": "v"},
        system_metadata={"image_os": "linux"},
        info_cache=[{"id": "vif1", "address": "aa:bb"}],
        cell_name="api!child",
        locked=False,
        generation=4,
        created_at=T0,
    ),
    BlockDeviceMapping: lambda: BlockDeviceMapping(
        uuid="bdm-1",
        instance_uuid="i-1",
        source_type="volume",
        destination_type="volume",
        device_name="/dev/vdb",
        volume_id="vol-1",
        boot_index=None,
        delete_on_termination=True,
    ),
    Migration: lambda: Migration(
        id=1,
        source_compute="h1",
        dest_compute="h2",
        instance_uuid="i-1",
        status="migrating",
        migration_type="resize",
        hidden=False,
    ),
    Service: lambda: Service(
        id=1, host="h1", binary="nova-compute", topic="compute", last_seen_up=T0
    ),
    ComputeNode: lambda: ComputeNode(
        id=1,
        host="h1",
        hypervisor_hostname="h1.example",
        vcpus=8,
        memory_mb=1024,
        stats={"num_instances": "2"},
        supported_instances=[["x86_64", "kvm", "hvm"]],
    ),
    InstanceFault: lambda: InstanceFault(
        instance_uuid="i-1", code=500, message="boom", details="tb", host="h1"
    ),
    InstanceAction: lambda: InstanceAction(
        action="reboot", instance_uuid="i-1", request_id="req-1", start_time=T0
    ),
    InstanceActionEvent: lambda: InstanceActionEvent(
        event="compute_reboot_instance", action_id=1, start_time=T0, result="Success"
    ),
    KeyPair: lambda: KeyPair(name="k", user_id="u", fingerprint="f", public_key="ssh-rsa A"),
    TaskLog: lambda: TaskLog(
        task_name="instance_usage_audit",
        state="DONE",
        host="h1",
        period_beginning=T0,
        period_ending=T0 + datetime.timedelta(hours=1),
    ),
    BandwidthUsage: lambda: BandwidthUsage(
        instance_uuid="i-1", mac="aa:bb", start_period=T0, bw_in=1, bw_out=2
    ),
    Cell: lambda: Cell(name="child", transport_url="amp://", weight_scale=2.0, is_parent=False),
}


class PrimitiveTests(SynchronousTestCase):
    def test_every_class_round_trips_through_json(self) -> None:
        """Each object survives obj_to_primitive -> JSON -> obj_from_primitive
        with equal values, the same set fields and the same changes."""
        for cls, make in EXAMPLES.items():
            obj = make()
            wire = orjson.loads(dumps(obj))
            back = obj_from_primitive(wire)
            self.assertIsInstance(back, cls)
            self.assertEqual(back, obj, cls.__name__)
            self.assertEqual(back.obj_set_fields(), obj.obj_set_fields(), cls.__name__)
            self.assertEqual(back.obj_what_changed(), obj.obj_what_changed(), cls.__name__)

    def test_primitive_shape(self) -> None:
        """The primitive has Nova's five keys; data holds only set fields;
        changes lists the dirty fields; datetimes are ISO-8601 strings."""
        svc = Service(host="h1", last_seen_up=T0)
        prim = svc.obj_to_primitive()
        self.assertEqual(
            set(prim),
            {
                "nova_object.name",
                "nova_object.namespace",
                "nova_object.version",
                "nova_object.data",
                "nova_object.changes",
            },
        )
        self.assertEqual(prim["nova_object.name"], "Service")
        self.assertEqual(prim["nova_object.namespace"], "nova")
        self.assertEqual(prim["nova_object.version"], Service.VERSION)
        self.assertEqual(prim["nova_object.data"], {"host": "h1", "last_seen_up": T0.isoformat()})
        self.assertEqual(prim["nova_object.changes"], ["host", "last_seen_up"])

    def test_nested_flavor_travels_as_a_primitive(self) -> None:
        """An Instance's flavor is itself a versioned primitive and comes back
        as a Flavor."""
        inst = EXAMPLES[Instance]()
        data = inst.obj_to_primitive()["nova_object.data"]
        self.assertEqual(data["flavor"]["nova_object.name"], "Flavor")
        back = Instance.obj_from_primitive(inst.obj_to_primitive())
        assert isinstance(back.flavor, Flavor)
        self.assertEqual(back.flavor.extra_specs, {"hw:cpu_policy": "shared"})

    def test_deserialize_finds_objects_in_kwargs(self) -> None:
        """The registry rebuilds objects nested in plain JSON values."""
        kwargs = {"instance": EXAMPLES[Instance](), "bdms": [EXAMPLES[BlockDeviceMapping]()]}
        back = deserialize(orjson.loads(dumps(kwargs)))
        self.assertIsInstance(back["instance"], Instance)
        self.assertIsInstance(back["bdms"][0], BlockDeviceMapping)

    def test_datetimes_are_tz_aware(self) -> None:
        """Naive datetimes and ISO strings (with Z or an offset) become UTC-aware."""
        naive = Instance(launched_at=datetime.datetime(2024, 1, 1, 10, 0))
        self.assertEqual(naive.launched_at, datetime.datetime(2024, 1, 1, 10, tzinfo=UTC))
        nova = Instance(launched_at="2024-01-01T10:00:00Z")  # type: ignore[arg-type]
        self.assertEqual(nova.launched_at, naive.launched_at)
        offset = Instance(launched_at="2024-01-01T12:00:00+02:00")  # type: ignore[arg-type]
        self.assertEqual(offset.launched_at, naive.launched_at)
        assert offset.launched_at is not None
        self.assertEqual(offset.launched_at.tzinfo, UTC)

    def test_unknown_major_version_is_refused(self) -> None:
        """A primitive of another major version raises IncompatibleObjectVersion,
        which rebuilds from its wire form."""
        prim = EXAMPLES[Instance]().obj_to_primitive()
        prim["nova_object.version"] = "2.0"
        with self.assertRaises(IncompatibleObjectVersion) as caught:
            obj_from_primitive(prim)
        rebuilt = deserialize_remote_exception(serialize_remote_exception(caught.exception))
        self.assertIsInstance(rebuilt, IncompatibleObjectVersion)

    def test_newer_minor_version_is_accepted(self) -> None:
        """A newer minor version (e.g. Nova's Instance 1.23) is read, and
        fields this side does not know are ignored."""
        prim = {
            "nova_object.name": "Instance",
            "nova_object.namespace": "nova",
            "nova_object.version": "1.23",
            "nova_object.data": {
                "uuid": "u-1",
                "vm_state": "active",
                "security_groups": {"nova_object.name": "SecurityGroupList"},
                "info_cache": {
                    "nova_object.name": "InstanceInfoCache",
                    "nova_object.data": {"network_info": '[{"id": "vif"}]'},
                },
            },
            "nova_object.changes": ["vm_state", "security_groups"],
        }
        inst = obj_from_primitive(prim)
        self.assertEqual(inst.uuid, "u-1")
        self.assertEqual(inst.info_cache, [{"id": "vif"}])
        self.assertEqual(inst.obj_what_changed(), {"vm_state"})

    def test_malformed_primitives_are_refused(self) -> None:
        """An unknown object name, or data that is not a mapping, is refused."""
        with self.assertRaises(MalformedMessage):
            obj_from_primitive({"nova_object.name": "Nope"})
        prim = Service(host="h").obj_to_primitive()
        prim["nova_object.data"] = ["not", "a", "dict"]
        with self.assertRaises(MalformedMessage):
            obj_from_primitive(prim)
        with self.assertRaises(MalformedMessage):
            Instance(launched_at="yesterday")  # type: ignore[arg-type]


class DictFormTests(SynchronousTestCase):
    def test_from_dict_of_an_older_caller(self) -> None:
        """The plain dict form (string datetimes, an info_cache dict, a flavor
        dict, keys we do not know) builds an object without changes."""
        inst = Instance.from_dict(
            {
                "uuid": "u-1",
                "name": "instance-00000001",
                "launched_at": "2024-05-01T12:30:15.123456",
                "info_cache": {"network_info": '[{"id": "vif"}]'},
                "flavor": {"flavorid": "m1.tiny", "memory_mb": 512},
                "deleted": 0,
            }
        )
        self.assertEqual(inst.launched_at, T0)
        self.assertEqual(inst.info_cache, [{"id": "vif"}])
        assert inst.flavor is not None
        self.assertEqual(inst.flavor.memory_mb, 512)
        self.assertFalse(inst.deleted)
        self.assertEqual(inst.obj_what_changed(), set())

    def test_to_dict_round_trip(self) -> None:
        """to_dict is JSON-able and from_dict(to_dict()) gives an equal object."""
        for cls, make in EXAMPLES.items():
            obj = make()
            plain = orjson.loads(orjson.dumps(obj.to_dict()))
            self.assertEqual(cls.from_dict(plain), obj, cls.__name__)

    def test_to_dict_with_unset_fields(self) -> None:
        """include_unset lists every field, unset ones at their defaults."""
        plain = Service(host="h").to_dict(include_unset=True)
        self.assertEqual(set(plain), set(Service.obj_field_names()))
        self.assertEqual(plain["disabled"], False)
        self.assertEqual(Service(host="h").to_dict(), {"host": "h"})

    def test_bandwidth_alias(self) -> None:
        """bw_update_info names the instance 'uuid'; the object calls it
        instance_uuid."""
        usage = BandwidthUsage.from_dict({"uuid": "i-1", "mac": "m", "bw_in": 3})
        self.assertEqual(usage.instance_uuid, "i-1")


class ChangeTrackingTests(SynchronousTestCase):
    def test_constructor_and_assignment_mark_changes(self) -> None:
        """Fields given to the constructor and fields assigned later are dirty;
        obj_reset_changes forgets them but keeps the values."""
        inst = Instance(uuid="u")
        self.assertEqual(inst.obj_what_changed(), {"uuid"})
        inst.obj_reset_changes()
        self.assertEqual(inst.obj_what_changed(), set())
        inst.vm_state = "stopped"
        inst.task_state = None
        self.assertEqual(inst.obj_what_changed(), {"vm_state", "task_state"})
        inst.obj_reset_changes(["vm_state"])
        self.assertEqual(inst.obj_what_changed(), {"task_state"})
        self.assertEqual(inst.vm_state, "stopped")

    def test_unset_fields_read_as_defaults(self) -> None:
        """An unset field reads as its default and is not part of the data."""
        inst = Instance(uuid="u")
        self.assertIsNone(inst.host)
        self.assertEqual(inst.metadata, {})
        self.assertEqual(inst.generation, 0)
        self.assertFalse(inst.obj_attr_is_set("host"))
        self.assertEqual(inst.obj_set_fields(), ["uuid"])

    def test_in_place_dict_changes_are_noticed(self) -> None:
        """Changing metadata in place marks it changed (and set)."""
        inst = Instance.from_dict({"uuid": "u", "metadata": {"a": "1"}})
        inst.metadata["b"] = "2"
        self.assertEqual(inst.obj_what_changed(), {"metadata"})
        prim = inst.obj_to_primitive()
        self.assertEqual(prim["nova_object.changes"], ["metadata"])
        fresh = Instance(uuid="u")
        fresh.obj_reset_changes()
        fresh.system_metadata["x"] = "y"
        self.assertIn("system_metadata", fresh.obj_to_primitive()["nova_object.data"])

    def test_nested_object_changes(self) -> None:
        """A changed flavor makes the instance's flavor field changed; a
        recursive reset clears both."""
        inst = Instance(uuid="u", flavor=flavor())
        inst.obj_reset_changes()
        self.assertEqual(inst.obj_what_changed(), {"flavor"})
        inst.obj_reset_changes(recursive=True)
        self.assertEqual(inst.obj_what_changed(), set())
        assert inst.flavor is not None
        inst.flavor.memory_mb = 4096
        self.assertEqual(inst.obj_what_changed(), {"flavor"})

    def test_unknown_field_assignment_fails(self) -> None:
        """Objects have a fixed set of fields."""
        with self.assertRaises(AttributeError):
            setattr(Instance(), "no_such_field", 1)  # noqa: B010

    def test_clone_is_deep(self) -> None:
        """obj_clone copies values, set fields and changes, sharing nothing."""
        inst = EXAMPLES[Instance]()
        clone = inst.obj_clone()
        self.assertEqual(clone, inst)
        self.assertEqual(clone.obj_what_changed(), inst.obj_what_changed())
        clone.metadata["new"] = "x"
        self.assertNotIn("new", inst.metadata)

    def test_equality_ignores_tracking(self) -> None:
        """Equality compares values, not which fields are dirty."""
        a = Service(host="h")
        b = Service.from_dict({"host": "h"})
        self.assertEqual(a, b)
        b.host = "other"
        self.assertNotEqual(a, b)
