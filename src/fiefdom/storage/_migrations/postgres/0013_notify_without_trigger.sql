-- The enqueue statements notify engines of the queues they gave available jobs
-- (once per queue, at commit) instead of a trigger on the table: a statement
-- trigger with a transition table keeps a copy of every inserted row until the
-- statement ends, about a tenth of the server's time for a batch of 20,000.
DROP TRIGGER fiefdom_jobs_notify ON fiefdom_jobs;
DROP FUNCTION fiefdom_jobs_notify();
