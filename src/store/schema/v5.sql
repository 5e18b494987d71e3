-- kitebridge store, schema version 5: a duplicate check whose new keys land together.

-- The duplicate check's index was keyed by the body's SHA-256 alone, so every new event wrote
-- a random page of one index that spans every stored event; with a large backlog each commit
-- touched, and each checkpoint copied, pages scattered across the whole file. Keyed first by
-- the minute the body arrived, new keys go to the newest part of the index, and a look-up
-- probes each minute of the dedupe window. Eight bytes of the hash pick the candidates; the
-- whole hash, compared in the row, decides.
CREATE INDEX IF NOT EXISTS events_by_minute ON events (received_at / 60000, substr(body_hash, 1, 8));
DROP INDEX IF EXISTS events_by_hash;
