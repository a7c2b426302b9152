"""A cell's compute layer (IComputeAPI): the built-in simulated compute."""

from cellsd.compute.simulated import SimulatedCompute

__all__ = ["SimulatedCompute"]
