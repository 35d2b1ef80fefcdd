-- Audit search by account and time (GET /v1/admin/audit/events, `shardgate audit search`):
-- the hot table's events of one account in time order. Searches without an account scan the
-- hot table, which the archive keeps to `[audit.archive] hot_days` of traffic.
CREATE INDEX audit_events_account_ts ON audit_events (account, ts_ms);
