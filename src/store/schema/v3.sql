-- kitebridge store, schema version 3: the readiness probe writes as much as an event.

-- Random bytes the probe rewrites in place, so that it needs as much room in the log as
-- storing an event does (see `probe` in src/store/sqlite/queries.rs).
ALTER TABLE probe ADD COLUMN payload BLOB;
