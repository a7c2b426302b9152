"""``cellsctl instances`` / ``cellsctl services`` and the 1.38 views behind
them, through a CellsAPI served in memory by a CellsManager with the views
(cellsd.rpc.manager_views.ViewMethods), on the tree of cell_support."""

from __future__ import annotations

import json
from typing import Any

from cellsd.cli import views_cmd
from cellsd.cli.cellsctl import build_parser
from cellsd.compute import states as st
from cellsd.rpc.errors import RPCVersionCapError
from cellsd.rpc.manager import CellsManager
from cellsd.testing import memory_api
from tests.unit.cell_support import PATHS, TreeCase, ctxt

#: The fields the acceptance names for an instance row.
INSTANCE_FIELDS = {
    "uuid",
    "vm_state",
    "task_state",
    "host",
    "cell_name",
    "project_id",
    "user_id",
    "flavor",
}


class ViewTests(TreeCase):
    def api(self, version_cap: str | None = None) -> Any:
        runner = self.tree["top"]
        manager = CellsManager(runner, runner.state, self.clock, store=self.stores["top"])
        return memory_api(manager, version_cap=version_cap)

    async def test_instances_are_the_tops_copies(self) -> None:
        """The top lists its copy of each instance with every field, the
        owner's path as cell_name; --cell lists another cell's; deleted
        ones only when asked."""
        a, b = await self.build("g1"), await self.build("c2")
        rows = await views_cmd.instance_list(self.api(), ctxt())
        self.assertEqual(sorted(r["uuid"] for r in rows), sorted([a.uuid, b.uuid]))
        for row in rows:
            self.assertLessEqual(INSTANCE_FIELDS, set(row))
            self.assertEqual((row["vm_state"], row["task_state"]), (st.ACTIVE, None))
            self.assertEqual(row["flavor"]["flavorid"], "1")
        self.assertEqual(
            {r["uuid"]: r["cell_name"] for r in rows}, {a.uuid: PATHS["g1"], b.uuid: PATHS["c2"]}
        )
        (own,) = await views_cmd.instance_list(self.api(), ctxt(), "c1!g1")
        self.assertEqual((own["uuid"], own["cell_name"]), (a.uuid, "g1"))
        await self.tree["top"].terminate_instance(ctxt(), await self.top_copy(a.uuid))
        await self.settle()
        live = await views_cmd.instance_list(self.api(), ctxt())
        self.assertEqual([r["uuid"] for r in live], [b.uuid])
        every = await views_cmd.instance_list(self.api(), ctxt(), deleted=True)
        self.assertEqual(len(every), 2)
        text = views_cmd.render_instances(live)
        self.assertIn(b.uuid, text)
        self.assertIn("top!c2", text)
        json.dumps(live)  # JSON-able as it comes

    async def test_services_of_every_cell(self) -> None:
        """Every cell's services, each with its cell's path and its
        cell@host name; JSON-able; a table for people."""
        rows = await views_cmd.service_list(self.api(), ctxt())
        self.assertEqual(
            [(r["cell_name"], r["host"], r["binary"]) for r in rows],
            [
                ("top!c1!g1", "host1", "nova-compute"),
                ("top!c1!g1", "host2", "nova-compute"),
                ("top!c2", "host1", "nova-compute"),
                ("top!c2", "host2", "nova-compute"),
            ],
        )
        self.assertEqual(rows[0]["cell_host"], "top!c1!g1@host1")
        self.assertIn("last_seen_up", rows[0])
        json.dumps(rows)
        self.assertIn("top!c2", views_cmd.render_services(rows))

    async def test_version_cap_refuses_the_view(self) -> None:
        """Under a Liberty cap the 1.38 view is refused on the caller's side."""
        with self.assertRaises(RPCVersionCapError):
            await views_cmd.instance_list(self.api("liberty"), ctxt())

    def test_cellsctl_parses_the_commands(self) -> None:
        """cellsctl instances [--cell] [--deleted] [--json] and services."""
        args = build_parser().parse_args(
            ["--connect", "unix:x", "instances", "--cell", "c1", "--json"]
        )
        self.assertEqual(
            (args.command, args.cell, args.json, args.deleted), ("instances", "c1", True, False)
        )
        args = build_parser().parse_args(["--connect", "unix:x", "services"])
        self.assertEqual(args.command, "services")
