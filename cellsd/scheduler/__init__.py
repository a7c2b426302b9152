"""The cells scheduler and the capacities it works from (behaviour §5, §6).

* :mod:`~cellsd.scheduler.capacity`: a cell's own capacities from its compute
  nodes, services and flavors (§5.4).
* :mod:`~cellsd.scheduler.propagation`: capabilities and capacities pushed up
  the tree, periodically and (coalesced) after a child's report (§5.6).
* :mod:`~cellsd.scheduler.filters`, :mod:`~cellsd.scheduler.weights`: the
  filter and weigher plugins (§6.3, §6.4), loaded by
  :mod:`~cellsd.scheduler.plugins` as ``[scheduler]`` names them.
* :mod:`~cellsd.scheduler.scheduler`: CellsScheduler, where a build goes.
"""
