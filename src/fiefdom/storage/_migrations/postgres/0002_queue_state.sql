-- Queue state shared by every engine on the database: a paused queue is claimed by
-- none of them, and stays paused across restarts until it is resumed.
CREATE TABLE fiefdom_queues (
    name text PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Engines learn of a pause or resume at once (delivered at commit); the payload is
-- 'paused:<queue>' or 'resumed:<queue>'.
CREATE FUNCTION fiefdom_queues_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'fiefdom_queues',
        (CASE WHEN NEW.paused THEN 'paused:' ELSE 'resumed:' END) || NEW.name
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER fiefdom_queues_notify AFTER INSERT OR UPDATE ON fiefdom_queues
    FOR EACH ROW EXECUTE FUNCTION fiefdom_queues_notify();
