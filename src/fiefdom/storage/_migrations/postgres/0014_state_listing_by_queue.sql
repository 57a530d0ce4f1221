-- A listing of one state across every queue reads (queue, state, id) queue by
-- queue (the queues found by a loose scan of the same index) instead of its own
-- (state, id) index: every job enqueued, and every change of a job's state, writes
-- one index entry fewer. Such a listing reads at most a page of each queue.
DROP INDEX fiefdom_jobs_list_state;
