-- The durable job table. Every claim, listing and pruning query is backed by an index.
CREATE TABLE fiefdom_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    queue text NOT NULL,
    state text NOT NULL CHECK (state IN (
        'available', 'scheduled', 'running', 'retryable', 'completed', 'cancelled', 'discarded'
    )),
    priority smallint NOT NULL DEFAULT 0,
    args jsonb NOT NULL,
    domain_key text,
    attempt integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts integer NOT NULL CHECK (max_attempts >= 1),
    -- The fencing token: incremented by every claim; outcomes must present it.
    lease_token bigint NOT NULL DEFAULT 0,
    worker text,
    lease_expires_at timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    errors jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- Set while the job is in one of the states of the bit mask unique_states.
    unique_key bytea,
    unique_states smallint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    run_at timestamptz NOT NULL DEFAULT now(),
    attempted_at timestamptz,
    finished_at timestamptz
);

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

-- Wake idle engines when jobs become available: one notification per queue per
-- statement, delivered at commit (so an enqueue in a rolled-back transaction
-- wakes nobody).
CREATE FUNCTION fiefdom_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fiefdom_jobs', q.queue)
        FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available') AS q;
    RETURN NULL;
END;
$$;

CREATE TRIGGER fiefdom_jobs_notify AFTER INSERT ON fiefdom_jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION fiefdom_jobs_notify();
