-- Listings filtered by queue, state or kind alone (jobs ls --state running,
-- --kind resize) page through an index in id order instead of walking the table.
CREATE INDEX fiefdom_jobs_list_queue ON fiefdom_jobs (queue, id);
CREATE INDEX fiefdom_jobs_list_state ON fiefdom_jobs (state, id);
CREATE INDEX fiefdom_jobs_list_kind ON fiefdom_jobs (kind, id);
