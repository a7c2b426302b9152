"""The API side of a build, against a real cellsd tree (the scheduler's
integration tests run it as a subprocess: a fresh reactor each time)::

    python -m tests.integration.scheduler_client SPEC_JSON

SPEC_JSON has ``action`` and what it needs:

``build``: ``endpoint`` (the top's ``[api] listen``), ``db`` (the top's store
URL), ``count``, ``flavor`` (a Flavor as a dict), ``hints``, ``admin``,
``wait`` (seconds). As Nova's API does, each instance is first recorded in
the API cell's database (generation 0, building, no cell), then one
``build_instances`` per instance is cast, all at once, through
``cellsd.client.connect``; then the top's records are read until every
instance is active or in error. Prints ``instances`` (uuid -> vm_state,
cell_name, host, faults) and ``seconds``.

``capacities``: ``top`` and ``leaves`` (name -> endpoint), ``timeout``. Reads
every leaf's own capacities until all have some, then the top's
``get_capacities()`` until it equals their sum. Prints ``top``, ``leaves``,
``sum``, ``equal`` and ``seconds_after_leaves``.

``nodes``: ``endpoint``; every compute node below (``compute_node_get_all``).
"""

from __future__ import annotations

import copy
import json
import sys
import time
import uuid as uuidlib
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from cellsd.client import connect
from cellsd.compute.actions import sizes_of
from cellsd.context import RequestContext
from cellsd.objects import Flavor, Instance
from cellsd.rpc.api import CellsAPI
from cellsd.state import add_capacities
from cellsd.store import CellStore


def admin(is_admin: bool = True) -> RequestContext:
    return RequestContext(user_id="u1", project_id="p1", is_admin=is_admin)


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def build(reactor: Any, spec: dict[str, Any]) -> dict[str, Any]:
    flavor = Flavor.from_dict(spec["flavor"])
    store = CellStore(reactor, spec["db"])
    await store.start()
    api: CellsAPI = await connect(reactor, spec["endpoint"], call_timeout=30)
    try:
        ctxt = admin(spec.get("admin", True))
        protos = []
        for index in range(int(spec["count"])):
            inst = Instance(
                uuid=str(uuidlib.uuid4()),
                user_id="u1",
                project_id="p1",
                display_name=f"vm-{index}",
                image_ref="img-1",
                vm_state="building",
                task_state="scheduling",
                **sizes_of(flavor),
            )
            await store.instance_create(inst, 0)
            protos.append(inst)
        start = time.monotonic()
        props: dict[str, Any] = {"instance_type": flavor}
        if spec.get("hints"):
            props["scheduler_hints"] = spec["hints"]
        await defer.gatherResults(
            [
                api.build_instances(
                    ctxt,
                    instances=[inst],
                    image={"id": "img-1", "properties": spec.get("image_properties", {})},
                    filter_properties=props,
                    admin_password=None,
                    injected_files=[],
                    requested_networks=None,
                    security_groups=["default"],
                    block_device_mapping=[],
                    legacy_bdm=False,
                )
                for inst in protos
            ]
        )
        uuids = [str(i.uuid) for i in protos]
        deadline = time.monotonic() + float(spec.get("wait", 30))
        while True:
            found = await store.instance_get_all_by_filters({"uuid": uuids})
            done = [i for i in found if i.vm_state in ("active", "error")]
            if len(done) == len(uuids) or time.monotonic() > deadline:
                break
            await sleep(reactor, 0.2)
        faults = await store.instance_fault_get_by_instance_uuids(uuids)
        return {
            "seconds": round(time.monotonic() - start, 2),
            "instances": {
                str(i.uuid): {
                    "vm_state": i.vm_state,
                    "cell_name": i.cell_name,
                    "host": i.host,
                    "faults": [f.message for f in faults.get(str(i.uuid), [])],
                }
                for i in found
            },
        }
    finally:
        api.transport.close()
        await store.stop()


async def capacities(reactor: Any, spec: dict[str, Any]) -> dict[str, Any]:
    top = await connect(reactor, spec["top"], call_timeout=10)
    leaves = {n: await connect(reactor, ep, call_timeout=10) for n, ep in spec["leaves"].items()}
    ctxt = admin()
    deadline = time.monotonic() + float(spec.get("timeout", 30))
    all_reported: float | None = None
    report: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline:
            own = {n: await api.get_capacities(ctxt) for n, api in leaves.items()}
            if all_reported is None and all(own.values()):
                all_reported = time.monotonic()
            total: dict[str, Any] = {}
            for figures in own.values():
                add_capacities(total, copy.deepcopy(figures))
            seen = await top.get_capacities(ctxt)
            report = {"top": seen, "leaves": own, "sum": total, "equal": seen == total}
            if all_reported is not None and seen == total:
                report["seconds_after_leaves"] = round(time.monotonic() - all_reported, 2)
                break
            await sleep(reactor, 0.1)
        return report
    finally:
        for api in [top, *leaves.values()]:
            api.transport.close()


async def nodes(reactor: Any, spec: dict[str, Any]) -> dict[str, Any]:
    api = await connect(reactor, spec["endpoint"], call_timeout=10)
    try:
        found = await api.compute_node_get_all(admin())
        return {"nodes": [dict(n.items()) for n in found]}
    finally:
        api.transport.close()


ACTIONS = {"build": build, "capacities": capacities, "nodes": nodes}


def main() -> None:
    spec = json.loads(sys.argv[1])

    async def go(reactor: Any) -> None:
        out = await ACTIONS[spec["action"]](reactor, spec)
        print(json.dumps(out, default=str), flush=True)

    task.react(lambda reactor: Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    main()
