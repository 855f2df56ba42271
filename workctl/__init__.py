"""workctl: a work-order control plane for data syncs, on one SQLite file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ExitCode", "Workctl", "WorkctlError", "__version__", "default_agent"]

if TYPE_CHECKING:
    from .api import Workctl, default_agent
    from .errors import ExitCode, WorkctlError


def __getattr__(name: str) -> Any:
    """``workctl.Workctl`` and friends, imported on first use: ``import workctl`` (which every
    ``workctl.*`` import runs first) then costs nothing, so ``workctl --help``, ``--version`` and
    ``config`` never load the library and its store code (bench/startup_bench.py)."""
    if name in ("Workctl", "default_agent"):
        from . import api

        return getattr(api, name)
    if name in ("ExitCode", "WorkctlError"):
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'workctl' has no attribute {name!r}")
