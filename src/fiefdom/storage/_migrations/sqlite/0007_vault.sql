-- The vault: resources with gapless versions, each pointing at a blob of bytes
-- addressed by its sha256 in a storage location. A resource's next version number is
-- its last_version plus one, taken in the transaction that adds the version (the
-- primary key of fiefdom_versions is the last line of defence). A blob counts the
-- versions (live or damaged) that point at it in refs; one that no version points at
-- any more is marked (marked_at) and its file is removed by a sweep after a grace
-- period, unless a new version took it back meanwhile. Times are unix seconds.
CREATE TABLE fiefdom_resources (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    last_version INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deleted_at REAL
) STRICT;
-- Listing live resources by name (keyset pagination).
CREATE INDEX fiefdom_resources_live ON fiefdom_resources (name) WHERE deleted_at IS NULL;

CREATE TABLE fiefdom_blobs (
    id INTEGER PRIMARY KEY,
    location TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    refs INTEGER NOT NULL DEFAULT 0 CHECK (refs >= 0),
    created_at REAL NOT NULL,
    marked_at REAL,
    UNIQUE (location, sha256)
) STRICT;
-- The blobs waiting for their sweep.
CREATE INDEX fiefdom_blobs_marked ON fiefdom_blobs (marked_at) WHERE marked_at IS NOT NULL;

CREATE TABLE fiefdom_versions (
    resource INTEGER NOT NULL REFERENCES fiefdom_resources (id),
    number INTEGER NOT NULL,
    blob INTEGER NOT NULL REFERENCES fiefdom_blobs (id),
    size INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'deleted', 'damaged')),
    created_at REAL NOT NULL,
    deleted_at REAL,
    PRIMARY KEY (resource, number)
) STRICT;
CREATE INDEX fiefdom_versions_blob ON fiefdom_versions (blob);
