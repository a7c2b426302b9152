"""The ``twistd cellsd`` plugin: a thin pointer to :mod:`cellsd.tap`."""

from twisted.application.service import ServiceMaker

cellsd = ServiceMaker(
    "cellsd",
    "cellsd.tap",
    "Run one cell of a cellsd tree (Nova cells v1 as a Twisted daemon)",
    "cellsd",
)
