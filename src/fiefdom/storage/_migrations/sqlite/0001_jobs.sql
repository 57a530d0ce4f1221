-- The durable job table. Times are unix seconds (REAL). Every claim, listing and
-- pruning query is backed by an index.
CREATE TABLE fiefdom_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    queue TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN (
        'available', 'scheduled', 'running', 'retryable', 'completed', 'cancelled', 'discarded'
    )),
    priority INTEGER NOT NULL DEFAULT 0,
    args TEXT NOT NULL,
    domain_key TEXT,
    attempt INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
    -- The fencing token: incremented by every claim; outcomes must present it.
    lease_token INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    errors TEXT NOT NULL DEFAULT '[]',
    -- Set while the job is in one of the states of the bit mask unique_states.
    unique_key BLOB,
    unique_states INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    run_at REAL NOT NULL,
    attempted_at REAL,
    finished_at REAL
) STRICT;

CREATE INDEX fiefdom_jobs_claim ON fiefdom_jobs (queue, priority, run_at, id)
    WHERE state = 'available';
CREATE INDEX fiefdom_jobs_due ON fiefdom_jobs (run_at)
    WHERE state IN ('scheduled', 'retryable');
CREATE INDEX fiefdom_jobs_lease ON fiefdom_jobs (lease_expires_at)
    WHERE state = 'running';
CREATE UNIQUE INDEX fiefdom_jobs_unique ON fiefdom_jobs (unique_key)
    WHERE unique_key IS NOT NULL;
CREATE INDEX fiefdom_jobs_finished ON fiefdom_jobs (state, finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX fiefdom_jobs_list ON fiefdom_jobs (queue, state, id);
