-- A job's unique key, kept when a state change releases it from unique_key (which
-- only holds it while it guards), so that retrying a finished job can take it back.
ALTER TABLE fiefdom_jobs ADD COLUMN unique_digest BLOB;
UPDATE fiefdom_jobs SET unique_digest = unique_key WHERE unique_key IS NOT NULL;
