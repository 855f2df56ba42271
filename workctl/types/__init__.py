"""Order types: what a work order means, how it is planned, checked and applied."""

from __future__ import annotations

from .base import ApplyContext, OrderType, PlannedItem, Problem
from .registry import get_type, list_types

__all__ = ["ApplyContext", "OrderType", "PlannedItem", "Problem", "get_type", "list_types"]
