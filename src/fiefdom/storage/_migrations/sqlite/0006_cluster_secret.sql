-- Settings the nodes of one store's cluster share; the first node writes each one.
-- 'peer_secret': the shared secret a node presents to another when it forwards a
-- message for a key that node owns (whoever can read this table is trusted).
CREATE TABLE fiefdom_cluster (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
