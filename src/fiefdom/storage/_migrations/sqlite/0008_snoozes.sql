-- How many times each job was snoozed (a handler's Snooze: run again later without
-- using an attempt). The engine discards a job whose snoozes reach its max_snoozes
-- setting, so a dependency that answers "later" forever cannot keep a job alive
-- forever; the count is also shown with the job.
ALTER TABLE fiefdom_jobs ADD COLUMN snoozes INTEGER NOT NULL DEFAULT 0;
