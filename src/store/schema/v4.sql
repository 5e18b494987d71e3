-- kitebridge store, schema version 4: action buttons.

-- Each button's single-use nonce, once claimed: the primary key makes the first claim the
-- only one. Kept until the button expires (then pruned), so it cannot be pressed twice.
CREATE TABLE IF NOT EXISTS press_claims (
    nonce      TEXT    PRIMARY KEY,
    claimed_by TEXT    NOT NULL,            -- the presser, as shown
    claimed_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS press_claims_by_expiry ON press_claims (expires_at);

-- Every press, allowed or not: the audit trail (`kitebridge actions list`).
CREATE TABLE IF NOT EXISTS presses (
    id           INTEGER PRIMARY KEY,
    at           INTEGER NOT NULL,
    action       TEXT    NOT NULL,
    target       TEXT    NOT NULL,
    route        TEXT    NOT NULL,
    destination  TEXT    NOT NULL,
    channel      TEXT    NOT NULL,          -- slack or teams
    presser      TEXT    NOT NULL,
    presser_name TEXT,
    source       TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    detail       TEXT
);
-- Listing newest first, and pruning by age.
CREATE INDEX IF NOT EXISTS presses_by_time ON presses (at);
