-- What each storage location's blobs take, kept by the database itself as blob rows
-- come and go, so that a commit into a location with a quota reads one row instead
-- of summing every blob of the location. A trigger keeps it on every path that
-- inserts or deletes a blob row (commits, sweeps, fsck), whatever process runs it.
-- It runs at commit (a deferred constraint trigger): the location's row is locked
-- only while the transaction commits, not while the commit writes its file.
CREATE TABLE fiefdom_vault_usage (
    location text COLLATE "C" PRIMARY KEY,
    blobs bigint NOT NULL CHECK (blobs >= 0),
    bytes bigint NOT NULL CHECK (bytes >= 0)
);

INSERT INTO fiefdom_vault_usage (location, blobs, bytes)
SELECT location, count(*), coalesce(sum(size), 0) FROM fiefdom_blobs GROUP BY location;

CREATE FUNCTION fiefdom_vault_count_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO fiefdom_vault_usage AS u (location, blobs, bytes)
        VALUES (NEW.location, 1, NEW.size)
        ON CONFLICT (location) DO UPDATE
        SET blobs = u.blobs + 1, bytes = u.bytes + EXCLUDED.bytes;
    ELSE
        UPDATE fiefdom_vault_usage
        SET blobs = blobs - 1, bytes = bytes - OLD.size
        WHERE location = OLD.location;
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER fiefdom_blobs_usage
AFTER INSERT OR DELETE ON fiefdom_blobs
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION fiefdom_vault_count_usage();
