"""The state manager: neighbours, capabilities, capacities (behaviour §5)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cellsd.errors import CellNotFound
from cellsd.state import CellState, CellStateManager, add_capacities
from cellsd.testing import Neighbour

MUTE = 300.0


def manager(
    clock: Clock,
    parents: list[str] | None = None,
    children: list[str] | None = None,
    capabilities: dict[str, list[str]] | None = None,
    capacity_source: Any = None,
) -> CellStateManager:
    neighbours = [Neighbour(p, True) for p in parents or []]
    neighbours += [Neighbour(c, False) for c in children or []]
    return CellStateManager(
        "child-cell2",
        neighbours,
        clock,
        capabilities=capabilities,
        mute_child_interval=MUTE,
        capacity_source=capacity_source,
    )


class NeighbourTests(SynchronousTestCase):
    """Parents and children as configured."""

    def test_me_parents_children(self) -> None:
        """The manager knows itself, its parents and its children apart."""
        m = manager(Clock(), ["api-cell"], ["grandchild-cell1", "grandchild-cell2"])
        self.assertEqual(m.my_name, "child-cell2")
        self.assertTrue(m.get_my_state().is_me)
        self.assertEqual([c.name for c in m.get_parent_cells()], ["api-cell"])
        self.assertEqual(
            [c.name for c in m.get_child_cells()], ["grandchild-cell1", "grandchild-cell2"]
        )
        self.assertTrue(m.get_parent_cell("api-cell").is_parent)  # type: ignore[union-attr]
        self.assertFalse(m.get_child_cell("grandchild-cell1").is_parent)  # type: ignore[union-attr]
        self.assertIsNone(m.get_child_cell("api-cell"))
        self.assertIsNone(m.get_parent_cell("grandchild-cell1"))
        self.assertFalse(m.is_top())
        self.assertTrue(manager(Clock(), [], ["x"]).is_top())

    def test_set_neighbours_keeps_known_state(self) -> None:
        """Reloading the neighbour list keeps what we learned about cells that
        are still configured, takes their new settings, drops removed cells
        and starts new ones empty."""
        clock = Clock()
        m = manager(clock, ["api-cell"], ["grandchild-cell1", "grandchild-cell2"])
        clock.advance(10)
        m.update_cell_capabilities("grandchild-cell1", {"hypervisor": ["kvm"]})
        m.update_cell_capacities("grandchild-cell1", {"ram_free": {"total_mb": 512}})
        m.update_cell_capabilities("api-cell", {"name": ["api-cell"]})
        kept_child = m.get_child_cell("grandchild-cell1")

        m.set_neighbours(
            [
                Neighbour("api-cell", True, endpoint="tcp:api:7000"),
                Neighbour("grandchild-cell1", False, weight_offset=5.0, weight_scale=2.0),
                Neighbour("grandchild-cell9", False),
            ]
        )
        child = m.get_child_cell("grandchild-cell1")
        assert child is not None
        self.assertIs(child, kept_child)
        self.assertEqual(child.capabilities, {"hypervisor": {"kvm"}})
        self.assertEqual(child.capacities, {"ram_free": {"total_mb": 512}})
        self.assertEqual(child.last_seen, 10)
        self.assertEqual((child.weight_offset, child.weight_scale), (5.0, 2.0))
        parent = m.get_parent_cell("api-cell")
        assert parent is not None
        self.assertEqual(parent.capabilities, {"name": {"api-cell"}})
        self.assertEqual(parent.endpoint, "tcp:api:7000")
        self.assertIsNone(m.get_child_cell("grandchild-cell2"))
        new = m.get_child_cell("grandchild-cell9")
        assert new is not None
        self.assertEqual((new.capabilities, new.capacities, new.last_seen), ({}, {}, None))

    def test_unknown_cell_updates_are_ignored(self) -> None:
        """Updates from a cell that is not a neighbour change nothing."""
        m = manager(Clock(), ["api-cell"], ["grandchild-cell1"])
        self.assertFalse(m.update_cell_capabilities("stranger", {"a": ["b"]}))
        self.assertFalse(m.update_cell_capacities("stranger", {"a": 1}))
        self.assertEqual(m.get_our_capabilities(), {})
        self.assertEqual(m.get_our_capacities(), {})

    def test_db_info(self) -> None:
        """A neighbour's record carries its configuration; ours is empty."""
        m = manager(Clock(), ["api-cell"], [])
        self.assertEqual(m.get_my_state().db_info, {})
        self.assertEqual(
            m.get_parent_cell("api-cell").db_info,  # type: ignore[union-attr]
            {"is_parent": True, "weight_offset": 0.0, "weight_scale": 1.0, "endpoint": None},
        )


