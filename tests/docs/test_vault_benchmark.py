"""bench/vault.py still runs (at tiny sizes) and prints its figures as JSON, each beside
a baseline measured in the same run. Nothing here looks at the speed itself."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_vault_benchmark_prints_figures_with_baselines(backend: str) -> None:
    """bench/vault.py: large ingest beside cp + fsync, RSS growth, download beside a
    direct read, small-file ingest beside write + fsync + rename; each with its ratio."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "vault.py"),
            "--size",
            "2",
            "--rounds",
            "2",
            "--files",
            "20",
            "--backend",
            backend,
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [f["figure"] for f in figures] == [
        "ingest_large",
        "ingest_rss",
        "download",
        "ingest_small",
    ]
    assert {f["backend"] for f in figures} == {backend}
    for figure in figures:
        if figure["figure"] != "ingest_rss":
            assert {"baseline", "ratio"} <= figure.keys()
    assert {"growth_mib", "runs_mib"} <= figures[1].keys()
