//! Every SQL statement duropg runs, as templates, and the one function that
//! turns a template into SQL text.
//!
//! Values are always bound parameters (`$1`, `$2`, …). Two placeholders are
//! replaced by [`render`], and nothing else is ever spliced into SQL:
//!
//! - `{s}`: the tenant schema, validated by
//!   [`SchemaName::parse`](duropg_core::SchemaName::parse) and quoted;
//! - `{now}`: the store clock, a constant expression (milliseconds since the
//!   epoch by `clock_timestamp()`, which — unlike `now()` — advances inside a
//!   transaction, so a lease taken after a wait starts after the wait).
//!
//! Built-in functions are qualified with `pg_catalog`, and every connection
//! runs with `search_path = pg_catalog, pg_temp`, so objects planted in
//! `public` or `pg_temp` cannot capture a query.

use duropg_core::SchemaName;

/// The tables the migrations create in a tenant schema, besides the migration
/// ledger `_duropg_migrations`. Templates name each one qualified by `{s}`.
#[cfg(any(test, feature = "testing"))]
pub const TABLES: &[&str] = &[
    "instances",
    "executions",
    "history",
    "orchestrator_queue",
    "instance_locks",
    "worker_queue",
    "sessions",
    "kv_store",
    "kv_delta",
    "settled_tokens",
];

/// The store clock in milliseconds since the Unix epoch.
///
/// A scalar subquery, so it is evaluated once per use as an init plan, not
/// once per row: `clock_timestamp()` is volatile, and a comparison with a
/// volatile expression can be neither an index condition nor hoisted, so
/// `visible_at_ms <= <bare expression>` filtered every row of a queue (and
/// its dead tuples) instead of seeking the index.
const NOW_MS: &str = "(SELECT (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint)";

/// Render a template for `schema`. The only place SQL text is assembled.
pub fn render(template: &str, schema: &SchemaName) -> String {
    template.replace("{s}", &schema.quoted()).replace("{now}", NOW_MS)
}

