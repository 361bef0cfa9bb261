"""Equivariant building blocks: the Clifford algebra Cl(3,0), layers on its multivectors, and the
vector/scalar MLP the model is built from."""

from . import algebra
from .clifford import CliffordLayerNorm, CliffordLinear, CliffordMLP, GatedNonlinearity, GeometricProduct
from .vector_scalar import VectorScalarMLP

__all__ = ["algebra", "CliffordLayerNorm", "CliffordLinear", "CliffordMLP", "GatedNonlinearity", "GeometricProduct",
           "VectorScalarMLP"]
