-- Nothing changes on PostgreSQL: SQLite's 0015 drops its (state, id) listing index,
-- as 0014 did here.
SELECT 1;
