-- duropg schema version 3: activity acks idempotent by lock token.
--
-- An activity ack is one pipelined round trip (BEGIN, complete_work,
-- COMMIT). When its replies are lost the client cannot tell whether it
-- committed, and a retry finds the activity gone either way. Each ack that
-- commits records its token here in the same transaction, so the retry can
-- ask. Rows older than the retention (10 minutes, far beyond any retry of
-- one call) are pruned by every store in the background.
CREATE TABLE {s}.settled_tokens (
    lock_token    text   PRIMARY KEY,
    settled_at_ms bigint NOT NULL
);
CREATE INDEX settled_tokens_age_idx ON {s}.settled_tokens (settled_at_ms);
