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


def m007_lean_hot_path(db: Database) -> None:
    """The hot path writes only what some query reads (docs/hotpath-notes.md has the measurements):

    * ``items`` keeps the claim columns only; an item's input goes to ``item_inputs`` (written once, by
      propose) and its result, error and submitter to ``item_results`` (written at submit/release);
    * the claim indexes hold queued rows only (a claim deletes one entry, and nothing afterwards);
      ``items_leased`` finds expired leases, ``items_failed`` the failures maintain dead-letters;
    * ``order_counts`` keeps each order's items per state (and the order's state) in one narrow row:
      an order's state is derived from it in one read, instead of a seek per state, and ``status`` is
      O(orders) instead of O(items);
    * ``events`` keeps the one index its queries read, ``(order_id, id)``;
    * ``orders.source`` and ``orders.parent_id`` (what the order reads from, and the order it follows
      up) are columns, so nothing parses whole payloads to find them.

    ``visible_at`` now means "not before" for queued rows only (a leased row's expiry is
    ``lease_expires_at``). ``last_heartbeat_at`` is dropped: every heartbeat's event carries it."""
    states = ("queued", "leased", "submitted", "accepted", "completed", "rejected", "failed", "dead_lettered",
              "cancelled")
    statements = [
        """CREATE TABLE items_new (
            n INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            order_id TEXT NOT NULL REFERENCES orders(id),
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            visible_at TEXT NOT NULL DEFAULT '',
            leased_by TEXT,
            lease_token TEXT,
            lease_expires_at TEXT,
            updated_at TEXT NOT NULL
        )""",
        """INSERT INTO items_new (n, id, order_id, seq, type, priority, state, attempts, max_attempts, visible_at,
                                 leased_by, lease_token, lease_expires_at, updated_at)
           SELECT n, id, order_id, seq, type, priority, state, attempts, max_attempts,
                  CASE WHEN state = 'queued' THEN visible_at ELSE '' END,
                  leased_by, lease_token, lease_expires_at, updated_at
           FROM items ORDER BY n""",
        "CREATE TABLE item_inputs (n INTEGER PRIMARY KEY, input TEXT NOT NULL)",
        "INSERT INTO item_inputs (n, input) SELECT n, input FROM items ORDER BY n",
        """CREATE TABLE item_results (n INTEGER PRIMARY KEY, result TEXT, error TEXT, submitted_by TEXT,
                                     updated_at TEXT NOT NULL)""",
        """INSERT INTO item_results (n, result, error, submitted_by, updated_at)
           SELECT n, result, error, submitted_by, updated_at FROM items
           WHERE result IS NOT NULL OR error IS NOT NULL OR submitted_by IS NOT NULL ORDER BY n""",
        f"""CREATE TABLE order_counts (order_id TEXT PRIMARY KEY, state TEXT NOT NULL,
            {', '.join(f'{s} INTEGER NOT NULL DEFAULT 0' for s in states)}) WITHOUT ROWID""",
        f"""INSERT INTO order_counts (order_id, state, {', '.join(states)})
            SELECT o.id, o.state, {', '.join(f"count(i.n) FILTER (WHERE i.state = '{s}')" for s in states)}
            FROM orders o LEFT JOIN items i ON i.order_id = o.id GROUP BY o.id""",
        "DROP TABLE items",
        "ALTER TABLE items_new RENAME TO items",
        "CREATE INDEX items_claim ON items(priority DESC, n) WHERE state = 'queued'",
        "CREATE INDEX items_claim_order ON items(order_id, n) WHERE state = 'queued'",
        "CREATE INDEX items_claim_type ON items(type, priority DESC, n) WHERE state = 'queued'",
        "CREATE INDEX items_leased ON items(lease_expires_at) WHERE state = 'leased'",
        "CREATE INDEX items_failed ON items(updated_at) WHERE state = 'failed'",
        # Items waiting out a retry backoff (rare): what status and "no work, N waiting" count, in O(waiting).
        "CREATE INDEX items_backoff ON items(visible_at) WHERE state = 'queued' AND visible_at > ''",
        "CREATE INDEX items_order_seq ON items(order_id, seq)",
        "DROP INDEX IF EXISTS events_item",
        "DROP INDEX IF EXISTS events_created",
        "ALTER TABLE orders ADD COLUMN source TEXT",
        "ALTER TABLE orders ADD COLUMN parent_id TEXT",
        # Only user.data.sync orders carry these today; later orders get them from their type at propose.
        """UPDATE orders SET source = json_extract(payload, '$.source'),
                             parent_id = json_extract(payload, '$.retry_of') WHERE type = 'user.data.sync'""",
        "CREATE INDEX orders_source ON orders(type, source) WHERE source IS NOT NULL",
        "CREATE INDEX orders_parent ON orders(parent_id) WHERE parent_id IS NOT NULL",
    ]
    for statement in statements:
        db.execute(statement)


