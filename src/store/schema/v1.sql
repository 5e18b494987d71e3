-- kitebridge store, schema version 1: events, deliveries, attempts.
-- Times are milliseconds since the Unix epoch, UTC.

CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    body        BLOB    NOT NULL,           -- the verified request body, byte for byte
    body_hash   BLOB    NOT NULL,           -- SHA-256 of body, for duplicate detection
    received_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_hash ON events (body_hash, received_at);
CREATE INDEX IF NOT EXISTS events_by_time ON events (received_at);

CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    event_id        INTEGER NOT NULL REFERENCES events (id),
    route           TEXT    NOT NULL,
    destination     TEXT    NOT NULL,
    template        TEXT,                   -- the route's template override
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    age_from        INTEGER NOT NULL,       -- max_age counts from here (reset by a manual retry)
    next_attempt_at INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    body            TEXT                    -- the rendered body, once rendered
);
-- What each worker asks on every turn: its pending deliveries in the order they come due.
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (destination, next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries (state, updated_at);
CREATE INDEX IF NOT EXISTS deliveries_by_event ON deliveries (event_id);

CREATE TABLE IF NOT EXISTS attempts (
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
    at          INTEGER NOT NULL,
    status      INTEGER,
    outcome     TEXT    NOT NULL,
    reason      TEXT,
    latency_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_by_delivery ON attempts (delivery_id);

CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
