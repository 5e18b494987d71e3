-- kitebridge store, schema version 2: transitions, digests, one Slack message per build.

-- The transition a finished build made (JSON), for templates.
ALTER TABLE events ADD COLUMN transition TEXT;

-- Digests: a grouped delivery collects events until it closes.
ALTER TABLE deliveries ADD COLUMN group_key TEXT;
ALTER TABLE deliveries ADD COLUMN group_closes_at INTEGER;
-- Which build's message a delivery belongs to ("pipeline#number"), for Slack app updates.
ALTER TABLE deliveries ADD COLUMN thread_key TEXT;
CREATE INDEX IF NOT EXISTS deliveries_open_groups ON deliveries (destination, route, group_key)
    WHERE group_key IS NOT NULL AND state = 'pending';

CREATE TABLE IF NOT EXISTS delivery_events (
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
    event_id    INTEGER NOT NULL REFERENCES events (id),
    PRIMARY KEY (delivery_id, event_id)
);
CREATE INDEX IF NOT EXISTS delivery_events_by_event ON delivery_events (event_id);

-- The last finished build per (pipeline, branch), for transitions.
CREATE TABLE IF NOT EXISTS build_states (
    pipeline             TEXT    NOT NULL,
    branch               TEXT    NOT NULL,
    number               INTEGER NOT NULL,
    failed               INTEGER NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    finished_at          INTEGER,            -- to order two results of one build (a retry)
    updated_at           INTEGER NOT NULL,
    PRIMARY KEY (pipeline, branch)
);

-- The Slack message (channel, ts) kept per build and destination, updated in place.
CREATE TABLE IF NOT EXISTS message_refs (
    destination TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    ts          TEXT    NOT NULL,
    rank        INTEGER NOT NULL,           -- the build's lifecycle step the message shows…
    event_id    INTEGER NOT NULL,           -- …and the event, to order messages of one step
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (destination, key)
);
