"""workctl: a work-order control plane for data syncs, on one SQLite file."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import Workctl, default_agent
from .errors import ExitCode, WorkctlError

__all__ = ["ExitCode", "Workctl", "WorkctlError", "__version__", "default_agent"]
