-- Running jobs leave the two listing indexes that hold a state: every job passes
-- through running, so a claim and a finish each write two index entries fewer.
-- Statements that read these indexes say "state <> 'running'" in so many words;
-- running jobs are listed through the partial lease index, which holds only them
-- (at most the workers' slots), and sorted.
DROP INDEX fiefdom_jobs_list;
CREATE INDEX fiefdom_jobs_list ON fiefdom_jobs (queue, state, id) WHERE state <> 'running';
DROP INDEX fiefdom_jobs_list_state;
CREATE INDEX fiefdom_jobs_list_state ON fiefdom_jobs (state, id) WHERE state <> 'running';
