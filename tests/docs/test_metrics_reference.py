"""The metrics reference in docs/daemon.md is checked against a running daemon: every
family a real daemon exports on ``/metrics`` (on SQLite, and on PostgreSQL with its
pool's families) has a row in the Metrics table."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from daemon_harness import DaemonProcess, write_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "daemon.md"


def documented_metrics(text: str) -> set[str]:
    """The metric names in the first column of the ``## Metrics`` table of ``text``
    (fiefdom's, and the process's and the interpreter's)."""
    part = ("\n" + text).split("\n## Metrics\n", 1)
    assert len(part) == 2, "docs/daemon.md has no '## Metrics' section"
    body = part[1].split("\n## ", 1)[0]
    row = r"^\| `((?:fiefdom|process|python)_[a-z0-9_]+)`"
    return set(re.findall(row, body, flags=re.MULTILINE))


def exported_families(exposition: str) -> dict[str, str]:
    """Each family of a Prometheus text exposition with its type. A counter's family
    is named as exposed, with ``_total``; the ``_created`` timestamp the classic format
    gives a counter or a histogram as a gauge of its own belongs to that family."""
    families = {f.name: f.type for f in text_string_to_metric_families(exposition)}
    named: dict[str, str] = {}
    for name, kind in families.items():
        base = families.get(name.removesuffix("_created"))
        if name.endswith("_created") and base in ("counter", "histogram", "summary"):
            continue
        named[f"{name}_total" if kind == "counter" else name] = kind
    return named


def undocumented(exposition: str, doc: str) -> list[str]:
    """The exported families of ``exposition`` with no row in ``doc``."""
    rows = documented_metrics(doc)
    return sorted(name for name in exported_families(exposition) if name not in rows)


def test_every_exported_metric_is_documented(store_url: str, backend: str, tmp_path: Path) -> None:
    """A real daemon's /metrics, parsed with prometheus_client's parser: every family
    it exports is named in docs/daemon.md's Metrics table (the PostgreSQL pool's
    families included, on that dialect)."""
    extra = f'[store]\nurl = "{store_url}"\n'
    with DaemonProcess(write_config(tmp_path, extra=extra)) as daemon:
        status, body = daemon.http("/metrics")
    assert status == 200, body
    exposition = body.decode()
    families = exported_families(exposition)
    assert "fiefdom_jobs" in families
    # The process's and the collector's, as a default registry exports them.
    assert {"process_resident_memory_bytes", "python_gc_collections_total"} <= families.keys()
    if backend == "postgres":
        assert "fiefdom_store_pool_acquire_seconds" in families
    assert undocumented(exposition, DOC.read_text(encoding="utf-8")) == []


_SCRAPE = """\
# HELP fiefdom_known_total Documented.
# TYPE fiefdom_known_total counter
fiefdom_known_total 1.0
# HELP fiefdom_known_created Documented.
# TYPE fiefdom_known_created gauge
fiefdom_known_created 1.7e9
# HELP fiefdom_new_gauge Not documented.
# TYPE fiefdom_new_gauge gauge
fiefdom_new_gauge 3.0
"""

_DOC = """\
# Running the daemon

## Metrics

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| `fiefdom_known_total` | counter | | documented |

## Next
"""


def test_an_undocumented_metric_fails_the_check() -> None:
    """A family with no row (``fiefdom_new_gauge``) is reported, and only it: the
    counter's ``_created`` gauge is not a family of its own; a row clears it."""
    assert undocumented(_SCRAPE, _DOC) == ["fiefdom_new_gauge"]
    with pytest.raises(AssertionError):
        assert undocumented(_SCRAPE, _DOC) == []
    row = "| `fiefdom_new_gauge` | gauge | | now documented |\n"
    fixed = _DOC.replace("\n## Next", row + "\n## Next")
    assert undocumented(_SCRAPE, fixed) == []
