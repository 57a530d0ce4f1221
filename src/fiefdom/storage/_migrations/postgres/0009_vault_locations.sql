-- The vault's storage locations as this store knows them: a location's name is what
-- its blob rows record, and id is the identity written in the marker file at the
-- root of its folder the first time a vault attached it. A vault refuses a folder
-- whose marker does not match (another folder configured under a name this store
-- already gave to one): two daemons on one store with folders of their own under
-- one name would otherwise each see the other's blobs as missing.
-- first_path (host:path) is where it was first attached, named in that refusal.
CREATE TABLE fiefdom_vault_locations (
    name text COLLATE "C" PRIMARY KEY,
    id text NOT NULL,
    first_path text NOT NULL,
    attached_at double precision NOT NULL
);
