-- duropg schema version 1.
--
-- Rendered by duropg before it runs: {s} becomes the quoted tenant schema.
-- Times are milliseconds since the Unix epoch, written by the store's clock.
-- There are no foreign keys between these tables: duroxide lets an ack write
-- history for an instance whose row does not exist (metadata without a name),
-- and deletion cascades are done explicitly by the management API.

-- Instances exist only once an ack's metadata names them (never on enqueue).
CREATE TABLE {s}.instances (
    instance_id           text   PRIMARY KEY,
    orchestration_name    text   NOT NULL,
    -- NULL until ack metadata sets it; read back as "unknown".
    orchestration_version text,
    current_execution_id  bigint NOT NULL DEFAULT 1,
    parent_instance_id    text,
    custom_status         text,
    custom_status_version bigint NOT NULL DEFAULT 0,
    created_at_ms         bigint NOT NULL,
    updated_at_ms         bigint NOT NULL
);
CREATE INDEX instances_parent_idx ON {s}.instances (parent_instance_id) WHERE parent_instance_id IS NOT NULL;

CREATE TABLE {s}.executions (
    instance_id     text   NOT NULL,
    execution_id    bigint NOT NULL,
    status          text   NOT NULL DEFAULT 'Running',
    output          text,
    -- The duroxide version the execution is pinned to (capability filtering).
    pinned_major    bigint,
    pinned_minor    bigint,
    pinned_patch    bigint,
    started_at_ms   bigint NOT NULL,
    completed_at_ms bigint,
    PRIMARY KEY (instance_id, execution_id)
);

-- Append-only event log; a duplicate (instance, execution, event) is rejected.
CREATE TABLE {s}.history (
    instance_id   text   NOT NULL,
    execution_id  bigint NOT NULL,
    event_id      bigint NOT NULL,
    event_type    text   NOT NULL,
    event_data    text   NOT NULL,
    created_at_ms bigint NOT NULL,
    PRIMARY KEY (instance_id, execution_id, event_id)
);

-- Orchestrator messages. lock_token tags the messages a fetch handed out, so
-- an ack deletes exactly those and nothing that arrived later.
CREATE TABLE {s}.orchestrator_queue (
    id             bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id    text    NOT NULL,
    work_item      text    NOT NULL,
    visible_at_ms  bigint  NOT NULL,
    lock_token     text,
    attempt_count  integer NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    enqueued_at_ms bigint  NOT NULL
);
CREATE INDEX orchestrator_queue_instance_idx ON {s}.orchestrator_queue (instance_id, visible_at_ms);
CREATE INDEX orchestrator_queue_token_idx ON {s}.orchestrator_queue (lock_token) WHERE lock_token IS NOT NULL;
-- When does the next delayed message (a timer) become visible?
CREATE INDEX orchestrator_queue_visible_idx ON {s}.orchestrator_queue (visible_at_ms);

-- One lease per instance being processed.
CREATE TABLE {s}.instance_locks (
    instance_id     text   PRIMARY KEY,
    lock_token      text   NOT NULL UNIQUE,
    locked_until_ms bigint NOT NULL,
    locked_at_ms    bigint NOT NULL
);

-- Activities.
CREATE TABLE {s}.worker_queue (
    id              bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id     text    NOT NULL,
    execution_id    bigint  NOT NULL,
    activity_id     bigint  NOT NULL,
    session_id      text,
    tag             text,
    work_item       text    NOT NULL,
    visible_at_ms   bigint  NOT NULL,
    lock_token      text    UNIQUE,
    locked_until_ms bigint,
    attempt_count   integer NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    enqueued_at_ms  bigint  NOT NULL
);
CREATE INDEX worker_queue_activity_idx ON {s}.worker_queue (instance_id, execution_id, activity_id);
CREATE INDEX worker_queue_session_idx ON {s}.worker_queue (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX worker_queue_visible_idx ON {s}.worker_queue (visible_at_ms);

-- Session affinity: which owner holds a session, until when.
CREATE TABLE {s}.sessions (
    session_id          text   PRIMARY KEY,
    owner_id            text   NOT NULL,
    locked_until_ms     bigint NOT NULL,
    last_activity_at_ms bigint NOT NULL
);

-- KV state merged from completed executions.
CREATE TABLE {s}.kv_store (
    instance_id        text   NOT NULL,
    key                text   NOT NULL,
    value              text   NOT NULL,
    last_updated_at_ms bigint NOT NULL,
    PRIMARY KEY (instance_id, key)
);

-- KV writes of the current execution; NULL value is a tombstone.
CREATE TABLE {s}.kv_delta (
    instance_id        text   NOT NULL,
    key                text   NOT NULL,
    value              text,
    last_updated_at_ms bigint NOT NULL,
    PRIMARY KEY (instance_id, key)
);
