-- Running jobs leave the kind's listing index too, as they left the other two in
-- 0011: a claim then writes no listing index entry at all. A listing of a kind's
-- jobs in every state merges this index with the running jobs, read through the
-- partial lease index as the other listings do.
DROP INDEX fiefdom_jobs_list_kind;
CREATE INDEX fiefdom_jobs_list_kind ON fiefdom_jobs (kind, id) WHERE state <> 'running';