def m008_source_times_and_staged_provenance(db: Database) -> None:
    """What approve writes is right: provenance keeps each value's source time (``source_at``: the
    conflict policies compare source times, not apply times), and a large approve writes its provenance
    rows before it takes the write lock, in small transactions, under an *attempt* id
    (``provenance.attempt``); they count only once ``provenance_attempts`` marks the attempt committed,
    which the apply's own transaction does (one row, whatever the order's size). Rows written inside
    their transaction have no attempt.

    Existing provenance rows get the source time their item recorded: its result's ``fetched_at``, else
    when it was submitted (``item_results.updated_at``, written at submit)."""
    statements = [
        "ALTER TABLE provenance ADD COLUMN source_at TEXT",
        # One parse per item, not per provenance row.
        """CREATE TEMP TABLE m008_item_times AS
           SELECT i.id AS item_id, coalesce(json_extract(r.result, '$.fetched_at'), r.updated_at) AS at
           FROM items i JOIN item_results r ON r.n = i.n
           WHERE i.id IN (SELECT DISTINCT item_id FROM provenance WHERE item_id IS NOT NULL)""",
        """UPDATE provenance SET source_at = (SELECT at FROM m008_item_times t WHERE t.item_id = provenance.item_id)
           WHERE item_id IS NOT NULL""",
        "DROP TABLE m008_item_times",
        "ALTER TABLE provenance ADD COLUMN attempt TEXT",
        "CREATE INDEX provenance_attempt ON provenance(attempt, user_id) WHERE attempt IS NOT NULL",
        """CREATE TABLE provenance_attempts (
            attempt TEXT PRIMARY KEY,
            order_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            committed_at TEXT,
            abandoned_at TEXT
        )""",
    ]
    for statement in statements:
        db.execute(statement)


def m009_delta_watermarks(db: Database) -> None:
    """Delta sync keeps a watermark per user and scope (a source and a set of fields) instead of one
    cursor per source, which skipped the users a delta over a subset left out. The old per-source cursors
    are dropped, not converted: they may be the skipping kind, so the first delta of each source after
    the upgrade is a full baseline."""
    statements = [
        """CREATE TABLE sync_scopes (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL,
            fields TEXT NOT NULL,
            UNIQUE (source, fields)
        )""",
        # synced_through: microseconds since 1970 UTC (8 bytes, not 27 of text: one row per user and scope).
        """CREATE TABLE sync_watermarks (
            scope_id INTEGER NOT NULL,
            user_id INTEGER NOT NULL,
            synced_through INTEGER NOT NULL,
            PRIMARY KEY (scope_id, user_id)
        ) WITHOUT ROWID""",
        "DROP TABLE sync_cursors",
    ]
    for statement in statements:
        db.execute(statement)


# Append only. The names are the contract with databases already in the field.
MIGRATIONS: list[Callable[[Database], None]] = [m001_initial, m002_sync_records, m003_reverts,
                                                 m004_scopes_and_message_ids, m005_api_tokens, m007_lean_hot_path,
                                                 m008_source_times_and_staged_provenance, m009_delta_watermarks]
MIGRATION_NAMES: tuple[str, ...] = tuple(fn.__name__ for fn in MIGRATIONS)


def build() -> Migrations:
    """The sqlite-utils migration set (imports sqlite-utils: only call when something is pending)."""
    from sqlite_utils.migrations import Migrations

    migrations = Migrations(MIGRATION_SET)
    for fn in MIGRATIONS:
        migrations()(fn)
    return migrations
