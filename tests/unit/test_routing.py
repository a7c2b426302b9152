"""Path arithmetic of cell routing (behaviour §1.2-1.4, §2.2, §8.1.9)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cellsd.errors import CellRoutingInconsistency, CellsError
from cellsd.messaging.routing import (
    DOWN,
    UP,
    cell_with_item,
    join_path,
    next_hop,
    opposite,
    response_cell_name,
    reverse_path,
    split_cell_and_item,
    split_path,
)

CHILDREN = ["child-cell1", "child-cell2", "child-cell3", "child-cell4"]


class NextHopTests(SynchronousTestCase):
    """next_hop: which neighbour a targeted message goes to, or None when here."""

    def assert_inconsistent(
        self,
        target: str,
        routing_path: str,
        direction: str,
        neighbours: list[str],
        reason: str,
    ) -> None:
        e = self.assertRaises(
            CellRoutingInconsistency, next_hop, target, routing_path, direction, neighbours
        )
        self.assertEqual(str(e), f"Inconsistency in cell routing: {reason}")
        self.assertEqual(e.kwargs, {"reason": reason})
        self.assertEqual(e.code, 500)

    def test_target_is_here(self) -> None:
        """When the target equals the routing path, this cell is the target."""
        self.assertIsNone(next_hop("api-cell", "api-cell", DOWN, CHILDREN))
        self.assertIsNone(
            next_hop("api-cell!child-cell2", "api-cell!child-cell2", DOWN, ["grandchild-cell1"])
        )

    def test_target_is_here_even_without_neighbours(self) -> None:
        """A leaf is its own target whatever its neighbours and the direction."""
        self.assertIsNone(next_hop("a!b!c", "a!b!c", UP, []))

    def test_down_to_a_child(self) -> None:
        """Going down, the next hop is the component after the routing path."""
        self.assertEqual(
            next_hop("api-cell!child-cell2", "api-cell", DOWN, CHILDREN), "child-cell2"
        )

    def test_down_through_several_hops(self) -> None:
        """Each hop picks the next component of the target, one level at a time."""
        target = "api-cell!child-cell2!grandchild-cell1"
        self.assertEqual(next_hop(target, "api-cell", DOWN, CHILDREN), "child-cell2")
        self.assertEqual(
            next_hop(target, "api-cell!child-cell2", DOWN, ["grandchild-cell1"]),
            "grandchild-cell1",
        )

    def test_up_to_a_parent(self) -> None:
        """Going up, the next hop is looked up among the parents."""
        target = "grandchild-cell1!child-cell2!api-cell"
        self.assertEqual(next_hop(target, "grandchild-cell1", UP, ["child-cell2"]), "child-cell2")
        self.assertEqual(
            next_hop(target, "grandchild-cell1!child-cell2", UP, ["api-cell"]), "api-cell"
        )

    def test_target_shorter_than_routing_path(self) -> None:
        """A target with fewer components than the path travelled is inconsistent."""
        self.assert_inconsistent(
            "api-cell",
            "api-cell!child-cell2",
            DOWN,
            ["grandchild-cell1"],
            "destination is api-cell but routing_path is api-cell!child-cell2",
        )

    def test_target_same_length_but_different(self) -> None:
        """A target as long as the path but naming another cell is inconsistent."""
        self.assert_inconsistent(
            "api-cell!child-cell1",
            "api-cell!child-cell2",
            DOWN,
            [],
            "destination is api-cell!child-cell1 but routing_path is api-cell!child-cell2",
        )

    def test_single_component_target_elsewhere(self) -> None:
        """A one-cell target that is not this cell is inconsistent."""
        self.assert_inconsistent(
            "other-cell",
            "api-cell",
            DOWN,
            CHILDREN,
            "destination is other-cell but routing_path is api-cell",
        )

    def test_target_does_not_start_with_routing_path(self) -> None:
        """A longer target whose prefix is not the path travelled is inconsistent."""
        self.assert_inconsistent(
            "other-cell!child-cell2!grandchild-cell1",
            "api-cell!child-cell2",
            DOWN,
            ["grandchild-cell1"],
            "destination is other-cell!child-cell2!grandchild-cell1 "
            "but routing_path is api-cell!child-cell2",
        )

    def test_prefix_is_compared_by_component_not_by_string(self) -> None:
        """``api-cell2!x`` does not extend ``api-cell`` although the string does."""
        self.assert_inconsistent(
            "api-cell2!child-cell1",
            "api-cell",
            DOWN,
            CHILDREN,
            "destination is api-cell2!child-cell1 but routing_path is api-cell",
        )

    def test_unknown_child(self) -> None:
        """A next hop that is not one of our children is an unknown child."""
        self.assert_inconsistent(
            "api-cell!nowhere",
            "api-cell",
            DOWN,
            CHILDREN,
            "Unknown child when routing to api-cell!nowhere",
        )

    def test_unknown_parent(self) -> None:
        """A next hop that is not one of our parents is an unknown parent."""
        self.assert_inconsistent(
            "child-cell2!nowhere",
            "child-cell2",
            UP,
            ["api-cell"],
            "Unknown parent when routing to child-cell2!nowhere",
        )

    def test_unknown_child_when_no_children(self) -> None:
        """A leaf asked to route further down reports an unknown child."""
        self.assert_inconsistent(
            "api-cell!child-cell1!deeper",
            "api-cell!child-cell1",
            DOWN,
            [],
            "Unknown child when routing to api-cell!child-cell1!deeper",
        )

    def test_inconsistency_is_a_cells_error(self) -> None:
        """Routing errors are CellsErrors, so they can cross the wire."""
        self.assertTrue(issubclass(CellRoutingInconsistency, CellsError))


class PathTests(SynchronousTestCase):
    """Joining, splitting and reversing paths."""

    def test_split_and_join(self) -> None:
        """Paths are names joined by ``!``; splitting and joining are inverses."""
        self.assertEqual(split_path("a!b!c"), ["a", "b", "c"])
        self.assertEqual(split_path("a"), ["a"])
        self.assertEqual(join_path("a", "b", "c"), "a!b!c")
        self.assertEqual(join_path(*split_path("api-cell!child-cell2")), "api-cell!child-cell2")

    def test_reverse_path(self) -> None:
        """The way back retraces the path in reverse order."""
        self.assertEqual(
            reverse_path("api-cell!child-cell2!grandchild-cell1"),
            "grandchild-cell1!child-cell2!api-cell",
        )
        self.assertEqual(reverse_path("api-cell"), "api-cell")
        self.assertEqual(reverse_path(reverse_path("a!b!c")), "a!b!c")

    def test_opposite(self) -> None:
        """Answers travel in the opposite direction."""
        self.assertEqual(opposite(UP), DOWN)
        self.assertEqual(opposite(DOWN), UP)


class ResponseCellNameTests(SynchronousTestCase):
    """response_cell_name: where an answer is addressed."""

    def test_targeted_answer_retraces_the_whole_path(self) -> None:
        """A targeted answer goes all the way back to the source."""
        self.assertEqual(
            response_cell_name("api-cell!child-cell2!grandchild-cell1", broadcast=False),
            "grandchild-cell1!child-cell2!api-cell",
        )

    def test_broadcast_answer_goes_to_previous_hop(self) -> None:
        """A broadcast answer goes only to the neighbour it came from."""
        self.assertEqual(
            response_cell_name("api-cell!child-cell2!grandchild-cell1", broadcast=True),
            "grandchild-cell1!child-cell2",
        )
        self.assertEqual(response_cell_name("a!b", broadcast=True), "b!a")

    def test_single_component_by_component_count(self) -> None:
        """A one-cell path is answered to itself, whatever its string length
        (cells v1 compared string length instead of component count)."""
        for name in ["a", "api", "a-rather-long-cell-name"]:
            self.assertEqual(response_cell_name(name, broadcast=True), name)
            self.assertEqual(response_cell_name(name, broadcast=False), name)

    def test_short_names_are_still_split(self) -> None:
        """Single-letter names in a long path still truncate to two components."""
        self.assertEqual(response_cell_name("a!b!c!d", broadcast=True), "d!c")


class CellWithItemTests(SynchronousTestCase):
    """The ``cell@item`` encoding of behaviour §1.3."""

    def test_no_cell_leaves_item(self) -> None:
        """Without a cell the item is returned unchanged (as a string)."""
        self.assertEqual(cell_with_item(None, "host1"), "host1")
        self.assertEqual(cell_with_item(None, 5), "5")

    def test_cell_and_item(self) -> None:
        """A cell path and an item join with ``@``; the item is str()'d."""
        self.assertEqual(
            cell_with_item("api-cell!child-cell1", "host1"), "api-cell!child-cell1@host1"
        )
        self.assertEqual(cell_with_item("api-cell!child-cell1", 42), "api-cell!child-cell1@42")

    def test_split_example_from_spec(self) -> None:
        """The example of the reference splits into path and host."""
        self.assertEqual(
            split_cell_and_item("australia!queensland!gold_coast@host_5"),
            ("australia!queensland!gold_coast", "host_5"),
        )

    def test_split_without_at(self) -> None:
        """No ``@``: no cell, the whole string is the item."""
        self.assertEqual(split_cell_and_item("host_5"), (None, "host_5"))

    def test_split_on_last_at(self) -> None:
        """The split is on the last ``@``; earlier ones belong to the cell part."""
        self.assertEqual(split_cell_and_item("a@b!c@host"), ("a@b!c", "host"))

    def test_split_edge_cases(self) -> None:
        """Empty parts on either side of the ``@`` are kept as empty strings."""
        self.assertEqual(split_cell_and_item("@host"), ("", "host"))
        self.assertEqual(split_cell_and_item("cell@"), ("cell", ""))

    def test_round_trip(self) -> None:
        """Splitting what cell_with_item joined gives back the cell and str(item)."""
        for cell, item in [("api-cell", "h1"), ("api-cell!child-cell3", 7), (None, "h2")]:
            self.assertEqual(split_cell_and_item(cell_with_item(cell, item)), (cell, str(item)))
