"""Benchmarks for cellsd's message routing (``make bench``).

Every figure is printed next to a floor measured in the same run: a raw
AMP-over-TLS relay over the same sockets, certificates and ``Deliver``
command, with no routing logic. See bench/README.md.
"""
