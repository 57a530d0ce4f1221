-- Listings filtered by state alone (jobs ls --state running) page through an index
-- in id order instead of walking the table. A listing by queue or kind without a
-- state reads one range per state, merged in id order: of (queue, state, id) for a
-- queue, of this index (filtered by kind) for a kind. An index costs every state
-- change a write: this is the one more that every listing needs.
CREATE INDEX fiefdom_jobs_list_state ON fiefdom_jobs (state, id);
