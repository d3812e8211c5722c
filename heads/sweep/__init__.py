"""`heads sweep`: many head configs trained from one store, many heads per pass, picked on dev."""
from __future__ import annotations

from .config import SweepConfig
from .driver import SweepResult, sweep

__all__ = ["SweepConfig", "SweepResult", "sweep"]
