"""A cell's own capacities from its compute nodes, services and flavors
(behaviour §5.4, and §8.5 #36: hosts whose service is down do not count)."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cellsd.objects import ComputeNode, Flavor, Service
from cellsd.scheduler.capacity import StoreCapacitySource, compute_capacities
from cellsd.store import CellStore

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)

#: The worked example's flavors: (RAM, root, ephemeral).
FLAVORS = [
    Flavor(memory_mb=m, root_gb=r, ephemeral_gb=e)
    for m, r, e in [(0, 0, 0), (50, 12, 13), (50, 2, 4), (10, 20, 5)]
]


def node(host: str, memory_mb: int, local_gb: int, free_ram_mb: int, free_disk_gb: int) -> Any:
    return ComputeNode(
        host=host,
        memory_mb=memory_mb,
        local_gb=local_gb,
        free_ram_mb=free_ram_mb,
        free_disk_gb=free_disk_gb,
    )


def service(host: str, **kw: Any) -> Service:
    values: dict[str, Any] = {"host": host, "binary": "nova-compute", "last_seen_up": NOW}
    values.update(kw)
    return Service(**values)


#: host1 (1024, 100, 0, 0), host2 (1024, 100, -1, -1), host3 (1024, 100,
#: 1024, 100), host4 (1024, 100, 300, 30).
NODES = [
    node("host1", 1024, 100, 0, 0),
    node("host2", 1024, 100, -1, -1),
    node("host3", 1024, 100, 1024, 100),
    node("host4", 1024, 100, 300, 30),
]
SERVICES = [service(f"host{i}") for i in range(1, 5)]


def expected(ram_units: tuple[int, int, int], disk_units: tuple[int, int, int]) -> dict[str, Any]:
    return {
        "ram_free": {
            "total_mb": 1323,
            "units_by_mb": dict(zip(["0", "10", "50"], ram_units, strict=True)),
        },
        "disk_free": {
            "total_mb": 132096,
            "units_by_mb": dict(zip(["0", "6144", "25600"], disk_units, strict=True)),
        },
    }


class WorkedExampleTests(SynchronousTestCase):
    """The table of behaviour §5.4, row by row."""

    def capacities(self, reserve: float, nodes: list[Any] = NODES) -> dict[str, Any]:
        return compute_capacities(nodes, SERVICES, FLAVORS, reserve)

    def test_no_reserve(self) -> None:
        """0 %: RAM 0/132/26 units, disk 0/21/5, totals 1323 and 132096 MB."""
        self.assertEqual(self.capacities(0), expected((0, 132, 26), (0, 21, 5)))

    def test_ten_percent(self) -> None:
        """10 % (the default): RAM 0/111/21, disk 0/18/3."""
        self.assertEqual(self.capacities(10), expected((0, 111, 21), (0, 18, 3)))

    def test_half(self) -> None:
        """50 %: RAM 0/51/10, disk 0/8/2."""
        self.assertEqual(self.capacities(50), expected((0, 51, 10), (0, 8, 2)))

    def test_everything_reserved(self) -> None:
        """100 %: no units at all, but the free totals are still reported."""
        self.assertEqual(self.capacities(100), expected((0, 0, 0), (0, 0, 0)))

    def test_n_to_one(self) -> None:
        """Several nodes on one host are summed before the reserve is taken:
        at 50 %, 6 units of 50 MB (all from host2) and 1 of 25600 MB."""
        nodes = [
            node("host1", 1024, 100, 0, 0),
            node("host1", 1024, 100, -1, -1),
            node("host2", 1024, 100, 1024, 100),
            node("host2", 1024, 100, 300, 30),
        ]
        got = self.capacities(50, nodes)
        self.assertEqual(got["ram_free"]["total_mb"], 1323)
        self.assertEqual(got["disk_free"]["total_mb"], 132096)
        self.assertEqual(got["ram_free"]["units_by_mb"]["50"], 6)
        self.assertEqual(got["disk_free"]["units_by_mb"]["25600"], 1)


class HostSelectionTests(SynchronousTestCase):
    """Which hosts count."""

    def test_no_host_is_empty_not_zero(self) -> None:
        """No qualifying host gives {} (not zeros)."""
        self.assertEqual(compute_capacities([], SERVICES, FLAVORS, 10), {})
        self.assertEqual(compute_capacities(NODES, [], FLAVORS, 10), {})

    def test_disabled_and_other_binaries_skipped(self) -> None:
        """A host whose nova-compute service is disabled, or that has only
        another binary's service, is left out."""
        services = [
            service("host3", disabled=True),
            Service(host="host4", binary="nova-conductor", last_seen_up=NOW),
        ]
        self.assertEqual(compute_capacities(NODES, services, FLAVORS, 0), {})
        services.append(service("host4"))
        got = compute_capacities(NODES, services, FLAVORS, 0)
        self.assertEqual(got["ram_free"]["total_mb"], 300)

    def test_down_services_skipped(self) -> None:
        """Given the time, a host not heard from within service_down_time
        (or forced down) is left out (§8.5 #36); without a time, liveness
        is not considered, as in Liberty."""
        services = [
            service("host3", last_seen_up=NOW - datetime.timedelta(seconds=61)),
            service("host4", forced_down=True),
            service("host1", last_seen_up=None),
            service("host2", last_seen_up=NOW - datetime.timedelta(seconds=60)),
        ]
        got = compute_capacities(NODES, services, FLAVORS, 0, NOW, 60)
        self.assertEqual(got["ram_free"]["total_mb"], -1)  # host2 only
        liberty = compute_capacities(NODES, services, FLAVORS, 0)
        self.assertEqual(liberty["ram_free"]["total_mb"], 1323)


class StoreSourceTests(TestCase):
    """StoreCapacitySource reads the nodes and services of a real store."""

    timeout = 30

    async def test_reads_the_store(self) -> None:
        """The figures follow the store: a service going silent takes its
        host out of the next reading."""
        store = CellStore(reactor, f"sqlite:///{self.mktemp()}.db")  # type: ignore[arg-type]
        await store.start()
        self.addCleanup(store.stop)
        clock = Clock()
        clock.advance(NOW.timestamp())
        source = StoreCapacitySource(store, clock, FLAVORS, 0.0, service_down_time=60)
        self.assertEqual(await source(), {})
        for n in NODES:
            svc = await store.service_create(service(str(n.host)))
            n.service_id = svc.id
            await store.compute_node_create(n)
        self.assertEqual(await source(), expected((0, 132, 26), (0, 21, 5)))
        host3 = await store.service_get_by_host_and_binary("host3", "nova-compute")
        clock.advance(61)
        assert host3.id is not None
        for other in ("host1", "host2", "host4"):
            svc = await store.service_get_by_host_and_binary(other, "nova-compute")
            assert svc.id is not None
            await store.service_update(
                svc.id,
                {"last_seen_up": datetime.datetime.fromtimestamp(clock.seconds(), datetime.UTC)},
            )
        got = await source()
        self.assertEqual(got["ram_free"]["total_mb"], 299)
