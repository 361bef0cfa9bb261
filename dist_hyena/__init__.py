"""dist_hyena: distributed long-context training of SE(3)-Hyena."""

from .config import HyenaConfig
from .model import SE3HyenaModel

__all__ = ["HyenaConfig", "SE3HyenaModel"]
__version__ = "0.2.0"
