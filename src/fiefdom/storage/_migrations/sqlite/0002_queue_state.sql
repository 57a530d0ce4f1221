-- Queue state shared by every engine on the database: a paused queue is claimed by
-- none of them, and stays paused across restarts until it is resumed. Engines read
-- it on their maintenance poll (SQLite has no notifications across processes).
CREATE TABLE fiefdom_queues (
    name TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    updated_at REAL NOT NULL
) STRICT;
