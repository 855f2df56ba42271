"""Built-in order types plus plugins from the ``workctl.types`` entry-point group.

Plugins load lazily: looking up a built-in never touches importlib.metadata (start-up time on the
hot path). A plugin that fails to load is a warning on stderr, never a crash.
"""

from __future__ import annotations

import os
from typing import Callable

from ..errors import NotFound, warn
from .base import OrderType

ENTRY_POINT_GROUP = "workctl.types"


def _builtins() -> dict[str, Callable[[], OrderType]]:
    def user_data_sync() -> OrderType:
        from .user_data_sync import UserDataSync
        return UserDataSync()

    def task_batch() -> OrderType:
        from .task_batch import TaskBatch
        return TaskBatch()

    return {"user.data.sync": user_data_sync, "task.batch": task_batch}


_cache: dict[str, OrderType] = {}
_plugins: dict[str, OrderType] | None = None


def _load_plugins() -> dict[str, OrderType]:
    global _plugins
    if _plugins is not None:
        return _plugins
    _plugins = {}
    if os.environ.get("WORKCTL_LOAD_PLUGINS", "1") == "0":
        return _plugins
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            instance = loaded() if isinstance(loaded, type) else loaded
            if not isinstance(instance, OrderType) or not instance.name:
                raise TypeError("entry point must be an OrderType subclass or instance with a name")
            _plugins[instance.name] = instance
        except Exception as exc:  # a broken plugin must not take the CLI down
            warn(f"order type plugin {ep.name!r} failed to load: {exc}")
    return _plugins


def get_type(name: str) -> OrderType:
    if name in _cache:
        return _cache[name]
    factory = _builtins().get(name)
    if factory is not None:
        _cache[name] = factory()
        return _cache[name]
    plugin = _load_plugins().get(name)
    if plugin is None:
        known = ", ".join(sorted(set(_builtins()) | set(_load_plugins())))
        raise NotFound(f"unknown order type '{name}' (known types: {known})", code="unknown_type")
    _cache[name] = plugin
    return plugin


def list_types() -> list[OrderType]:
    names = sorted(set(_builtins()) | set(_load_plugins()))
    return [get_type(name) for name in names]
