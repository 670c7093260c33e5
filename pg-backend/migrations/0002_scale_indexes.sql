-- duropg schema version 2: indexes that keep the hot path independent of
-- how much finished, sleeping and idle state the schema holds.
--
-- The orchestration claim walks visible messages in visibility order:
-- (visible_at_ms, id) lets it start at the oldest visible message and stop
-- at the first one not yet due, so timers due later (often most of the
-- queue) are never read. It also answers "when does the next timer fire?"
-- (the smallest visible_at_ms above now), which the single-column index it
-- replaces did.
CREATE INDEX orchestrator_queue_ready_idx ON {s}.orchestrator_queue (visible_at_ms, id);
DROP INDEX {s}.orchestrator_queue_visible_idx;

-- Session renewal looks sessions up by owner, and cleanup by expiry; without
-- these both read every session row each time they run.
CREATE INDEX sessions_owner_idx ON {s}.sessions (owner_id);
CREATE INDEX sessions_expiry_idx ON {s}.sessions (locked_until_ms);
