"""Fixtures: a manual clock, a store path in tmp_path, a seeded users table, a ready Workctl (helpers
that are not fixtures live in helpers.py).

Everything runs on real SQLite files; time only moves when a test calls ``clock.advance``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import pytest

from workctl import Workctl
from workctl.clock import ManualClock
from workctl.config import Config
from helpers import make_users


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No plugins, and nothing from the developer's environment or working directory leaks in."""
    monkeypatch.setenv("WORKCTL_LOAD_PLUGINS", "0")
    for name in ("WORKCTL_DB", "WORKCTL_CONFIG", "WORKCTL_NOW", "WORKCTL_TARGET_DB", "WORKCTL_AGENT_ID",
                 "WORKCTL_TEST_CRASH_AT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # so a stray ./workctl.toml or ./workctl.db is never picked up


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock("2026-01-01T00:00:00Z")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "w.db"


@pytest.fixture
def users_db() -> Callable[..., None]:
    """``users_db(path, n, start=1)``: create the users table with n filled-in users in that SQLite file."""
    return functools.partial(make_users, filled=True)


@pytest.fixture
def make_wc(db_path: Path, clock: ManualClock) -> Callable[..., Workctl]:
    """Open further Workctl handles (other agents, other configs) on the same store; all are closed."""
    opened: list[Workctl] = []

    def make(path: str | Path | None = None, *, config: Config | None = None, user: str = "operator",
             create: bool = True) -> Workctl:
        # create=True: these handles stand for a set-up store; tests of store creation pass create=False.
        wc = Workctl(path or db_path, config=config or Config(), clock=clock, user=user, create=create)
        opened.append(wc)
        return wc

    yield make
    for wc in opened:
        wc.close()


@pytest.fixture
def wc(db_path: Path, users_db: Callable[..., None], make_wc: Callable[..., Workctl]) -> Workctl:
    """A Workctl on a fresh store whose own file also holds 150 users (the default target)."""
    users_db(db_path, 150)
    handle = make_wc()
    handle.session  # open (create and migrate) the store now, so tests can inspect it from the start
    return handle
