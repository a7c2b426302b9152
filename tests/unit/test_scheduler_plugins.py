"""The cells scheduler's filters and weighers (behaviour §6.3, §6.4), alone
and combined, with the §8.5 fixes; and loading them from ``[scheduler]``."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cellsd.context import RequestContext
from cellsd.errors import (
    ConfigError,
    InvalidArguments,
    InvalidSchedulerHint,
    SchedulerHintForbidden,
)
from cellsd.interfaces import ICellFilter, ICellScheduler, ICellWeigher
from cellsd.objects import Flavor, Instance
from cellsd.scheduler.filters import (
    DifferentCellFilter,
    ImagePropertiesFilter,
    TargetCellFilter,
    parse_predicate,
    parse_version,
    satisfies,
)
from cellsd.scheduler.plugins import make_filters, make_weighers
from cellsd.scheduler.request import SchedulingRequest, make_request
from cellsd.scheduler.scheduler import CellsScheduler
from cellsd.scheduler.settings import SchedulerSettings, parse_scheduler
from cellsd.scheduler.weights import (
    MuteChildWeigher,
    RamByInstanceTypeWeigher,
    WeightOffsetWeigher,
    normalize,
    weigh_cells,
)
from cellsd.state import CellState, CellStateManager
from cellsd.testing import MemoryTree, Neighbour

TINY = Flavor(name="m1.tiny", memory_mb=512, vcpus=1, root_gb=1, ephemeral_gb=0)
ADMIN = RequestContext(user_id="u", project_id="p", is_admin=True)
USER = RequestContext(user_id="u", project_id="p", is_admin=False)


def ram(units: int) -> dict[str, Any]:
    return {"ram_free": {"total_mb": units * 512, "units_by_mb": {"512": units}}}


class Cells:
    """child-cell2 (path api!child-cell2) with children a, b, c and hosts."""

    def __init__(self, offsets: dict[str, float] | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        offsets = offsets or {}
        neighbours = [Neighbour("api", True)]
        neighbours += [Neighbour(n, False, weight_offset=offsets.get(n, 0.0)) for n in "abc"]
        self.state = CellStateManager("child-cell2", neighbours, self.clock, mute_child_interval=60)
        for name in "abc":
            self.state.update_cell_capacities(name, ram(0))

    def cells(self, me: bool = True) -> list[CellState]:
        out = self.state.get_child_cells()
        return [*out, self.state.get_my_state()] if me else out

    def request(
        self,
        ctxt: RequestContext = ADMIN,
        hints: dict[str, Any] | None = None,
        image: dict[str, Any] | None = None,
    ) -> SchedulingRequest:
        props: dict[str, Any] = {"instance_type": TINY}
        if hints is not None:
            props["scheduler_hints"] = hints
        kwargs = {
            "instances": [Instance(uuid="u-1", flavor=TINY)],
            "image": image or {},
            "filter_properties": props,
        }
        return make_request(ctxt, "api!child-cell2", self.state, kwargs)


def names(cells: Any) -> list[str]:
    return [c.name for c in cells]


class TargetCellFilterTests(SynchronousTestCase):
    """target_cell: admin only, validated, hint never changed."""

    def setUp(self) -> None:
        self.t = Cells()
        self.f = TargetCellFilter()

    def test_no_hint_passes_all(self) -> None:
        """Without the hint every candidate passes, for anyone."""
        cells = self.t.cells()
        self.assertEqual(self.f.filter_all(cells, self.t.request(USER)), cells)

    def test_route_below(self) -> None:
        """A target below this cell narrows the candidates to the child on
        the way there; the hint is left as it was (the child applies it again)."""
        hints = {"target_cell": "api!child-cell2!b!deeper"}
        request = self.t.request(hints=hints)
        self.assertEqual(names(self.f.filter_all(self.t.cells(), request)), ["b"])
        self.assertEqual(dict(request.hints), hints)
        self.assertEqual(hints, {"target_cell": "api!child-cell2!b!deeper"})

    def test_here(self) -> None:
        """A target equal to this cell's path keeps only this cell, even if
        it was not a candidate (it has children and no hosts)."""
        got = self.f.filter_all(
            self.t.cells(me=False), self.t.request(hints={"target_cell": "api!child-cell2"})
        )
        self.assertEqual(len(got), 1)
        self.assertTrue(got[0].is_me)

    def test_bad_paths(self) -> None:
        """A path that is not this cell or below it, names no child, or is
        not a path at all is refused with an error naming the problem."""
        cases = {
            "api!child-cell1": "neither api!child-cell2 nor a cell below it",
            "api!child-cell2!zz": "has no child cell 'zz'",
            "api!!x": "must be a cell path",
            "": "must be a cell path",
        }
        for target, why in cases.items():
            e = self.assertRaises(
                InvalidSchedulerHint,
                self.f.filter_all,
                self.t.cells(),
                self.t.request(hints={"target_cell": target}),
            )
            self.assertIn(why, str(e))
            self.assertEqual(e.code, 400)

    def test_admin_only(self) -> None:
        """A non-admin's target_cell is refused with a clear error (Liberty
        dropped it silently); policy 'any' lets everyone use it."""
        request = self.t.request(USER, hints={"target_cell": "api!child-cell2!a"})
        e = self.assertRaises(SchedulerHintForbidden, self.f.filter_all, self.t.cells(), request)
        self.assertEqual(e.code, 403)
        self.assertIn("target_cell", str(e))
        open_to_all = TargetCellFilter(SchedulerSettings(policy={"target_cell": "any"}))
        self.assertEqual(names(open_to_all.filter_all(self.t.cells(), request)), ["a"])


class DifferentCellFilterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = Cells()
        self.f = DifferentCellFilter()

    def test_removes_listed_routes(self) -> None:
        """Candidates whose route is listed (one path or several) go; the
        own cell's route is this cell's path."""
        one = self.t.request(hints={"different_cell": "api!child-cell2!a"})
        self.assertEqual(names(self.f.filter_all(self.t.cells(), one)), ["b", "c", "child-cell2"])
        many = self.t.request(hints={"different_cell": ["api!child-cell2!b", "api!child-cell2"]})
        self.assertEqual(names(self.f.filter_all(self.t.cells(), many)), ["a", "c"])

    def test_no_hint_and_policy(self) -> None:
        """No hint: all pass. Open to everyone by default; 'admin' policy
        refuses a non-admin clearly; a hint that is not paths is refused."""
        self.assertEqual(len(self.f.filter_all(self.t.cells(), self.t.request(USER))), 4)
        request = self.t.request(USER, hints={"different_cell": "api!child-cell2!a"})
        self.assertEqual(len(self.f.filter_all(self.t.cells(), request)), 3)
        strict = DifferentCellFilter(SchedulerSettings(policy={"different_cell": "admin"}))
        self.assertRaises(SchedulerHintForbidden, strict.filter_all, self.t.cells(), request)
        bad = self.t.request(hints={"different_cell": [1]})
        self.assertRaises(InvalidSchedulerHint, self.f.filter_all, self.t.cells(), bad)


class ImagePropertiesFilterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = Cells()
        for name, versions in {"a": ["6.0"], "b": ["6.2", "7.1"], "c": []}.items():
            self.t.state.update_cell_capabilities(name, {"prominent_hypervisor_version": versions})

    def request(self, requires: str | None) -> SchedulingRequest:
        props = {} if requires is None else {"hypervisor_version_requires": requires}
        return self.t.request(image={"properties": props})

    def test_any_version_of_the_set(self) -> None:
        """A cell passes when any version its subtree reports satisfies the
        predicate (Liberty tested an arbitrary one: §8.5 #34); a cell that
        reports none passes; repeated calls agree."""
        f = ImagePropertiesFilter()
        request = self.request(">6.0, <=6.3")
        first = names(f.filter_all(self.t.cells(me=False), request))
        self.assertEqual(first, ["b", "c"])
        self.assertEqual(names(f.filter_all(self.t.cells(me=False), request)), first)

    def test_all_versions_policy(self) -> None:
        """With image_version_match = "all" every version must satisfy it."""
        f = ImagePropertiesFilter(SchedulerSettings(image_version_match="all"))
        self.assertEqual(
            names(f.filter_all(self.t.cells(me=False), self.request(">=6.0"))), ["a", "b", "c"]
        )
        self.assertEqual(
            names(f.filter_all(self.t.cells(me=False), self.request("<7"))), ["a", "c"]
        )

    def test_absent_and_invalid(self) -> None:
        """No property: all pass. A predicate that does not parse is a
        clear InvalidArguments; an unparseable reported version never matches."""
        f = ImagePropertiesFilter()
        self.assertEqual(len(f.filter_all(self.t.cells(), self.request(None))), 4)
        self.assertRaises(InvalidArguments, f.filter_all, self.t.cells(), self.request("~6"))
        self.t.state.update_cell_capabilities("c", {"prominent_hypervisor_version": ["x.y"]})
        self.assertEqual(
            names(f.filter_all(self.t.cells(me=False), self.request(">1"))), ["a", "b"]
        )

    def test_predicates(self) -> None:
        """Strict dotted versions, every comparison, 6.0 == 6.0.0."""
        self.assertEqual(parse_version("6.2.1"), (6, 2, 1))
        self.assertRaises(ValueError, parse_version, "6.2a")
        self.assertTrue(satisfies((6, 0, 0), parse_predicate("==6.0")))
        self.assertTrue(satisfies((6, 3), parse_predicate(">6.0, <=6.3, !=6.1")))
        self.assertFalse(satisfies((6, 1), parse_predicate(">6.0, <=6.3, !=6.1")))
        self.assertFalse(satisfies((5,), parse_predicate(">=5.0.1")))
        self.assertRaises(ValueError, parse_predicate, ">6.0,")


class CombinedFilterTests(SynchronousTestCase):
    def test_in_configured_order(self) -> None:
        """The filters run in the order configured; with target_cell first
        a different_cell hint cannot empty the list before the forced route
        is taken (§8.5 #33), and the route is then refused by different_cell."""
        t = Cells()
        hints = {"target_cell": "api!child-cell2!a", "different_cell": "api!child-cell2!b"}
        request = t.request(hints=hints)
        cells = t.cells()
        for f in make_filters(SchedulerSettings()):
            cells = list(f.filter_all(cells, request))
        self.assertEqual(names(cells), ["a"])
        hints["different_cell"] = "api!child-cell2!a"
        cells = t.cells()
        for f in make_filters(SchedulerSettings()):
            cells = list(f.filter_all(cells, t.request(hints=hints)))
        self.assertEqual(cells, [])


class WeigherTests(SynchronousTestCase):
    def test_ram_by_instance_type(self) -> None:
        """Raw value: units of the flavor's RAM size, less what was handed
        to the child since its report; estimated from the free total when
        the child counts no slot of that size."""
        t = Cells()
        t.state.update_cell_capacities("a", ram(7))
        t.state.claim_capacity("a", 512 * 3, 0)
        t.state.update_cell_capacities("b", {"ram_free": {"total_mb": 2000, "units_by_mb": {}}})
        w = RamByInstanceTypeWeigher()
        request = t.request()
        a, b, c, me = t.cells()
        self.assertEqual([w.weigh(x, request) for x in (a, b, c, me)], [4.0, 3.0, 0.0, 0.0])

    def test_mute_child(self) -> None:
        """1 for a mute child (never heard, or silent past the interval)."""
        t = Cells()
        t.clock.advance(61)
        t.state.update_cell_capacities("b", ram(1))
        w = MuteChildWeigher()
        self.assertEqual([w.weigh(c, t.request()) for c in t.cells()], [1.0, 0.0, 1.0, 0.0])

    def test_weight_offset(self) -> None:
        """The configured offset; 0 for this cell."""
        t = Cells({"a": 5.0, "c": -2.0})
        w = WeightOffsetWeigher()
        self.assertEqual([w.weigh(c, t.request()) for c in t.cells()], [5.0, 0.0, -2.0, 0.0])

    def test_normalization_is_per_request(self) -> None:
        """min/max come from this request's candidates only (Liberty kept
        them across requests, §8.5 #35): the same figures weigh the same
        after a request with far wider ones."""
        t = Cells()
        weighers = [(RamByInstanceTypeWeigher(), 10.0)]
        for name, units in {"a": 4, "b": 2, "c": 0}.items():
            t.state.update_cell_capacities(name, ram(units))
        first = [
            (w.cell.name, w.weight) for w in weigh_cells(t.cells(me=False), weighers, t.request())
        ]
        t.state.update_cell_capacities("a", ram(10_000))
        weigh_cells(t.cells(me=False), weighers, t.request())
        t.state.update_cell_capacities("a", ram(4))
        again = [
            (w.cell.name, w.weight) for w in weigh_cells(t.cells(me=False), weighers, t.request())
        ]
        self.assertEqual(first, again)
        self.assertEqual(first, [("a", 10.0), ("b", 5.0), ("c", 0.0)])
        self.assertEqual(normalize([3.0, 3.0]), [0.0, 0.0])

    def test_combined_and_scaled(self) -> None:
        """Mute penalty beats RAM; offsets break RAM ties; weight_scale
        multiplies a cell's weight; ties keep candidate order; one
        candidate is not weighed."""
        t = Cells({"b": 3.0})
        t.clock.advance(30)
        t.state.update_cell_capacities("a", ram(8))
        t.state.update_cell_capacities("b", ram(8))
        t.clock.advance(40)  # c is mute now (last heard 70 s ago)
        t.state.update_cell_capacities("a", ram(8))
        t.state.update_cell_capacities("b", ram(8))
        weighers = make_weighers(SchedulerSettings())
        got = weigh_cells(t.cells(me=False), weighers, t.request())
        self.assertEqual(names(w.cell for w in got), ["b", "a", "c"])
        self.assertEqual([w.weight for w in got], [11.0, 10.0, -10000.0])
        self.assertEqual(
            got[0].parts, {"mute_child": 0.0, "ram_by_instance_type": 10.0, "weight_offset": 1.0}
        )
        a = t.state.get_child_cell("a")
        assert a is not None
        a.weight_scale = 2.0
        got = weigh_cells(t.cells(me=False), weighers, t.request())
        self.assertEqual([(w.cell.name, w.weight) for w in got][:2], [("a", 20.0), ("b", 11.0)])
        (alone,) = weigh_cells([a], weighers, t.request())
        self.assertEqual(alone.weight, 0.0)


class SettingsAndPluginTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """Defaults: target_cell first; every weigher; Liberty's retries."""
        s = parse_scheduler({})
        self.assertEqual(s.filters, ("target_cell", "different_cell", "image_properties"))
        self.assertEqual(s.weighers, ("mute_child", "ram_by_instance_type", "weight_offset"))
        self.assertEqual((s.retries, s.retry_delay), (10, 2.0))
        self.assertEqual(s.policy_for("target_cell"), "admin")
        self.assertEqual(s.policy_for("different_cell"), "any")

    def test_built_ins_provide_the_interfaces(self) -> None:
        """Every built-in filter and weigher passes verifyObject."""
        for f in make_filters(SchedulerSettings()):
            self.assertTrue(verifyObject(ICellFilter, f))
        for w, multiplier in make_weighers(SchedulerSettings()):
            self.assertTrue(verifyObject(ICellWeigher, w))
            self.assertEqual(multiplier, w.multiplier)

    def test_user_plugins_by_dotted_path(self) -> None:
        """A user's filter and weigher, named by dotted path, are loaded in
        the configured order, with configured multipliers."""
        s = parse_scheduler(
            {
                "filters": [f"{__name__}.OnlyA", "target_cell"],
                "weighers": [f"{__name__}:Alphabetical", "mute_child"],
                "multipliers": {f"{__name__}:Alphabetical": 2.5},
                "retries": 0,
                "retry_delay": 0.1,
            }
        )
        filters = make_filters(s)
        self.assertEqual([f.name for f in filters], ["only_a", "target_cell"])
        (alpha, m1), (_, m2) = make_weighers(s)
        self.assertEqual((alpha.name, m1, m2), ("alphabetical", 2.5, -10000.0))
        t = Cells()
        self.assertEqual(names(filters[0].filter_all(t.cells(), t.request())), ["a"])

    def test_bad_settings(self) -> None:
        """Each mistake is a ConfigError naming its key."""
        cases = [
            ({"filters": ["nope"]}, "scheduler.filters[0]"),
            ({"filters": ["os.path.NoSuch"]}, "scheduler.filters[0]"),
            ({"filters": [f"{__name__}.NotAPlugin"]}, "does not implement ICellFilter"),
            ({"weighers": ["target_cell"]}, "scheduler.weighers[0]"),
            ({"filters": ["target_cell", "target_cell"]}, "twice"),
            ({"multipliers": {"other": 1.0}}, "scheduler.multipliers.other"),
            ({"retries": -1}, "scheduler.retries"),
            ({"retry_delay": "2"}, "scheduler.retry_delay"),
            ({"policy": {"target_cell": "root"}}, "scheduler.policy.target_cell"),
            ({"image_version_match": "some"}, "scheduler.image_version_match"),
            ({"bogus": 1}, "scheduler.bogus"),
        ]
        for data, key in cases:
            e = self.assertRaises(ConfigError, parse_scheduler, data)
            self.assertIn(key, str(e))

    def test_scheduler_provides_its_interface(self) -> None:
        """CellsScheduler passes verifyObject for ICellScheduler, with the
        configured filters and weighers in order."""
        runner = MemoryTree(Clock(), {"top": ["a"]})["top"]
        scheduler = CellsScheduler(
            runner, settings=SchedulerSettings(filters=("image_properties",))
        )
        self.assertTrue(verifyObject(ICellScheduler, scheduler))
        self.assertEqual([f.name for f in scheduler.filters], ["image_properties"])
        self.assertEqual(len(scheduler.weighers), 3)

    def test_broken_plugin_object(self) -> None:
        """A class that claims the interface but lacks its methods is refused."""
        s = SchedulerSettings(filters=(f"{__name__}.Liar",))
        e = self.assertRaises(ConfigError, make_filters, s)
        self.assertIn("does not provide ICellFilter", str(e))


@implementer(ICellFilter)
class OnlyA:
    """A user filter: only the cell named a."""

    name = "only_a"

    def filter_all(self, cells: Any, request: Any) -> list[Any]:
        return [c for c in cells if c.name == "a"]


@implementer(ICellWeigher)
class Alphabetical:
    """A user weigher taking the settings: earlier names weigh more."""

    name = "alphabetical"
    multiplier = 1.0
    normalize = True

    def __init__(self, settings: SchedulerSettings) -> None:
        self.settings = settings

    def weigh(self, cell: Any, request: Any) -> float:
        return -float(ord(cell.name[0]))


class NotAPlugin:
    name = "not"


@implementer(ICellFilter)
class Liar:  # type: ignore[misc]  # on purpose: it lacks filter_all
    name = "liar"
