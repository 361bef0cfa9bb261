"""Equivariant building blocks: the Clifford algebra Cl(3,0) and layers on its multivectors."""

from . import algebra
from .clifford import CliffordLayerNorm, CliffordLinear, CliffordMLP, GatedNonlinearity, GeometricProduct

__all__ = ["algebra", "CliffordLayerNorm", "CliffordLinear", "CliffordMLP", "GatedNonlinearity", "GeometricProduct"]
