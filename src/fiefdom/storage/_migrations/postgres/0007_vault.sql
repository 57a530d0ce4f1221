-- The vault: resources with gapless versions, each pointing at a blob of bytes
-- addressed by its sha256 in a storage location. A resource's next version number is
-- its last_version plus one, taken in the transaction that adds the version (the
-- row stays locked until it ends; the primary key of fiefdom_versions is the last
-- line of defence). A blob counts the versions (live or damaged) that point at it in
-- refs; one that no version points at any more is marked (marked_at) and its file is
-- removed by a sweep after a grace period, unless a new version took it back
-- meanwhile. Names compare byte by byte (COLLATE "C"), as on SQLite.
CREATE TABLE fiefdom_resources (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text COLLATE "C" NOT NULL UNIQUE,
    last_version bigint NOT NULL DEFAULT 0,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    deleted_at timestamptz
);
-- Listing live resources by name (keyset pagination).
CREATE INDEX fiefdom_resources_live ON fiefdom_resources (name) WHERE deleted_at IS NULL;

CREATE TABLE fiefdom_blobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    location text NOT NULL,
    sha256 text NOT NULL,
    size bigint NOT NULL,
    refs bigint NOT NULL DEFAULT 0 CHECK (refs >= 0),
    created_at timestamptz NOT NULL,
    marked_at timestamptz,
    UNIQUE (location, sha256)
);
-- The blobs waiting for their sweep.
CREATE INDEX fiefdom_blobs_marked ON fiefdom_blobs (marked_at) WHERE marked_at IS NOT NULL;

CREATE TABLE fiefdom_versions (
    resource bigint NOT NULL REFERENCES fiefdom_resources (id),
    number bigint NOT NULL,
    blob bigint NOT NULL REFERENCES fiefdom_blobs (id),
    size bigint NOT NULL,
    state text NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'deleted', 'damaged')),
    created_at timestamptz NOT NULL,
    deleted_at timestamptz,
    PRIMARY KEY (resource, number)
);
CREATE INDEX fiefdom_versions_blob ON fiefdom_versions (blob);
