"""The benchmarks still run (at tiny sizes) and print their figures as JSON next to
a baseline measured in the same run. Nothing here looks at the speed itself."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines, "the benchmark printed nothing"
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_actor_benchmark_prints_figures_with_baselines() -> None:
    """bench/actors.py: tell, ask and activation figures, each with its baseline and
    ratio (the activations also under the daemon's garbage collector settings)."""
    figures = run("actors.py", "--quick", "--only", "tell", "--only", "ask", "--only", "domain")
    assert [f["figure"] for f in figures] == [
        "tell_throughput",
        "ask_round_trips",
        "domain_activations",
    ]
    for figure in figures:
        assert {"baseline_per_s", "ratio", "loop"} <= figure.keys()
    assert "daemon_gc_ratio" in figures[2]


@pytest.mark.slow
def test_job_benchmark_prints_figures_with_baselines() -> None:
    """bench/jobs.py: a round of fiefdom on PostgreSQL and on SQLite (and pgqueuer and
    procrastinate when installed) and of the floor under fiefdom's enqueue, then a
    summary with medians and ratios."""
    lines = run(
        "jobs.py",
        *("--rounds", "1", "--batch-jobs", "200", "--single-jobs", "20", "--samples", "3"),
        *("--loop", "asyncio"),
    )
    systems = {str(line["system"]) for line in lines if line.get("figure") == "round"}
    assert {"fiefdom_postgres", "fiefdom_sqlite", "postgres_floor"} <= systems
    (summary,) = [line for line in lines if line.get("figure") == "summary"]
    assert {"medians", "ratios", "raw"} <= summary.keys()
    # fiefdom's enqueue next to the floor under it (its table's own cost), every round.
    ratios = summary["ratios"]
    assert isinstance(ratios, dict)
    assert {"batch_enqueue_vs_floor", "single_enqueue_vs_floor"} <= ratios.keys()
    medians = summary["medians"]
    assert isinstance(medians, dict)
    assert medians["postgres_floor"]["batch_enqueue_per_s"] > 0
    # The batch under the interpreter's collector thresholds too, every round.
    assert medians["fiefdom_postgres"]["batch_enqueue_untuned_gc_per_s"] > 0


@pytest.mark.slow
def test_control_benchmark_prints_figures_with_baselines() -> None:
    """bench/control.py: 1 and 50 clients through the daemon beside a bare echo server."""
    lines = run("control.py", "--seconds", "0.2", "--rounds", "1")
    figures = [line for line in lines if "figure" in line]
    assert [f["figure"] for f in figures] == [
        "control channel call, 1 client",
        "control channel call, 50 clients",
    ]
    for figure in figures:
        assert {"fiefdom_calls_per_s", "bare_echo_per_s", "ratio"} <= figure.keys()
    assert sum(1 for line in lines if "round" in line) == 2  # every round is printed


@pytest.mark.slow
def test_cluster_benchmark_prints_figures_with_baselines() -> None:
    """bench/cluster.py on SQLite: drain and asks with and without the cluster layer, the
    takeover time after a node process is killed or stopped, 1 against 3 nodes, and
    forwarded against local asks."""
    figures = run(
        "cluster.py",
        "--jobs",
        "100",
        "--rounds",
        "1",
        "--trials",
        "1",
        "--lease",
        "1.5",
        "--backend",
        "sqlite",
        "--scaling",
        "60",
        "--asks",
        "40",
    )
    names = [f["figure"] for f in figures]
    assert names == [
        "single_node_round",
        "single_node_overhead",
        "takeover_after_kill",
        "handoff_after_sigterm",
        "drain_1_vs_3_nodes",
        "forwarded_ask",
        "forwarded_ask",
    ]
    assert figures[5]["forwarded_asks_per_s"] > 0
    assert len(figures[4]["three_nodes"]["cpu_s_per_node"]) == 3
    assert {"drain_with_cluster_per_s", "drain_without_per_s"} <= figures[0].keys()
    assert figures[2]["trials"]