class MuteTests(SynchronousTestCase):
    """A child is mute when not heard from for longer than the interval."""

    def test_never_heard_is_mute(self) -> None:
        """A child that never reported is mute from the start."""
        m = manager(Clock(), [], ["grandchild-cell1"])
        child = m.get_child_cell("grandchild-cell1")
        assert child is not None
        self.assertTrue(m.is_mute(child))
        self.assertIsNone(m.last_seen_age(child))

    def test_mute_strictly_after_interval(self) -> None:
        """Exactly mute_child_interval after the last update a child is still
        alive; any later it is mute; a new update revives it."""
        clock = Clock()
        m = manager(clock, [], ["grandchild-cell1"])
        clock.advance(5)
        m.update_cell_capabilities("grandchild-cell1", {})
        child = m.get_child_cell("grandchild-cell1")
        assert child is not None
        self.assertFalse(m.is_mute(child))
        clock.advance(MUTE)
        self.assertEqual(m.last_seen_age(child), MUTE)
        self.assertFalse(m.is_mute(child))
        clock.advance(0.001)
        self.assertTrue(m.is_mute(child))
        m.update_cell_capacities("grandchild-cell1", {})
        self.assertFalse(m.is_mute(child))
        self.assertEqual(m.last_seen_age(child), 0)

    def test_self_is_never_mute(self) -> None:
        """This cell is never mute to itself."""
        clock = Clock()
        m = manager(clock)
        clock.advance(MUTE * 10)
        self.assertFalse(m.is_mute(m.get_my_state()))


class CapabilitiesTests(SynchronousTestCase):
    """Our capabilities: ours unioned with every child that is not mute."""

    def test_union_excludes_mute_children(self) -> None:
        """Children that reported recently add their values; a mute child does not."""
        clock = Clock()
        m = manager(
            clock,
            ["api-cell"],
            ["grandchild-cell1", "grandchild-cell2", "grandchild-cell3"],
            capabilities={"hypervisor": ["kvm"], "name": ["child-cell2"]},
        )
        m.update_cell_capabilities("grandchild-cell1", {"hypervisor": ["xen"], "az": ["az1"]})
        m.update_cell_capabilities("grandchild-cell2", {"hypervisor": ["kvm", "lxc"]})
        # grandchild-cell3 never reports; the parent's capabilities never count.
        m.update_cell_capabilities("api-cell", {"hypervisor": ["parent-only"]})
        self.assertEqual(
            m.get_our_capabilities(),
            {"hypervisor": {"kvm", "xen", "lxc"}, "az": {"az1"}, "name": {"child-cell2"}},
        )
        self.assertEqual(
            m.get_our_capabilities(include_children=False),
            {"hypervisor": {"kvm"}, "name": {"child-cell2"}},
        )
        clock.advance(MUTE / 2)
        m.update_cell_capabilities("grandchild-cell2", {"hypervisor": ["kvm", "lxc"]})
        clock.advance(MUTE / 2 + 1)
        # grandchild-cell1 went mute; grandchild-cell2 is still alive.
        self.assertEqual(
            m.get_our_capabilities(),
            {"hypervisor": {"kvm", "lxc"}, "name": {"child-cell2"}},
        )

    def test_union_does_not_change_our_state(self) -> None:
        """Computing the union leaves this cell's own capabilities alone."""
        m = manager(Clock(), [], ["grandchild-cell1"], capabilities={"hypervisor": ["kvm"]})
        m.update_cell_capabilities("grandchild-cell1", {"hypervisor": ["xen"]})
        m.get_our_capabilities()["hypervisor"].add("junk")
        self.assertEqual(m.get_our_capabilities(), {"hypervisor": {"kvm", "xen"}})
        self.assertEqual(m.get_my_state().capabilities, {"hypervisor": {"kvm"}})


