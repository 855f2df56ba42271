"""Fixtures: a manual clock, a store in tmp_path (or a PostgreSQL schema), a seeded users table, a ready
Workctl (helpers that are not fixtures live in helpers.py).

Everything runs on real databases; time only moves when a test calls ``clock.advance``.

**The contract suite.** A test module that sets ``BACKENDS = ("sqlite", "postgres")`` runs every test that
uses ``db_path`` once per backend: ``db_path`` is then a SQLite file or the URL of a PostgreSQL schema of
its own (created for the test, dropped after it) on the server at ``WORKCTL_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Without a reachable server those runs are skipped with
the reason — unless ``WORKCTL_TEST_PG`` is set (CI sets it): then they fail, so a missing server can
never pass for a green run.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Iterator

import pytest

from workctl import Workctl
from workctl.clock import ManualClock
from workctl.config import Config
from helpers import make_users, pg_schema


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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = getattr(metafunc.module, "BACKENDS", None)
    only = metafunc.definition.get_closest_marker("backends")
    if only is not None:  # @pytest.mark.backends("sqlite"): a test of one backend's own mechanics
        backends = only.args
    if backends and "db_path" in metafunc.fixturenames:
        metafunc.parametrize("db_path", backends, indirect=True)


@pytest.fixture
def db_path(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """The store: a SQLite file in tmp_path, or (contract modules, ``postgres``) a PostgreSQL schema URL."""
    if getattr(request, "param", "sqlite") == "postgres":
        with pg_schema() as url:
            yield url
    else:
        yield tmp_path / "w.db"


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
    _ = handle.session  # open (create and migrate) the store now, so tests can inspect it from the start
    return handle
