"""The vault's statements, written once with a dialect's two differences filled in:
how a time is stored (unix seconds in SQLite, ``timestamptz`` in PostgreSQL) and
how a row is locked (``FOR UPDATE`` in PostgreSQL; a SQLite write transaction holds
the database's one write lock from its first statement on). Every listing reads
through an index: the resources' partial index on live names, the versions' primary
key ``(resource, number)``, the blobs' ``(location, sha256)`` key, their primary key
and their partial index on ``marked_at``."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True, slots=True)
class Statements:
    upsert_resource: str
    upsert_blob: str
    insert_version: str
    heal_damaged: str
    version: str
    latest: str
    versions: str
    resources: str
    stats: str
    resource_id: str
    lock_resource: str
    delete_version: str
    release_blob: str
    lock_resource_blobs: str
    release_resource_blobs: str
    delete_resource_versions: str
    delete_resource: str
    lock_blob: str
    purge_versions: str
    purge_blob: str
    due_sweeps: str
    blob_page: str
    blob_versions: str
    mark_damaged: str
    known_blobs: str
    adopt_orphan: str
    lock_quota: str
    blob_known: str
    location_usage: str


def statements(backend: Literal["sqlite", "postgres"]) -> Statements:
    pg = backend == "postgres"

    def t(param: str) -> str:
        return f"to_timestamp({param}::float8)" if pg else param

    def e(column: str) -> str:
        return f"extract(epoch FROM {column})::float8" if pg else column

    lock = " FOR UPDATE" if pg else ""
    meta = "$2::jsonb" if pg else "$2"
    meta_out = "r.metadata::text" if pg else "r.metadata"
    in_list = "= ANY($2::text[])" if pg else "IN (SELECT value FROM json_each($2))"
    version_columns = (
        f"r.name, v.number, b.sha256, v.size, b.location, {e('v.created_at')}, v.state"
    )
    version_from = (
        "FROM fiefdom_resources AS r "
        "JOIN fiefdom_versions AS v ON v.resource = r.id "
        "JOIN fiefdom_blobs AS b ON b.id = v.blob "
        "WHERE r.name = $1 AND r.deleted_at IS NULL AND v.state <> 'deleted'"
    )
    live_blobs = (
        "SELECT blob, count(*) AS n FROM fiefdom_versions "
        "WHERE resource = $1 AND state <> 'deleted' GROUP BY blob"
    )
    return Statements(
        # The resource's row is taken (and, on PostgreSQL, locked until the end of
        # the transaction) by the same statement that counts its next version.
        upsert_resource=(
            "INSERT INTO fiefdom_resources (name, last_version, metadata, created_at, "
            f"updated_at) VALUES ($1, 1, coalesce({meta}, '{{}}'), {t('$3')}, {t('$3')}) "
            "ON CONFLICT (name) DO UPDATE SET "
            "last_version = fiefdom_resources.last_version + 1, "
            "updated_at = excluded.updated_at, deleted_at = NULL, "
            f"metadata = CASE WHEN {meta} IS NOT NULL THEN {meta} "
            "WHEN fiefdom_resources.deleted_at IS NULL THEN fiefdom_resources.metadata "
            "ELSE excluded.metadata END "
            "RETURNING id, last_version"
        ),
        # Insert-or-get in one statement on the unique key; a hit takes a reference
        # and revives a blob marked for its sweep.
        upsert_blob=(
            "INSERT INTO fiefdom_blobs (location, sha256, size, refs, created_at) "
            f"VALUES ($1, $2, $3, 1, {t('$4')}) "
            "ON CONFLICT (location, sha256) DO UPDATE SET "
            "refs = fiefdom_blobs.refs + 1, marked_at = NULL "
            "RETURNING id, size"
        ),
        insert_version=(
            "INSERT INTO fiefdom_versions (resource, number, blob, size, created_at) "
            f"VALUES ($1, $2, $3, $4, {t('$5')})"
        ),
        heal_damaged=(
            "UPDATE fiefdom_versions SET state = 'live' WHERE blob = $1 AND state = 'damaged'"
        ),
        version=f"SELECT {version_columns} {version_from} AND v.number = $2",
        latest=f"SELECT {version_columns} {version_from} ORDER BY v.number DESC LIMIT 1",
        versions=f"SELECT {version_columns} {version_from} ORDER BY v.number",
        resources=(
            "SELECT r.name, "
            "(SELECT count(*) FROM fiefdom_versions AS c "
            "WHERE c.resource = r.id AND c.state <> 'deleted'), "
            f"l.number, l.size, {e('r.created_at')}, {meta_out} "
            "FROM fiefdom_resources AS r "
            "LEFT JOIN fiefdom_versions AS l ON l.resource = r.id AND l.number = ("
            "SELECT max(m.number) FROM fiefdom_versions AS m "
            "WHERE m.resource = r.id AND m.state <> 'deleted') "
            "WHERE r.deleted_at IS NULL AND r.name > $1 ORDER BY r.name LIMIT $2"
        ),
        stats=(
            "SELECT (SELECT count(*) FROM fiefdom_resources WHERE deleted_at IS NULL), "
            "(SELECT count(*) FROM fiefdom_versions WHERE state <> 'deleted'), "
            "(SELECT coalesce(sum(blobs), 0) FROM fiefdom_vault_usage), "
            "(SELECT coalesce(sum(bytes), 0) FROM fiefdom_vault_usage), "
            "(SELECT count(*) FROM fiefdom_blobs WHERE marked_at IS NOT NULL)"
        ),
        resource_id="SELECT id FROM fiefdom_resources WHERE name = $1 AND deleted_at IS NULL",
        lock_resource=(
            f"SELECT id FROM fiefdom_resources WHERE name = $1 AND deleted_at IS NULL{lock}"
        ),
        delete_version=(
            f"UPDATE fiefdom_versions SET state = 'deleted', deleted_at = {t('$3')} "
            "WHERE resource = $1 AND number = $2 AND state <> 'deleted' RETURNING blob"
        ),
        release_blob=(
            "UPDATE fiefdom_blobs SET refs = refs - 1, "
            f"marked_at = CASE WHEN refs = 1 THEN {t('$2')} ELSE marked_at END "
            "WHERE id = $1 RETURNING refs"
        ),
        # Blobs are locked in id order before a resource's delete changes several
        # of them: two deletes sharing blobs cannot deadlock (PostgreSQL).
        lock_resource_blobs=(
            f"SELECT id FROM fiefdom_blobs WHERE id IN (SELECT blob FROM ({live_blobs}) AS d) "
            "ORDER BY id FOR UPDATE"
            if pg
            else ""
        ),
        release_resource_blobs=(
            "UPDATE fiefdom_blobs AS b SET refs = b.refs - d.n, "
            f"marked_at = CASE WHEN b.refs = d.n THEN {t('$2')} ELSE b.marked_at END "
            f"FROM ({live_blobs}) AS d WHERE b.id = d.blob RETURNING id, refs"
        ),
        delete_resource_versions=(
            f"UPDATE fiefdom_versions SET state = 'deleted', deleted_at = {t('$2')} "
            "WHERE resource = $1 AND state <> 'deleted'"
        ),
        delete_resource=(
            f"UPDATE fiefdom_resources SET deleted_at = {t('$2')}, updated_at = {t('$2')} "
            "WHERE id = $1"
        ),
        lock_blob=(
            f"SELECT location, sha256, refs, {e('marked_at')} FROM fiefdom_blobs "
            f"WHERE id = $1{lock}"
        ),
        purge_versions="DELETE FROM fiefdom_versions WHERE blob = $1 AND state = 'deleted'",
        purge_blob="DELETE FROM fiefdom_blobs WHERE id = $1 AND refs = 0",
        # Of the locations named in $3: a vault sweeps only the files it can reach.
        due_sweeps=(
            "SELECT id FROM fiefdom_blobs WHERE marked_at IS NOT NULL "
            f"AND marked_at <= {t('$1')} AND location "
            + ("= ANY($3::text[])" if pg else "IN (SELECT value FROM json_each($3))")
            + " ORDER BY marked_at LIMIT $2"
        ),
        blob_page=(
            "SELECT id, location, sha256 FROM fiefdom_blobs WHERE id > $1 AND refs > 0 "
            "ORDER BY id LIMIT $2"
        ),
        blob_versions=(
            "SELECT r.name, v.number FROM fiefdom_versions AS v "
            "JOIN fiefdom_resources AS r ON r.id = v.resource "
            "WHERE v.blob = $1 AND v.state <> 'deleted' ORDER BY r.name, v.number"
        ),
        mark_damaged=(
            "UPDATE fiefdom_versions SET state = 'damaged' WHERE blob = $1 AND state = 'live' "
            "RETURNING number"
        ),
        known_blobs=f"SELECT sha256 FROM fiefdom_blobs WHERE location = $1 AND sha256 {in_list}",
        # A file found without its row gets a row marked for its sweep (at the
        # file's age), so that it goes the way every unreferenced blob goes.
        adopt_orphan=(
            "INSERT INTO fiefdom_blobs (location, sha256, size, refs, created_at, marked_at) "
            f"VALUES ($1, $2, $3, 0, {t('$4')}, {t('$5')}) "
            "ON CONFLICT (location, sha256) DO NOTHING RETURNING id"
        ),
        # Commits into a location with a quota take this lock (till the end of their
        # transaction; a SQLite write transaction holds the database's lock anyway),
        # so that two of them cannot both fit into the same free bytes.
        lock_quota=(
            "SELECT pg_advisory_xact_lock(hashtext('fiefdom.vault.quota'), hashtext($1))"
            if pg
            else ""
        ),
        blob_known="SELECT 1 FROM fiefdom_blobs WHERE location = $1 AND sha256 = $2",
        # Kept by the database's triggers as blob rows come and go (migration 0010).
        location_usage=(
            "SELECT coalesce((SELECT bytes FROM fiefdom_vault_usage WHERE location = $1), 0)"
        ),
    )
