"""A daemon's vault over several storage locations (``[[vault.locations]]``): a disk
being retired keeps serving the versions stored on it while new uploads go to the
new one (``upload_to`` chooses), fsck checks them all, and a location's folder is
checked against the store's record of it like the main one's."""

from __future__ import annotations

from pathlib import Path

from daemon_harness import DaemonProcess, write_config

from fiefdom.vault import VaultClient


def _config(folder: Path, store: Path, vault: str) -> Path:
    return write_config(folder, extra=f'[store]\nurl = "sqlite:///{store}"\n\n{vault}')


async def test_a_retired_location_serves_its_versions_while_uploads_go_to_the_new_one(
    tmp_path: Path,
) -> None:
    """Version 1 goes to location ``old``; the daemon is configured again with ``new``
    as its main location and ``old`` among ``locations``: version 1 reads back from
    ``old``, version 2 is stored in ``new``, fsck (with repair) finds nothing missing
    in either; with ``upload_to = "old"`` version 3 goes to ``old`` again."""
    store = tmp_path / "vault.db"
    old, new = tmp_path / "disks" / "old", tmp_path / "disks" / "new"
    first = _config(tmp_path / "one", store, f'[vault]\nlocation = "old"\npath = "{old}"\n')
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"first bytes\n" * 1000)
    with DaemonProcess(first) as daemon:
        async with VaultClient(daemon.url, token=daemon.token) as client:
            assert (await client.put(upload, "doc.bin")).version == 1
    both = (
        f'[vault]\nlocation = "new"\npath = "{new}"\n'
        f'[[vault.locations]]\nname = "old"\npath = "{old}"\n'
    )
    with DaemonProcess(_config(tmp_path / "two", store, both)) as daemon:
        async with VaultClient(daemon.url, token=daemon.token) as client:
            assert await client.read("doc.bin", 1) == upload.read_bytes()
            upload.write_bytes(b"second bytes\n" * 1000)
            assert (await client.put(upload, "doc.bin")).version == 2
            versions = await client.versions("doc.bin")
            assert [(v.version, v.location) for v in versions] == [(1, "old"), (2, "new")]
            report = await client.fsck(repair=True)
            assert report.clean
            assert report.blobs_checked == 2
    again = both.replace("[[vault.locations]]", 'upload_to = "old"\n[[vault.locations]]')
    with DaemonProcess(_config(tmp_path / "three", store, again)) as daemon:
        async with VaultClient(daemon.url, token=daemon.token) as client:
            upload.write_bytes(b"third bytes\n" * 1000)
            assert (await client.put(upload, "doc.bin")).version == 3
            assert (await client.versions("doc.bin"))[-1].location == "old"
            assert await client.read("doc.bin", 2) == b"second bytes\n" * 1000


def test_a_further_location_whose_folder_is_not_the_known_one_fails_the_start(
    tmp_path: Path,
) -> None:
    """Location ``old`` is known to the store with its folder; a daemon naming another
    folder ``old`` in ``locations`` refuses to start, naming the setting
    ``vault.locations``."""
    store = tmp_path / "vault.db"
    old = tmp_path / "disks" / "old"
    first = _config(tmp_path / "one", store, f'[vault]\nlocation = "old"\npath = "{old}"\n')
    with DaemonProcess(first):
        pass
    wrong = (
        f'[vault]\nlocation = "new"\npath = "{tmp_path / "disks" / "new"}"\n'
        f'[[vault.locations]]\nname = "old"\npath = "{tmp_path / "elsewhere"}"\n'
    )
    daemon = DaemonProcess(_config(tmp_path / "two", store, wrong))
    daemon.launch()
    try:
        assert daemon.wait() == 2
    finally:
        daemon.stop()
    *_, last = daemon.log_path.read_text().splitlines()
    assert last.startswith("fiefdom: error: vault.locations: storage location 'old' of ")
    assert last.endswith("(settings vault.locations; or vault.enabled = false)")
