-- As PostgreSQL's 0014: a listing of one state across every queue reads
-- (queue, state, id) queue by queue (the queues found by a loose scan of the same
-- index; SQLite gathers each queue's page of ids in a correlated subquery, having no
-- LATERAL join) instead of its own (state, id) index. Every job enqueued, claimed
-- and finished writes one index entry fewer each time. Such a listing reads at most
-- a page of each queue.
DROP INDEX IF EXISTS fiefdom_jobs_list_state;
