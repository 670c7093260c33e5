-- duropg schema version 3: acks and abandons idempotent by lock token.
--
-- When the reply to an ack's COMMIT is lost the client cannot tell whether
-- it committed, and a retry finds the lock gone either way. A transaction
-- id does not settle it across a failover (the new primary reuses the ids
-- of transactions that never reached it). Each ack and abandon that
-- commits records its token here in the same transaction, so the retry can
-- ask. Rows older than the retention (10 minutes, far beyond any retry of
-- one call) are pruned by every store in the background.
CREATE TABLE {s}.settled_tokens (
    lock_token    text   PRIMARY KEY,
    settled_at_ms bigint NOT NULL
);
CREATE INDEX settled_tokens_age_idx ON {s}.settled_tokens (settled_at_ms);
