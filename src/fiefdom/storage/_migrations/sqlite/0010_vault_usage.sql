-- What each storage location's blobs take, kept by the database itself as blob rows
-- come and go, so that a commit into a location with a quota reads one row instead
-- of summing every blob of the location. Triggers keep it on every path that
-- inserts or deletes a blob row (commits, sweeps, fsck), whatever process runs it.
CREATE TABLE fiefdom_vault_usage (
    location text PRIMARY KEY,
    blobs INTEGER NOT NULL CHECK (blobs >= 0),
    bytes INTEGER NOT NULL CHECK (bytes >= 0)
);

INSERT INTO fiefdom_vault_usage (location, blobs, bytes)
SELECT location, count(*), coalesce(sum(size), 0) FROM fiefdom_blobs GROUP BY location;

CREATE TRIGGER fiefdom_blobs_usage_insert AFTER INSERT ON fiefdom_blobs
BEGIN
    INSERT INTO fiefdom_vault_usage (location, blobs, bytes)
    VALUES (NEW.location, 1, NEW.size)
    ON CONFLICT (location) DO UPDATE
    SET blobs = blobs + 1, bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER fiefdom_blobs_usage_delete AFTER DELETE ON fiefdom_blobs
BEGIN
    UPDATE fiefdom_vault_usage
    SET blobs = blobs - 1, bytes = bytes - OLD.size
    WHERE location = OLD.location;
END;