def capacities(total_mb: int, units: dict[str, int], disk_mb: int) -> dict[str, Any]:
    return {
        "ram_free": {"total_mb": total_mb, "units_by_mb": units},
        "disk_free": {"total_mb": disk_mb, "units_by_mb": {}},
    }


class CapacitiesTests(SynchronousTestCase):
    """Our capacities: ours plus every child's, key by key."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.m = manager(
            self.clock,
            ["api-cell"],
            ["grandchild-cell1", "grandchild-cell2"],
            capacity_source=lambda: capacities(1000, {"512": 1, "2048": 0}, 5000),
        )
        self.m.refresh_my_capacities()
        self.m.update_cell_capacities(
            "grandchild-cell1", capacities(4096, {"512": 8, "2048": 2}, 10)
        )
        self.m.update_cell_capacities(
            "grandchild-cell2",
            {"ram_free": {"total_mb": 100, "units_by_mb": {"512": 0, "4096": 3}}},
        )
        self.m.update_cell_capacities("api-cell", capacities(1, {"1": 1}, 1))

    def test_aggregate_adds_every_child(self) -> None:
        """Nested numbers are summed; keys only some cells have are kept;
        parents do not count."""
        expected = {
            "ram_free": {
                "total_mb": 1000 + 4096 + 100,
                "units_by_mb": {"512": 1 + 8 + 0, "2048": 0 + 2, "4096": 3},
            },
            "disk_free": {"total_mb": 5000 + 10, "units_by_mb": {}},
        }
        self.assertEqual(self.m.get_our_capacities(), expected)
        # Asking again gives the same figures: nothing accumulates in place.
        self.assertEqual(self.m.get_our_capacities(), expected)
        self.assertEqual(self.m.get_capacities(), expected)
        self.assertEqual(self.m.get_capacities("child-cell2"), expected)

    def test_mute_children_leave_the_aggregate(self) -> None:
        """A mute child's stale capacities leave the aggregate, as its
        capabilities leave the union (Liberty still added them: behaviour
        §8.5 #36); its own report stays readable, and counts again once it
        reports."""
        self.clock.advance(MUTE * 2)
        self.assertEqual(self.m.get_our_capacities(), capacities(1000, {"512": 1, "2048": 0}, 5000))
        self.assertEqual(
            self.m.get_capacities("grandchild-cell1"), capacities(4096, {"512": 8, "2048": 2}, 10)
        )
        self.m.update_cell_capacities("grandchild-cell1", capacities(4096, {"512": 8}, 10))
        self.assertEqual(self.m.get_our_capacities()["ram_free"]["total_mb"], 1000 + 4096)

    def test_own_only(self) -> None:
        """Without children, the figures are this cell's own."""
        self.assertEqual(
            self.m.get_our_capacities(include_children=False),
            capacities(1000, {"512": 1, "2048": 0}, 5000),
        )

    def test_child(self) -> None:
        """A child's capacities are its own report, as a copy."""
        got = self.m.get_capacities("grandchild-cell1")
        self.assertEqual(got, capacities(4096, {"512": 8, "2048": 2}, 10))
        got["ram_free"]["total_mb"] = 0
        self.assertEqual(self.m.get_capacities("grandchild-cell1")["ram_free"]["total_mb"], 4096)

    def test_unknown_cell(self) -> None:
        """An unknown cell (or a parent) is CellNotFound, naming it."""
        for name in ["nowhere", "api-cell"]:
            e = self.assertRaises(CellNotFound, self.m.get_capacities, name)
            self.assertEqual(str(e), f"Cell {name} doesn't exist.")

    def test_reported_dict_is_copied(self) -> None:
        """A report is copied on receipt: later changes by the sender do not leak in."""
        report = capacities(1, {"1": 1}, 1)
        self.m.update_cell_capacities("grandchild-cell2", report)
        report["ram_free"]["total_mb"] = 999
        self.assertEqual(self.m.get_capacities("grandchild-cell2")["ram_free"]["total_mb"], 1)

    def test_add_capacities_ignores_non_numbers(self) -> None:
        """Booleans and strings are not added; a number meeting a dict is left alone."""
        total: dict[str, Any] = {"a": 1, "b": {"c": 1}}
        add_capacities(total, {"a": 2, "b": 5, "flag": True, "name": "x", "d": {"e": 1.5}})
        self.assertEqual(total, {"a": 3, "b": {"c": 1}, "d": {"e": 1.5}})


class CellInfoTests(SynchronousTestCase):
    """get_cell_info_for_neighbors: what an operator sees of the neighbours."""

    def test_children_first_then_parents(self) -> None:
        """Children come before parents, each with capabilities and config."""
        clock = Clock()
        m = manager(clock, ["api-cell"], ["grandchild-cell1", "grandchild-cell2"])
        clock.advance(3)
        m.update_cell_capabilities("grandchild-cell2", {"hypervisor": ["xen", "kvm"]})
        clock.advance(2)
        info = m.get_cell_info_for_neighbors()
        self.assertEqual(
            [(i["name"], i["is_parent"]) for i in info],
            [("grandchild-cell1", False), ("grandchild-cell2", False), ("api-cell", True)],
        )
        by_name = {i["name"]: i for i in info}
        gc2 = by_name["grandchild-cell2"]
        self.assertEqual(gc2["capabilities"], {"hypervisor": ["kvm", "xen"]})
        self.assertFalse(gc2["mute"])
        self.assertEqual(gc2["last_seen_age"], 2)
        self.assertTrue(by_name["grandchild-cell1"]["mute"])
        self.assertIsNone(by_name["grandchild-cell1"]["last_seen_age"])
        # A parent is never reported mute.
        self.assertFalse(by_name["api-cell"]["mute"])
        self.assertEqual(
            set(gc2),
            {
                "name",
                "capabilities",
                "is_parent",
                "weight_offset",
                "weight_scale",
                "endpoint",
                "username",
                "rpc_host",
                "rpc_port",
                "mute",
                "last_seen_age",
            },
        )


class CellStateTests(SynchronousTestCase):
    def test_updates_copy_and_stamp(self) -> None:
        """Updates store copies (capability values as sets) and the time."""
        s = CellState("c")
        caps = {"a": ["x", "x", "y"]}
        s.update_capabilities(caps, 7.0)
        caps["a"].append("z")
        self.assertEqual(s.capabilities, {"a": {"x", "y"}})
        self.assertEqual(s.last_seen, 7.0)


class MismatchedReportTests(SynchronousTestCase):
    def test_child_report_of_another_shape(self) -> None:
        """A child whose figures have another shape than ours (a number where
        we have a dict, or the reverse) is skipped there instead of breaking
        the aggregate for every parent."""
        m = manager(Clock(), [], ["grandchild-cell1", "grandchild-cell2"])
        m.my_cell_state.update_capacities({"ram_free": {"total_mb": 10}, "disk_free": 5}, 0)
        m.update_cell_capacities("grandchild-cell1", {"ram_free": 7, "disk_free": {"x": 1}})
        m.update_cell_capacities("grandchild-cell2", {"ram_free": {"total_mb": 1}, "disk_free": 2})
        self.assertEqual(m.get_our_capacities(), {"ram_free": {"total_mb": 11}, "disk_free": 7})
