-- Listings filtered by state alone (jobs ls --state running) or by kind page through
-- an index in id order instead of walking the table. A listing by queue without a
-- state reads one range of (queue, state, id) per state, merged in id order.
CREATE INDEX fiefdom_jobs_list_state ON fiefdom_jobs (state, id);
CREATE INDEX fiefdom_jobs_list_kind ON fiefdom_jobs (kind, id);
