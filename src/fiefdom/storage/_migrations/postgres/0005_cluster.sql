-- One owner per key across every process on this database. A keyed job records its
-- domain and the partition its key hashes to; a node claims only jobs of the
-- partitions it holds a lease on. A lease change is one atomic statement, and the
-- epoch of a partition grows on every change of its owner (a fencing token).
ALTER TABLE fiefdom_jobs ADD COLUMN domain text;
ALTER TABLE fiefdom_jobs ADD COLUMN partition smallint;
-- A job of a kind declared ordered waits for every earlier unfinished ordered job
-- of its key (a claim checks through the index below).
ALTER TABLE fiefdom_jobs ADD COLUMN ordered boolean NOT NULL DEFAULT false;
CREATE INDEX fiefdom_jobs_ordered_keys ON fiefdom_jobs (domain, domain_key, id)
    WHERE ordered AND state IN ('available', 'scheduled', 'retryable', 'running');
-- Keys with a job running now: a claim skips their other jobs.
CREATE INDEX fiefdom_jobs_running_keys ON fiefdom_jobs (domain, domain_key)
    WHERE state = 'running' AND domain_key IS NOT NULL;

CREATE TABLE fiefdom_nodes (
    id text PRIMARY KEY,
    address text,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE fiefdom_partitions (
    partition smallint PRIMARY KEY,
    owner text,
    lease_expires_at timestamptz,
    epoch bigint NOT NULL DEFAULT 0
);
INSERT INTO fiefdom_partitions (partition) SELECT generate_series(0, 255);
