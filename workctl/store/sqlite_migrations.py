"""The store's schema as named, ordered migrations (sqlite-utils ``Migrations``).

Applied migrations are never edited; new ones are only appended. ``MIGRATION_NAMES`` is what the
store's cheap start-up check compares against ``_sqlite_migrations`` with the stdlib driver, so that a
process that finds the schema current never imports sqlite-utils (about 100 ms of start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

MIGRATION_SET = "workctl"


def m001_initial(db: Database) -> None:
    statements = [
        """CREATE TABLE orders (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            state TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            payload TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            item_count INTEGER NOT NULL,
            diff TEXT,
            error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            submitted_at TEXT,
            approved_at TEXT,
            applied_at TEXT,
            completed_at TEXT
        )""",
        "CREATE INDEX orders_state_type ON orders(state, type)",
        "CREATE INDEX orders_created ON orders(created_at)",
        # n is the rowid: creation order, the "oldest first" of the claim.
        """CREATE TABLE items (
            n INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            order_id TEXT NOT NULL REFERENCES orders(id),
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            state TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            input TEXT NOT NULL,
            result TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            leased_by TEXT,
            lease_token TEXT,
            lease_expires_at TEXT,
            last_heartbeat_at TEXT,
            visible_at TEXT NOT NULL DEFAULT '',
            submitted_by TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        # The claim indexes hold only claimable rows (queued, or leased and maybe expired), so a claim
        # is one seek whatever the history; visible_at ('' when queued, the lease expiry when leased)
        # is the single "claimable when <= now" column.
        "CREATE INDEX items_claim ON items(priority DESC, n) WHERE state IN ('queued', 'leased')",
        "CREATE INDEX items_claim_order ON items(order_id, n) WHERE state IN ('queued', 'leased')",
        "CREATE INDEX items_claim_type ON items(type, priority DESC, n) WHERE state IN ('queued', 'leased')",
        "CREATE INDEX items_order_seq ON items(order_id, seq)",
        # Order-state derivation asks "does this order have an item in state S?": one seek each.
        "CREATE INDEX items_order_state ON items(order_id, state)",
        "CREATE INDEX items_state ON items(state, lease_expires_at)",
        # The audit trail; deliberately without foreign keys so it outlives what it describes.
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            order_id TEXT,
            item_id TEXT,
            entity TEXT NOT NULL,
            event TEXT NOT NULL,
            from_state TEXT,
            to_state TEXT,
            actor_type TEXT NOT NULL,
            actor_id TEXT NOT NULL,
            payload TEXT,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX events_order ON events(order_id, id)",
        "CREATE INDEX events_item ON events(item_id, id)",
        "CREATE INDEX events_created ON events(created_at)",
        """CREATE TABLE idempotency_keys (
            scope TEXT NOT NULL,
            key_hash TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            response TEXT NOT NULL,
            exit_code INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            PRIMARY KEY (scope, key_hash)
        )""",
        "CREATE INDEX idempotency_created ON idempotency_keys(created_at)",
    ]
    for statement in statements:
        db.execute(statement)


def m002_sync_records(db: Database) -> None:
    """What the seed's variations keep: per-user failures, field-level provenance, delta cursors, the
    notification outbox. All are written in the store's approve/submit transactions (see orders.py)."""
    statements = [
        # Variation 1: every failed user, per order and attempt (workctl failures, sync --retry-failed).
        """CREATE TABLE sync_failures (
            id INTEGER PRIMARY KEY,
            order_id TEXT NOT NULL,
            item_id TEXT NOT NULL,
            user_id INTEGER NOT NULL,
            source TEXT NOT NULL,
            error_class TEXT NOT NULL,
            message TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX sync_failures_order ON sync_failures(order_id, user_id)",
        # Variation 3: every applied field change (workctl why, workctl revert).
        """CREATE TABLE provenance (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL,
            field TEXT NOT NULL,
            old TEXT,
            new TEXT,
            source TEXT,
            order_id TEXT NOT NULL,
            item_id TEXT,
            agent TEXT,
            applied_at TEXT NOT NULL,
            reverted_by TEXT
        )""",
        "CREATE INDEX provenance_user ON provenance(user_id, field, id)",
        "CREATE INDEX provenance_order ON provenance(order_id)",
        # Variation 5: the delta cursor per source, advanced only by the transaction that applies.
        """CREATE TABLE sync_cursors (
            source TEXT PRIMARY KEY,
            cursor TEXT NOT NULL,
            order_id TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        # Variation 4: notifications, written with the apply and sent after commit.
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            webhook TEXT NOT NULL,
            event TEXT NOT NULL,
            order_id TEXT,
            payload TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL DEFAULT '',
            last_error TEXT,
            created_at TEXT NOT NULL,
            sent_at TEXT
        )""",
        "CREATE INDEX outbox_pending ON outbox(next_attempt_at) WHERE state = 'pending'",
    ]
    for statement in statements:
        db.execute(statement)


def m003_reverts(db: Database) -> None:
    """workctl revert: one row per reverted order, written in the store transaction that records the
    revert; its primary key is what makes a second revert of the same order impossible."""
    db.execute("""CREATE TABLE reverts (
        order_id TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        actor TEXT NOT NULL,
        restored INTEGER NOT NULL,
        skipped INTEGER NOT NULL,
        result TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""")


def m004_scopes_and_message_ids(db: Database) -> None:
    """``sync --source S --users SPEC`` resumes the open order of the same scope: orders get the scope key
    their type computes at propose (NULL for types without one), indexed with the state, so finding it is
    one seek instead of parsing every order's payload. Outbox rows get their Standard Webhooks message id
    (``webhook-id``, stable across retries)."""
    db.execute("ALTER TABLE orders ADD COLUMN scope_key TEXT")
    db.execute("CREATE INDEX orders_scope ON orders(scope_key, state) WHERE scope_key IS NOT NULL")
    db.execute("ALTER TABLE outbox ADD COLUMN message_id TEXT")
    # How far the order.failed alerts have looked through the events (one row per alert kind). A store
    # that already has history starts from its newest event: alerts are about failures from now on.
    db.execute("CREATE TABLE alert_marks (name TEXT PRIMARY KEY, last_event_id INTEGER NOT NULL)")
    db.execute("INSERT INTO alert_marks (name, last_event_id) SELECT 'order.failed', coalesce(max(id), 0) FROM events")


def m005_api_tokens(db: Database) -> None:
    """workctl serve: the bearer tokens of the HTTP API. Only a SHA-256 of each secret is kept; the secret
    itself is shown once, by ``workctl tokens create``."""
    db.execute("""CREATE TABLE api_tokens (
        name TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        secret_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT
    )""")


# Append only. The names are the contract with databases already in the field.
MIGRATIONS: list[Callable[[Database], None]] = [m001_initial, m002_sync_records, m003_reverts,
                                                 m004_scopes_and_message_ids, m005_api_tokens]
MIGRATION_NAMES: tuple[str, ...] = tuple(fn.__name__ for fn in MIGRATIONS)


def build() -> Migrations:
    """The sqlite-utils migration set (imports sqlite-utils: only call when something is pending)."""
    from sqlite_utils.migrations import Migrations

    migrations = Migrations(MIGRATION_SET)
    for fn in MIGRATIONS:
        migrations()(fn)
    return migrations