macro_rules! statements {
    ($( $(#[$doc:meta])* $name:ident = $sql:expr; )*) => {
        /// Every statement, rendered once per store.
        #[derive(Debug, Clone)]
        pub struct Sql {
            $( $(#[$doc])* pub $name: String, )*
        }

        impl Sql {
            /// Render all templates for `schema`.
            pub fn new(schema: &SchemaName) -> Self {
                Self { $( $name: render($sql, schema), )* }
            }

            /// Every `(name, template)` pair, for tests and audits.
            #[cfg(any(test, feature = "testing"))]
            pub fn templates() -> &'static [(&'static str, &'static str)] {
                &[ $( (stringify!($name), $sql), )* ]
            }
        }
    };
}

statements! {
    /// Start a transaction.
    begin = "BEGIN";
    /// Commit it.
    commit = "COMMIT";
    /// Roll it back.
    rollback = "ROLLBACK";
    /// Let this transaction's COMMIT return without waiting for its WAL
    /// flush. Only for a transaction whose loss in a server crash costs
    /// nothing but redone work: an orchestration claim (see
    /// docs/semantics.md, "Locks and leases").
    relaxed_commit = "SELECT pg_catalog.set_config('synchronous_commit', 'off', true)";
    /// The id of the current transaction (assigning one).
    txid = "SELECT pg_catalog.txid_current()";
    /// What became of a transaction.
    txid_status = "SELECT pg_catalog.txid_status($1::bigint)";

    // ---- orchestrator queue -------------------------------------------------

    /// Insert one message ($1 instance, $2 payload, $3 delay ms or null, $4
    /// absolute ms or null) and announce it on channel $5 (origin $6). One
    /// row: how many messages it announced (0 or 1) and whether its wake-up
    /// is left to the coalescing window.
    ///
    /// The `state` and `announce` CTEs are the same text in
    /// `complete_work` (a test holds them equal): a message is announced
    /// when it is claimable at once — visible now, and its instance not
    /// locked (the lock holder's ack announces what arrived meanwhile, and
    /// the store wakes one window later for what that ack may not have
    /// seen: `PgStore::locked_arrival`) —
    /// unless $7 (an activity's completion) is set and other activities of
    /// the instance are still in the worker queue (`d`: the rows this
    /// statement deletes, which are no siblings), whose completions can
    /// share one orchestration turn with this one. The message is claimable
    /// either way; only the wake-up waits.
    enqueue_orchestrator = "WITH d AS (SELECT NULL::bigint AS id), ins AS (
            INSERT INTO {s}.orchestrator_queue (instance_id, work_item, visible_at_ms, enqueued_at_ms)
            VALUES ($1, $2, COALESCE($4::bigint, {now} + COALESCE($3::bigint, 0)), {now})
            RETURNING visible_at_ms
        ), state AS (
            SELECT ins.visible_at_ms <= {now}
                   AND NOT EXISTS (
                     SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = $1 AND l.locked_until_ms > {now})
                   AS claimable,
                   $7::boolean AND EXISTS (
                     SELECT 1 FROM {s}.worker_queue w
                     WHERE w.instance_id = $1 AND NOT EXISTS (SELECT 1 FROM d WHERE d.id = w.id))
                   AS siblings
            FROM ins
        ), announce AS (
            SELECT CASE WHEN claimable AND NOT siblings THEN 1 ELSE 0 END AS announced,
                   claimable AND siblings AS deferred,
                   CASE WHEN claimable AND NOT siblings THEN pg_catalog.pg_notify($5, 'o:1:' || $6) END AS notified
            FROM state
        )
        SELECT announced, deferred, notified FROM announce";

    /// Listen for this schema's notifications.
    listen = "LISTEN {s}";

    /// Notify channel $1 with payload $2, announcing $3 items.
    notify = "SELECT $3::int, pg_catalog.pg_notify($1, $2)";

    /// After a turn: notify channel $1 (origin $2) of the $3 orchestrator
    /// messages the turn made visible plus, when messages for instance $4
    /// arrived during the turn, one more; returns how many it announced.
    turn_notify = "SELECT $3::int + x.remaining::int,
            pg_catalog.pg_notify($1, 'o:' || ($3::int + x.remaining::int) || ':' || $2)
        FROM (SELECT EXISTS (
            SELECT 1 FROM {s}.orchestrator_queue q WHERE q.instance_id = $4 AND q.visible_at_ms <= {now}
        ) AS remaining) x
        WHERE $3::int > 0 OR x.remaining";

    /// Insert many messages (same columns as arrays).
    enqueue_orchestrator_many = "INSERT INTO {s}.orchestrator_queue (instance_id, work_item, visible_at_ms, enqueued_at_ms)
        SELECT u.instance_id, u.work_item, COALESCE(u.at_ms, {now} + COALESCE(u.delay_ms, 0)), {now}
        FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::bigint[]), pg_catalog.unnest($4::bigint[])) AS u(instance_id, work_item, delay_ms, at_ms)";

    /// Claim the instance of the message that became visible first (then the
    /// lowest id) that no live lock holds and that the capability window
    /// admits ($1 any-version, $2..$4 min, $5..$7 max); skip instances
    /// another fetch is claiming right now (advisory lock class $8); take the
    /// lock with token $9 for $10 ms. One row: the instance and the lock
    /// time, or — both NULL — how long until the next message becomes
    /// visible (NULL: none is waiting) and whether the claim lost a race:
    /// it chose an instance whose lock another claim committed after this
    /// statement's snapshot was taken, so its upsert took nothing and no
    /// other candidate was tried. That "nothing" says nothing about the
    /// queue; the store runs the claim again.
    ///
    /// Idempotent by token: when a lock with token $9 exists already (an
    /// earlier attempt of this claim committed and its reply was lost), the
    /// statement claims nothing new; it restarts that lock's lease from now
    /// and returns it, so a retried claim hands out the same instance.
    ///
    /// Its cost must not grow with the schema (`tests/tests/plans.rs` holds
    /// it to that): the walk in visibility order seeks
    /// `orchestrator_queue_ready_idx` and stops at the first message not yet
    /// due, so sleeping timers are never read; the capability check is a
    /// per-candidate lookup by primary key, and `OFFSET 0` keeps the planner
    /// from turning it into a hashed scan of every execution.
    claim_instance = "WITH mine AS (
            UPDATE {s}.instance_locks
            SET locked_until_ms = {now} + $10::bigint, locked_at_ms = {now}
            WHERE lock_token = $9
            RETURNING instance_id, locked_at_ms
        ), ready AS MATERIALIZED (
            SELECT q.id, q.instance_id, q.visible_at_ms
            FROM {s}.orchestrator_queue q
            WHERE q.visible_at_ms <= {now}
              AND NOT EXISTS (
                SELECT 1 FROM {s}.instance_locks l
                WHERE l.instance_id = q.instance_id AND l.locked_until_ms > {now})
              AND ($1::boolean OR NOT EXISTS (
                SELECT 1 FROM {s}.instances i
                JOIN {s}.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
                WHERE i.instance_id = q.instance_id
                  AND e.pinned_major IS NOT NULL
                  AND (ROW(e.pinned_major, e.pinned_minor, e.pinned_patch) < ROW($2::bigint, $3::bigint, $4::bigint)
                    OR ROW(e.pinned_major, e.pinned_minor, e.pinned_patch) > ROW($5::bigint, $6::bigint, $7::bigint))
                OFFSET 0))
            ORDER BY q.visible_at_ms, q.id
            LIMIT 64
        ), candidates AS MATERIALIZED (
            SELECT instance_id FROM ready GROUP BY instance_id ORDER BY min(visible_at_ms), min(id) LIMIT 16
        ), chosen AS (
            SELECT instance_id FROM candidates
            WHERE NOT EXISTS (SELECT 1 FROM mine)
              AND pg_catalog.pg_try_advisory_xact_lock($8::integer, pg_catalog.hashtext(instance_id))
            LIMIT 1
        ), claimed AS (
            INSERT INTO {s}.instance_locks AS l (instance_id, lock_token, locked_until_ms, locked_at_ms)
            SELECT instance_id, $9, {now} + $10::bigint, {now} FROM chosen
            ON CONFLICT (instance_id) DO UPDATE
                SET lock_token = EXCLUDED.lock_token,
                    locked_until_ms = EXCLUDED.locked_until_ms,
                    locked_at_ms = EXCLUDED.locked_at_ms
                WHERE l.locked_until_ms <= EXCLUDED.locked_at_ms
            RETURNING instance_id, locked_at_ms
        )
        SELECT instance_id, locked_at_ms, NULL::bigint, NULL::boolean FROM mine
        UNION ALL
        SELECT instance_id, locked_at_ms, NULL::bigint, NULL::boolean FROM claimed
        UNION ALL
        SELECT NULL, NULL, (SELECT min(visible_at_ms) - {now} FROM {s}.orchestrator_queue WHERE visible_at_ms > {now}),
               EXISTS (SELECT 1 FROM chosen)
        WHERE NOT EXISTS (SELECT 1 FROM claimed) AND NOT EXISTS (SELECT 1 FROM mine)";

    /// Tag the visible messages of the instance lock $1 holds with it, and
    /// count the attempt — once: a message a retried claim finds tagged
    /// with this token already keeps its count.
    tag_messages = "UPDATE {s}.orchestrator_queue
        SET lock_token = $1,
            attempt_count = attempt_count + CASE WHEN lock_token IS NOT DISTINCT FROM $1 THEN 0 ELSE 1 END
        WHERE instance_id = (SELECT instance_id FROM {s}.instance_locks WHERE lock_token = $1)
          AND visible_at_ms <= {now}
        RETURNING id, work_item, attempt_count, enqueued_at_ms";

    /// The row of the instance lock $1 holds.
    instance_row = "SELECT orchestration_name, orchestration_version, current_execution_id
        FROM {s}.instances WHERE instance_id = (SELECT instance_id FROM {s}.instance_locks WHERE lock_token = $1)";

    /// Latest execution history of the instance lock $1 holds (no rows: no such lock).
    locked_history = "WITH target AS (
            SELECT instance_id FROM {s}.instance_locks WHERE lock_token = $1
        ), latest AS (
            SELECT t.instance_id, COALESCE(
                (SELECT current_execution_id FROM {s}.instances i WHERE i.instance_id = t.instance_id),
                (SELECT max(execution_id) FROM {s}.executions e WHERE e.instance_id = t.instance_id),
                (SELECT max(execution_id) FROM {s}.history h WHERE h.instance_id = t.instance_id)) AS execution_id
            FROM target t
        )
        SELECT latest.execution_id, h.event_id, h.event_data
        FROM latest LEFT JOIN {s}.history h ON h.instance_id = latest.instance_id AND h.execution_id = latest.execution_id
        ORDER BY h.event_id";

    /// The materialized KV store of the instance lock $1 holds.
    kv_snapshot = "SELECT key, value, last_updated_at_ms FROM {s}.kv_store
        WHERE instance_id = (SELECT instance_id FROM {s}.instance_locks WHERE lock_token = $1)";

    /// Release a lock by token; learn the transaction id.
    delete_lock = "DELETE FROM {s}.instance_locks WHERE lock_token = $1 RETURNING instance_id, pg_catalog.txid_current()";

    /// Delete the messages tagged with a token.
    delete_tagged = "DELETE FROM {s}.orchestrator_queue WHERE lock_token = $1";

    /// Hide tagged messages for $2 ms (null: leave visibility) and, if $3, give back the attempt.
    untag_messages = "UPDATE {s}.orchestrator_queue
        SET visible_at_ms = CASE WHEN $2::bigint IS NULL THEN visible_at_ms ELSE {now} + $2::bigint END,
            attempt_count = CASE WHEN $3::boolean THEN GREATEST(attempt_count - 1, 0) ELSE attempt_count END
        WHERE lock_token = $1";

    /// What a lock token locks, with the clock.
    read_lock = "SELECT instance_id, locked_until_ms, {now} FROM {s}.instance_locks WHERE lock_token = $1";

    /// Extend an unexpired lock, never shortening it.
    renew_lock = "UPDATE {s}.instance_locks
        SET locked_until_ms = GREATEST(locked_until_ms, {now} + $2::bigint)
        WHERE lock_token = $1 AND locked_until_ms > {now}
        RETURNING instance_id";

    // ---- turn (ack) --------------------------------------------------------

    /// The guard: release the lock iff this token holds it unexpired; learn the transaction id.
    turn_guard = "DELETE FROM {s}.instance_locks
        WHERE lock_token = $1 AND locked_until_ms > {now}
        RETURNING instance_id, pg_catalog.txid_current()";

    /// Insert the instance row if absent, then set name and version.
    upsert_instance = "INSERT INTO {s}.instances
            (instance_id, orchestration_name, orchestration_version, current_execution_id, parent_instance_id, created_at_ms, updated_at_ms)
        VALUES ($1, $2, $3, $4, $5, {now}, {now})
        ON CONFLICT (instance_id) DO UPDATE
            SET orchestration_name = EXCLUDED.orchestration_name,
                orchestration_version = EXCLUDED.orchestration_version,
                updated_at_ms = EXCLUDED.updated_at_ms";

    /// Insert the execution row if absent.
    ensure_execution = "INSERT INTO {s}.executions (instance_id, execution_id, status, started_at_ms)
        VALUES ($1, $2, 'Running', {now})
        ON CONFLICT (instance_id, execution_id) DO NOTHING";

    /// Pin the execution's duroxide version.
    pin_version = "UPDATE {s}.executions SET pinned_major = $3, pinned_minor = $4, pinned_patch = $5
        WHERE instance_id = $1 AND execution_id = $2";

    /// Raise the current execution.
    advance_execution = "UPDATE {s}.instances
        SET current_execution_id = GREATEST(current_execution_id, $2), updated_at_ms = {now}
        WHERE instance_id = $1";

    /// Append events (arrays of id, type, data).
    append_history = "INSERT INTO {s}.history (instance_id, execution_id, event_id, event_type, event_data, created_at_ms)
        SELECT $1, $2, u.event_id, u.event_type, u.event_data, {now}
        FROM ROWS FROM (pg_catalog.unnest($3::bigint[]), pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::text[])) AS u(event_id, event_type, event_data)";

    /// Set execution status and output.
    set_status = "UPDATE {s}.executions
        SET status = $3, output = $4, completed_at_ms = CASE WHEN $3 = 'Running' THEN NULL ELSE {now} END
        WHERE instance_id = $1 AND execution_id = $2";

    /// Set the custom status and bump its version.
    set_custom_status = "UPDATE {s}.instances
        SET custom_status = $2, custom_status_version = custom_status_version + 1, updated_at_ms = {now}
        WHERE instance_id = $1";

    /// Record a KV write ($3 null: tombstone) in the delta, at $4 (null: the store clock).
    kv_delta_put = "INSERT INTO {s}.kv_delta (instance_id, key, value, last_updated_at_ms)
        VALUES ($1, $2, $3, COALESCE($4::bigint, {now}))
        ON CONFLICT (instance_id, key) DO UPDATE
            SET value = EXCLUDED.value, last_updated_at_ms = EXCLUDED.last_updated_at_ms";

    /// Tombstone every key, in the delta and from the store, at the store clock.
    kv_clear_all = "WITH existing AS (
            UPDATE {s}.kv_delta SET value = NULL, last_updated_at_ms = {now} WHERE instance_id = $1 RETURNING key
        )
        INSERT INTO {s}.kv_delta (instance_id, key, value, last_updated_at_ms)
        SELECT s.instance_id, s.key, NULL, {now} FROM {s}.kv_store s
        WHERE s.instance_id = $1 AND s.key NOT IN (SELECT key FROM existing)
        ON CONFLICT (instance_id, key) DO UPDATE SET value = NULL, last_updated_at_ms = EXCLUDED.last_updated_at_ms";

    /// Merge the delta into the store and clear it.
    kv_merge = "WITH d AS (
            DELETE FROM {s}.kv_delta WHERE instance_id = $1 RETURNING key, value, last_updated_at_ms
        ), upserted AS (
            INSERT INTO {s}.kv_store (instance_id, key, value, last_updated_at_ms)
            SELECT $1, key, value, last_updated_at_ms FROM d WHERE value IS NOT NULL
            ON CONFLICT (instance_id, key) DO UPDATE
                SET value = EXCLUDED.value, last_updated_at_ms = EXCLUDED.last_updated_at_ms
        )
        DELETE FROM {s}.kv_store s USING d
        WHERE s.instance_id = $1 AND s.key = d.key AND d.value IS NULL";

    /// Insert activities (arrays).
    enqueue_worker_many = "INSERT INTO {s}.worker_queue
            (instance_id, execution_id, activity_id, session_id, tag, work_item, visible_at_ms, enqueued_at_ms)
        SELECT u.instance_id, u.execution_id, u.activity_id, u.session_id, u.tag, u.work_item, {now}, {now}
        FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::bigint[]), pg_catalog.unnest($3::bigint[]), pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[]))
            AS u(instance_id, execution_id, activity_id, session_id, tag, work_item)";

    /// Remove activities by identity (arrays).
    cancel_activities = "DELETE FROM {s}.worker_queue w
        USING ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::bigint[]), pg_catalog.unnest($3::bigint[])) AS c(instance_id, execution_id, activity_id)
        WHERE w.instance_id = c.instance_id AND w.execution_id = c.execution_id AND w.activity_id = c.activity_id";

    // ---- history -----------------------------------------------------------

    /// History of the latest execution of each instance in $1 — the row's
    /// current execution, or without a row the highest stored — with its id
    /// (NULL: nothing stored). One row per event, or one row of NULLs for an
    /// instance with none; see `pg/batch.rs` for why reads come in sets.
    latest_histories = "WITH wanted AS (
            SELECT w.instance_id FROM pg_catalog.unnest($1::text[]) AS w(instance_id)
        ), latest AS (
            SELECT wanted.instance_id, COALESCE(
                (SELECT i.current_execution_id FROM {s}.instances i WHERE i.instance_id = wanted.instance_id),
                (SELECT max(e.execution_id) FROM {s}.executions e WHERE e.instance_id = wanted.instance_id),
                (SELECT max(h.execution_id) FROM {s}.history h WHERE h.instance_id = wanted.instance_id)) AS execution_id
            FROM wanted
        )
        SELECT latest.instance_id, latest.execution_id, h.event_id, h.event_data
        FROM latest LEFT JOIN {s}.history h ON h.instance_id = latest.instance_id AND h.execution_id = latest.execution_id
        ORDER BY latest.instance_id, h.event_id";

    /// History of the latest execution (as `latest_histories` picks it) of
    /// the instance whose activity lock token $1 holds, read in the claim's
    /// transaction so the runtime's descriptor read needs no round trip of
    /// its own: `(execution_id, event_id, event_data)` by event id, or no
    /// rows when there are more than $3 events or their total size is above
    /// $2 bytes (then the read goes to the database as usual). The scan stops
    /// after $3 + 1 events, so a long history costs a bounded index range.
    claimed_history = "WITH w AS (
            SELECT instance_id FROM {s}.worker_queue WHERE lock_token = $1
        ), latest AS (
            SELECT w.instance_id, COALESCE(
                (SELECT i.current_execution_id FROM {s}.instances i WHERE i.instance_id = w.instance_id),
                (SELECT max(e.execution_id) FROM {s}.executions e WHERE e.instance_id = w.instance_id),
                (SELECT max(h.execution_id) FROM {s}.history h WHERE h.instance_id = w.instance_id)) AS execution_id
            FROM w
        ), events AS MATERIALIZED (
            SELECT latest.execution_id, h.event_id, h.event_data
            FROM latest JOIN {s}.history h ON h.instance_id = latest.instance_id AND h.execution_id = latest.execution_id
            ORDER BY h.event_id
            LIMIT $3::int + 1
        )
        SELECT execution_id, event_id, event_data FROM events
        WHERE (SELECT count(*) FROM events) <= $3::int
          AND (SELECT COALESCE(sum(pg_catalog.octet_length(event_data)), 0) FROM events) <= $2::bigint
        ORDER BY event_id";

    /// History of one execution.
    execution_history = "SELECT event_id, event_data FROM {s}.history
        WHERE instance_id = $1 AND execution_id = $2 ORDER BY event_id";

    // ---- worker queue ------------------------------------------------------

    /// Insert one activity and notify channel $7 (origin $8).
    enqueue_worker = "WITH ins AS (
            INSERT INTO {s}.worker_queue
                (instance_id, execution_id, activity_id, session_id, tag, work_item, visible_at_ms, enqueued_at_ms)
            VALUES ($1, $2, $3, $4, $5, $6, {now}, {now})
            RETURNING id
        )
        SELECT 1, pg_catalog.pg_notify($7, 'w:1:' || $8) FROM ins";

    /// Claim the oldest visible, unlocked activity admitted by the tag
    /// predicate ($1 any, $2 untagged, $3 tags) and the session rule ($4
    /// session-aware, $5 owner): lock it with token $6 for $7 ms and, when
    /// it belongs to a session, claim or refresh that session for owner $5
    /// for $8 ms. An activity whose session another owner took first (a
    /// race the pick cannot see) is left untouched. One row: the claimed
    /// activity, or — every column NULL but the last — how long until the
    /// next activity becomes visible (NULL: none is waiting).
    ///
    /// Idempotent by token, like `claim_instance`: an activity locked with
    /// token $6 already (an earlier attempt committed, its reply lost) gets
    /// its lease restarted and is returned again; nothing new is claimed.
    claim_work = "WITH mine AS (
            UPDATE {s}.worker_queue SET locked_until_ms = {now} + $7::bigint
            WHERE lock_token = $6
            RETURNING id, work_item, attempt_count, session_id, instance_id, execution_id, activity_id
        ), picked AS (
            SELECT q.id, q.session_id FROM {s}.worker_queue q
            WHERE NOT EXISTS (SELECT 1 FROM mine)
              AND q.visible_at_ms <= {now}
              AND (q.lock_token IS NULL OR q.locked_until_ms <= {now})
              AND ($1::boolean OR (q.tag IS NULL AND $2::boolean) OR q.tag = ANY($3::text[]))
              AND (q.session_id IS NULL OR ($4::boolean AND NOT EXISTS (
                    SELECT 1 FROM {s}.sessions s
                    WHERE s.session_id = q.session_id AND s.locked_until_ms > {now} AND s.owner_id <> $5)))
            ORDER BY q.id
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        ), session AS (
            INSERT INTO {s}.sessions AS s (session_id, owner_id, locked_until_ms, last_activity_at_ms)
            SELECT p.session_id, $5, {now} + $8::bigint, {now} FROM picked p WHERE p.session_id IS NOT NULL
            ON CONFLICT (session_id) DO UPDATE
                SET owner_id = EXCLUDED.owner_id,
                    locked_until_ms = GREATEST(s.locked_until_ms, EXCLUDED.locked_until_ms),
                    last_activity_at_ms = EXCLUDED.last_activity_at_ms
                WHERE s.owner_id = EXCLUDED.owner_id OR s.locked_until_ms <= EXCLUDED.last_activity_at_ms
            RETURNING session_id
        ), claimed AS (
            UPDATE {s}.worker_queue w
            SET lock_token = $6, locked_until_ms = {now} + $7::bigint, attempt_count = w.attempt_count + 1
            FROM picked p WHERE w.id = p.id AND (p.session_id IS NULL OR EXISTS (SELECT 1 FROM session))
            RETURNING w.id, w.work_item, w.attempt_count, w.session_id, w.instance_id, w.execution_id, w.activity_id
        )
        SELECT id, work_item, attempt_count, session_id, instance_id, execution_id, activity_id, NULL::bigint
        FROM mine
        UNION ALL
        SELECT id, work_item, attempt_count, session_id, instance_id, execution_id, activity_id, NULL::bigint
        FROM claimed
        UNION ALL
        SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               (SELECT min(visible_at_ms) - {now} FROM {s}.worker_queue WHERE visible_at_ms > {now})
        WHERE NOT EXISTS (SELECT 1 FROM claimed) AND NOT EXISTS (SELECT 1 FROM mine)";

    /// Complete the activity lock $8 holds, if its lease is unexpired:
    /// delete it, mark activity on its session (while the session lock is
    /// live) and, when $2 is not null, insert its completion message ($1
    /// instance, $2 payload, $3 delay ms, $4 absolute ms), announced on
    /// channel $5 (origin $6, coalesce flag $7) as in
    /// `enqueue_orchestrator` (the completed activity is no sibling).
    /// The token is recorded in `settled_tokens` in the same transaction
    /// (see `token_settled`). No row: the lock is not held and nothing
    /// changed. Otherwise one row:
    /// the transaction id, how many messages it announced and whether the
    /// wake-up is left to the coalescing window.
    complete_work = "WITH d AS (
            DELETE FROM {s}.worker_queue WHERE lock_token = $8 AND locked_until_ms > {now} RETURNING id, session_id
        ), settled AS (
            INSERT INTO {s}.settled_tokens (lock_token, settled_at_ms)
            SELECT $8, {now} FROM d
            ON CONFLICT (lock_token) DO NOTHING
            RETURNING 1
        ), touched AS (
            UPDATE {s}.sessions s SET last_activity_at_ms = {now}
            FROM d WHERE s.session_id = d.session_id AND s.locked_until_ms > {now}
            RETURNING 1
        ), ins AS (
            INSERT INTO {s}.orchestrator_queue (instance_id, work_item, visible_at_ms, enqueued_at_ms)
            SELECT $1::text, $2::text, COALESCE($4::bigint, {now} + COALESCE($3::bigint, 0)), {now}
            FROM d WHERE $2::text IS NOT NULL
            RETURNING visible_at_ms
        ), state AS (
            SELECT ins.visible_at_ms <= {now}
                   AND NOT EXISTS (
                     SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = $1 AND l.locked_until_ms > {now})
                   AS claimable,
                   $7::boolean AND EXISTS (
                     SELECT 1 FROM {s}.worker_queue w
                     WHERE w.instance_id = $1 AND NOT EXISTS (SELECT 1 FROM d WHERE d.id = w.id))
                   AS siblings
            FROM ins
        ), announce AS (
            SELECT CASE WHEN claimable AND NOT siblings THEN 1 ELSE 0 END AS announced,
                   claimable AND siblings AS deferred,
                   CASE WHEN claimable AND NOT siblings THEN pg_catalog.pg_notify($5, 'o:1:' || $6) END AS notified
            FROM state
        )
        SELECT pg_catalog.txid_current(), COALESCE(a.announced, 0), COALESCE(a.deferred, false)
        FROM d LEFT JOIN announce a ON true";

    /// Whether an ack or abandon under lock token $1 committed (within the retention).
    token_settled = "SELECT EXISTS (SELECT 1 FROM {s}.settled_tokens WHERE lock_token = $1)";

    /// Record that the write under lock token $1 applied, in its own
    /// transaction (turns and abandons; `complete_work` does it itself).
    settle_token = "INSERT INTO {s}.settled_tokens (lock_token, settled_at_ms) VALUES ($1, {now})
        ON CONFLICT (lock_token) DO NOTHING";

    /// Forget settled tokens older than $1 ms.
    prune_settled = "DELETE FROM {s}.settled_tokens WHERE settled_at_ms < {now} - $1::bigint";

    /// Unlock an activity, optionally hiding it ($2 ms) and giving back the
    /// attempt ($3); learn the transaction id.
    abandon_work = "UPDATE {s}.worker_queue
        SET lock_token = NULL, locked_until_ms = NULL,
            visible_at_ms = {now} + COALESCE($2::bigint, 0),
            attempt_count = CASE WHEN $3::boolean THEN GREATEST(attempt_count - 1, 0) ELSE attempt_count END
        WHERE lock_token = $1
        RETURNING id, pg_catalog.txid_current()";

    /// Extend an unexpired activity lock, never shortening it, and mark
    /// activity on its session (while the session lock is live).
    renew_work = "WITH r AS (
            UPDATE {s}.worker_queue SET locked_until_ms = GREATEST(locked_until_ms, {now} + $2::bigint)
            WHERE lock_token = $1 AND locked_until_ms > {now}
            RETURNING session_id
        ), touched AS (
            UPDATE {s}.sessions s SET last_activity_at_ms = {now}
            FROM r WHERE s.session_id = r.session_id AND s.locked_until_ms > {now}
            RETURNING 1
        )
        SELECT session_id FROM r";

    /// Extend live, non-idle sessions of the given owners.
    renew_sessions = "UPDATE {s}.sessions
        SET locked_until_ms = GREATEST(locked_until_ms, {now} + $2::bigint)
        WHERE owner_id = ANY($1::text[])
          AND locked_until_ms > {now}
          AND last_activity_at_ms > {now} - $3::bigint
        RETURNING session_id";

    /// Delete expired sessions with no queued work.
    cleanup_sessions = "DELETE FROM {s}.sessions s
        WHERE s.locked_until_ms < {now}
          AND NOT EXISTS (SELECT 1 FROM {s}.worker_queue q WHERE q.session_id = s.session_id)
        RETURNING session_id";

    // ---- management ---------------------------------------------------------

    /// Every instance, newest first.
    list_instances = "SELECT instance_id FROM {s}.instances ORDER BY created_at_ms DESC, instance_id";

    /// Instances whose current execution has a status.
    list_instances_by_status = "SELECT i.instance_id FROM {s}.instances i
        JOIN {s}.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        WHERE e.status = $1
        ORDER BY i.created_at_ms DESC, i.instance_id";

    /// Execution ids of an instance.
    list_executions = "SELECT execution_id FROM {s}.executions WHERE instance_id = $1 ORDER BY execution_id";

    /// Highest execution id (NULL: none).
    latest_execution = "SELECT max(execution_id) FROM {s}.executions WHERE instance_id = $1";

    /// Instance row with its current execution's status and output.
    instance_info = "SELECT i.instance_id, i.orchestration_name, i.orchestration_version, i.current_execution_id,
            i.created_at_ms, i.updated_at_ms, i.parent_instance_id, e.status, e.output
        FROM {s}.instances i
        LEFT JOIN {s}.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        WHERE i.instance_id = $1";

    /// One execution with its event count.
    execution_info = "SELECT e.execution_id, e.status, e.output, e.started_at_ms, e.completed_at_ms,
            (SELECT count(*) FROM {s}.history h WHERE h.instance_id = e.instance_id AND h.execution_id = e.execution_id)
        FROM {s}.executions e WHERE e.instance_id = $1 AND e.execution_id = $2";

    /// System-wide counts. $1: the schema's name; $2: the row count from
    /// which a table's figures are estimated rather than counted.
    ///
    /// The `est` CTE (the same in `queue_depths`) reads each big table's
    /// row count from the catalog as the planner does — `reltuples` per page
    /// times the table's pages now — and is NULL for a table never analyzed.
    /// Each figure is counted exactly while its table's estimate is under $2
    /// (or unknown), and estimated above: table sizes from `est`, instance
    /// counts by status from the share of each status among executions in
    /// `pg_stats` (MCV list; a status missing from it gets the share left
    /// over). The last four columns say which figures are estimates
    /// (instances, executions, statuses, events).
    system_metrics = "WITH est AS (
            SELECT
                max(t.estimate) FILTER (WHERE t.relname = 'instances') AS instances_rows,
                max(t.estimate) FILTER (WHERE t.relname = 'executions') AS executions_rows,
                max(t.estimate) FILTER (WHERE t.relname = 'history') AS history_rows,
                max(t.estimate) FILTER (WHERE t.relname = 'orchestrator_queue') AS orchestrator_queue_rows,
                max(t.estimate) FILTER (WHERE t.relname = 'worker_queue') AS worker_queue_rows
            FROM (
                SELECT c.relname,
                    CASE WHEN c.reltuples < 0 THEN NULL
                        WHEN c.relpages = 0 THEN c.reltuples::float8
                        ELSE c.reltuples::float8 / c.relpages
                            * (pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::float8)
                    END AS estimate
                FROM pg_catalog.pg_class c
                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = $1::text AND c.relkind = 'r'
                    AND c.relname IN ('instances', 'executions', 'history', 'orchestrator_queue', 'worker_queue')
            ) t
        ),
        stats AS (
            SELECT s.most_common_vals::text::text[] AS vals, s.most_common_freqs AS freqs, s.null_frac,
                CASE WHEN s.n_distinct < 0 THEN -s.n_distinct * (SELECT executions_rows FROM est) ELSE s.n_distinct END
                    AS distinct_values
            FROM pg_catalog.pg_stats s
            WHERE s.schemaname = $1::text AND s.tablename = 'executions' AND s.attname = 'status'
        ),
        rare AS (
            SELECT CASE WHEN st.distinct_values > COALESCE(pg_catalog.cardinality(st.vals), 0)
                THEN GREATEST(1 - (SELECT COALESCE(sum(f), 0) FROM pg_catalog.unnest(st.freqs) f) - st.null_frac, 0)
                    / (st.distinct_values - COALESCE(pg_catalog.cardinality(st.vals), 0))
                ELSE 0 END AS freq
            FROM stats st
        ),
        freq AS (
            SELECT
                COALESCE(max(u.f) FILTER (WHERE u.v = 'Running'), (SELECT freq FROM rare)) AS running,
                COALESCE(max(u.f) FILTER (WHERE u.v = 'Completed'), (SELECT freq FROM rare)) AS completed,
                COALESCE(max(u.f) FILTER (WHERE u.v = 'Failed'), (SELECT freq FROM rare)) AS failed
            FROM stats st, ROWS FROM (pg_catalog.unnest(st.vals), pg_catalog.unnest(st.freqs)) AS u(v, f)
        ),
        big AS (
            SELECT COALESCE(est.instances_rows >= $2::bigint, FALSE) AS instances_big,
                COALESCE(est.executions_rows >= $2::bigint, FALSE) AS executions_big,
                COALESCE(est.instances_rows >= $2::bigint, FALSE) AND EXISTS (SELECT 1 FROM freq WHERE running IS NOT NULL)
                    AS statuses_big,
                COALESCE(est.history_rows >= $2::bigint, FALSE) AS history_big
            FROM est
        ),
        exact_status AS (
            SELECT count(*) FILTER (WHERE e.status = 'Running') AS running,
                count(*) FILTER (WHERE e.status = 'Completed') AS completed,
                count(*) FILTER (WHERE e.status = 'Failed') AS failed
            FROM {s}.instances i
            JOIN {s}.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        )
        SELECT
            CASE WHEN big.instances_big THEN est.instances_rows::bigint ELSE (SELECT count(*) FROM {s}.instances) END,
            CASE WHEN big.executions_big THEN est.executions_rows::bigint ELSE (SELECT count(*) FROM {s}.executions) END,
            CASE WHEN big.statuses_big THEN pg_catalog.round(est.executions_rows * (SELECT running FROM freq))::bigint
                ELSE (SELECT running FROM exact_status) END,
            CASE WHEN big.statuses_big THEN pg_catalog.round(est.executions_rows * (SELECT completed FROM freq))::bigint
                ELSE (SELECT completed FROM exact_status) END,
            CASE WHEN big.statuses_big THEN pg_catalog.round(est.executions_rows * (SELECT failed FROM freq))::bigint
                ELSE (SELECT failed FROM exact_status) END,
            CASE WHEN big.history_big THEN est.history_rows::bigint ELSE (SELECT count(*) FROM {s}.history) END,
            big.instances_big, big.executions_big, big.statuses_big, big.history_big
        FROM est, big";

    /// Messages not held by a live lock, per queue ($1, $2 as for
    /// `system_metrics`): counted while the queue's estimate is under $2;
    /// above, the estimate less the messages under live locks (which are
    /// few: one turn's or one activity's each). The last two columns say
    /// which figures are estimates.
    queue_depths = "WITH est AS (
            SELECT
                max(t.estimate) FILTER (WHERE t.relname = 'instances') AS instances_rows,
                max(t.estimate) FILTER (WHERE t.relname = 'executions') AS executions_rows,
                max(t.estimate) FILTER (WHERE t.relname = 'history') AS history_rows,
                max(t.estimate) FILTER (WHERE t.relname = 'orchestrator_queue') AS orchestrator_queue_rows,
                max(t.estimate) FILTER (WHERE t.relname = 'worker_queue') AS worker_queue_rows
            FROM (
                SELECT c.relname,
                    CASE WHEN c.reltuples < 0 THEN NULL
                        WHEN c.relpages = 0 THEN c.reltuples::float8
                        ELSE c.reltuples::float8 / c.relpages
                            * (pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::float8)
                    END AS estimate
                FROM pg_catalog.pg_class c
                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = $1::text AND c.relkind = 'r'
                    AND c.relname IN ('instances', 'executions', 'history', 'orchestrator_queue', 'worker_queue')
            ) t
        )
        SELECT
            CASE WHEN COALESCE(est.orchestrator_queue_rows >= $2::bigint, FALSE) THEN GREATEST(
                est.orchestrator_queue_rows::bigint - (SELECT count(*) FROM {s}.instance_locks l
                    JOIN {s}.orchestrator_queue q ON q.instance_id = l.instance_id
                    WHERE l.locked_until_ms > {now}), 0)
            ELSE (SELECT count(*) FROM {s}.orchestrator_queue q WHERE NOT EXISTS (
                SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until_ms > {now}))
            END,
            CASE WHEN COALESCE(est.worker_queue_rows >= $2::bigint, FALSE) THEN GREATEST(
                est.worker_queue_rows::bigint - (SELECT count(*) FROM {s}.worker_queue w
                    WHERE w.lock_token IS NOT NULL AND w.locked_until_ms > {now}), 0)
            ELSE (SELECT count(*) FROM {s}.worker_queue w WHERE w.lock_token IS NULL OR w.locked_until_ms <= {now})
            END,
            COALESCE(est.orchestrator_queue_rows >= $2::bigint, FALSE),
            COALESCE(est.worker_queue_rows >= $2::bigint, FALSE)
        FROM est";

    /// What an operator's status shows besides the counts, each read from
    /// an index or a small table ($1: the `LISTEN` statement listeners run):
    /// the schema version; how long the oldest ready orchestrator message
    /// (of an unlocked instance) and the oldest ready activity have waited
    /// since they became visible (NULL: none); instance leases live and
    /// expired; activity leases live and expired; sessions to this database
    /// whose last statement is this schema's `LISTEN` (only those this role
    /// may see in `pg_stat_activity`); the store clock.
    ops_status = "SELECT
            (SELECT max(version) FROM {s}._duropg_migrations),
            {now} - (SELECT q.visible_at_ms FROM {s}.orchestrator_queue q
                WHERE q.visible_at_ms <= {now} AND NOT EXISTS (
                    SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until_ms > {now})
                ORDER BY q.visible_at_ms, q.id LIMIT 1),
            {now} - (SELECT w.visible_at_ms FROM {s}.worker_queue w
                WHERE w.visible_at_ms <= {now} AND (w.lock_token IS NULL OR w.locked_until_ms <= {now})
                ORDER BY w.visible_at_ms LIMIT 1),
            (SELECT count(*) FROM {s}.instance_locks WHERE locked_until_ms > {now}),
            (SELECT count(*) FROM {s}.instance_locks WHERE locked_until_ms <= {now}),
            (SELECT count(*) FROM {s}.worker_queue WHERE lock_token IS NOT NULL AND locked_until_ms > {now}),
            (SELECT count(*) FROM {s}.worker_queue WHERE lock_token IS NOT NULL AND locked_until_ms <= {now}),
            (SELECT count(*) FROM pg_catalog.pg_stat_activity
                WHERE datname = pg_catalog.current_database() AND query = $1::text),
            {now}";

    /// Direct children.
    list_children = "SELECT instance_id FROM {s}.instances WHERE parent_instance_id = $1 ORDER BY instance_id";

    /// Parent of an instance (no row: no such instance).
    parent_of = "SELECT parent_instance_id FROM {s}.instances WHERE instance_id = $1";

    /// The whole tree under an instance, root first.
    instance_tree = "WITH RECURSIVE tree(instance_id, depth) AS (
            SELECT instance_id, 0 FROM {s}.instances WHERE instance_id = $1
            UNION
            SELECT c.instance_id, t.depth + 1 FROM {s}.instances c JOIN tree t ON c.parent_instance_id = t.instance_id
        )
        SELECT instance_id FROM tree ORDER BY depth, instance_id";

    /// Lock the rows of instances about to be deleted and read their status.
    lock_for_delete = "SELECT i.instance_id, e.status
        FROM {s}.instances i
        LEFT JOIN {s}.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        WHERE i.instance_id = ANY($1::text[])
        ORDER BY i.instance_id
        FOR UPDATE OF i";

    /// Children of the deleted set (for the orphan check).
    children_of_set = "SELECT instance_id, parent_instance_id FROM {s}.instances
        WHERE parent_instance_id = ANY($1::text[])";

    /// Delete everything of a set of instances, returning what was removed.
    delete_instances = "WITH h AS (DELETE FROM {s}.history WHERE instance_id = ANY($1::text[]) RETURNING 1),
            e AS (DELETE FROM {s}.executions WHERE instance_id = ANY($1::text[]) RETURNING 1),
            oq AS (DELETE FROM {s}.orchestrator_queue WHERE instance_id = ANY($1::text[]) RETURNING 1),
            wq AS (DELETE FROM {s}.worker_queue WHERE instance_id = ANY($1::text[]) RETURNING 1),
            l AS (DELETE FROM {s}.instance_locks WHERE instance_id = ANY($1::text[]) RETURNING 1),
            ks AS (DELETE FROM {s}.kv_store WHERE instance_id = ANY($1::text[]) RETURNING 1),
            kd AS (DELETE FROM {s}.kv_delta WHERE instance_id = ANY($1::text[]) RETURNING 1),
            i AS (DELETE FROM {s}.instances WHERE instance_id = ANY($1::text[]) RETURNING 1)
        SELECT (SELECT count(*) FROM i), (SELECT count(*) FROM e), (SELECT count(*) FROM h),
            (SELECT count(*) FROM oq) + (SELECT count(*) FROM wq)";

    /// Root instances whose current execution ended, filtered ($1 ids or null,
    /// $2 completed before or null), at most $3.
    bulk_delete_roots = "SELECT i.instance_id FROM {s}.instances i
        JOIN {s}.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        WHERE i.parent_instance_id IS NULL
          AND e.status IN ('Completed', 'Failed', 'ContinuedAsNew')
          AND ($1::text[] IS NULL OR i.instance_id = ANY($1::text[]))
          AND ($2::bigint IS NULL OR e.completed_at_ms < $2::bigint)
        ORDER BY i.instance_id
        LIMIT $3";

    /// Instances for a bulk prune ($1 ids or null, $2 completed before or null), at most $3.
    bulk_prune_instances = "SELECT i.instance_id FROM {s}.instances i
        LEFT JOIN {s}.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        WHERE ($1::text[] IS NULL OR i.instance_id = ANY($1::text[]))
          AND ($2::bigint IS NULL OR e.completed_at_ms < $2::bigint)
        ORDER BY i.instance_id
        LIMIT $3";

    /// Lock an instance for a prune and read its current execution.
    lock_for_prune = "SELECT current_execution_id FROM {s}.instances WHERE instance_id = $1 FOR UPDATE";

    /// Executions of an instance as a prune sees them.
    prune_candidates = "SELECT execution_id, status, completed_at_ms FROM {s}.executions
        WHERE instance_id = $1 ORDER BY execution_id";

    /// Delete executions and their history.
    prune_executions = "WITH h AS (
            DELETE FROM {s}.history WHERE instance_id = $1 AND execution_id = ANY($2::bigint[]) RETURNING 1),
        e AS (DELETE FROM {s}.executions WHERE instance_id = $1 AND execution_id = ANY($2::bigint[]) RETURNING 1)
        SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM h)";

    // ---- read side ---------------------------------------------------------

    /// Custom status and its version for each instance in $1 that has a
    /// row; the caller compares the version with the one it last saw.
    custom_statuses = "SELECT i.instance_id, i.custom_status, i.custom_status_version FROM {s}.instances i
        WHERE i.instance_id = ANY($1::text[])";

    /// One KV value: delta (including tombstones) wins over the store.
    kv_value = "SELECT d.value AS value, TRUE AS in_delta FROM {s}.kv_delta d WHERE d.instance_id = $1 AND d.key = $2
        UNION ALL
        SELECT s.value, FALSE FROM {s}.kv_store s WHERE s.instance_id = $1 AND s.key = $2
        ORDER BY in_delta DESC LIMIT 1";

    /// All live KV values.
    kv_all = "SELECT key, value FROM (
            SELECT COALESCE(d.key, s.key) AS key,
                   CASE WHEN d.key IS NOT NULL THEN d.value ELSE s.value END AS value
            FROM (SELECT key, value FROM {s}.kv_store WHERE instance_id = $1) s
            FULL JOIN (SELECT key, value FROM {s}.kv_delta WHERE instance_id = $1) d ON d.key = s.key
        ) merged WHERE value IS NOT NULL ORDER BY key";

    /// Raw stats of the current execution.
    instance_stats = "SELECT i.current_execution_id,
            (SELECT count(*) FROM {s}.history h WHERE h.instance_id = i.instance_id AND h.execution_id = i.current_execution_id),
            (SELECT COALESCE(sum(pg_catalog.octet_length(h.event_data)), 0)::bigint FROM {s}.history h
                WHERE h.instance_id = i.instance_id AND h.execution_id = i.current_execution_id),
            (SELECT h.event_data FROM {s}.history h
                WHERE h.instance_id = i.instance_id AND h.execution_id = i.current_execution_id ORDER BY h.event_id LIMIT 1),
            (SELECT count(*) FROM (
                SELECT CASE WHEN d.key IS NOT NULL THEN d.value ELSE s.value END AS value
                FROM (SELECT key, value FROM {s}.kv_store WHERE instance_id = $1) s
                FULL JOIN (SELECT key, value FROM {s}.kv_delta WHERE instance_id = $1) d ON d.key = s.key) m
              WHERE m.value IS NOT NULL),
            (SELECT COALESCE(sum(pg_catalog.octet_length(m.value)), 0)::bigint FROM (
                SELECT CASE WHEN d.key IS NOT NULL THEN d.value ELSE s.value END AS value
                FROM (SELECT key, value FROM {s}.kv_store WHERE instance_id = $1) s
                FULL JOIN (SELECT key, value FROM {s}.kv_delta WHERE instance_id = $1) d ON d.key = s.key) m)
        FROM {s}.instances i WHERE i.instance_id = $1";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_quotes_the_schema_and_leaves_no_placeholder() {
        let schema = SchemaName::parse("tenant_a").unwrap();
        let sql = Sql::new(&schema);
        assert!(sql.claim_instance.contains("\"tenant_a\".orchestrator_queue"));
        for (name, template) in Sql::templates() {
            let text = render(template, &schema);
            assert!(!text.contains("{s}") && !text.contains("{now}"), "{name}");
        }
    }

    /// The text from `state AS (` to the end of the `announce` CTE.
    fn announce_ctes(template: &str) -> &str {
        let start = template.find("state AS (").expect("a state CTE");
        let end = template.find("FROM state").expect("an announce CTE") + "FROM state".len();
        &template[start..end]
    }

    #[test]
    fn enqueues_and_completions_announce_alike() {
        let find = |name: &str| {
            Sql::templates()
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| *t)
                .unwrap_or_else(|| panic!("no template {name}"))
        };
        assert_eq!(
            announce_ctes(find("enqueue_orchestrator")),
            announce_ctes(find("complete_work"))
        );
    }

    #[test]
    fn the_catalog_estimates_are_read_alike() {
        let est = |name: &str| {
            let t = Sql::templates()
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| *t)
                .unwrap_or_else(|| panic!("no template {name}"));
            let end = t.find("\n        )").expect("the est CTE");
            &t[..end]
        };
        assert!(est("system_metrics").starts_with("WITH est AS ("));
        assert_eq!(est("system_metrics"), est("queue_depths"));
    }

    #[test]
    fn every_table_reference_is_schema_qualified() {
        for (name, template) in Sql::templates() {
            for word in template.split(|c: char| c.is_whitespace() || c == '(' || c == ',') {
                if TABLES.contains(&word) {
                    panic!("{name}: unqualified table reference {word:?}");
                }
            }
        }
    }
}
