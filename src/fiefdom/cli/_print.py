"""How ``status`` prints the daemon: its line, the supervisor tree, the exposed
targets, the queues and the cluster's nodes with their last events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocol import ClusterInfo, QueueInfo, StatusReply, TargetInfo
from ..storage import JobState
from ._common import table, when


def _print_status(status: StatusReply) -> None:
    state = "draining" if status.draining else ("ready" if status.ready else "not ready")
    print(f"{status.name} {status.version}  pid {status.pid}  up {status.uptime:.0f}s  {state}")
    cluster = status.cluster
    where = (
        ""
        if cluster is None
        else f"  cluster: {cluster.partitions}/{cluster.total} partitions, "
        f"{cluster.nodes} node{'s' if cluster.nodes != 1 else ''}"
    )
    print(f"loop {status.loop}  connections {status.connections}{where}")
    print()
    rows: list[list[Any]] = []

    def walk(node: dict[str, Any]) -> None:
        kind = node.get("kind")
        if kind == "supervisor":
            rows.append([node["path"], "supervisor", "-", "-", node["restarts"], "-"])
            for child in node.get("children", []):
                walk(child)
        elif kind == "actor":
            rows.append(
                [
                    node["path"],
                    "actor",
                    node["state"]
                    + (" (paused)" if node.get("paused") else "")
                    + (" (stuck)" if node.get("stuck") else ""),
                    f"{node['mailbox_depth']}/{node['mailbox_capacity']}",
                    node["restarts"],
                    node["messages_handled"],
                ]
            )
        elif kind == "domain":
            rows.append(
                [
                    node["path"],
                    "domain",
                    f"{node['live']} live" + _domain_pauses(node),
                    "-",
                    node["crashes"],
                    node["activations"],
                ]
            )
        elif kind == "service":
            state = "running" if node["running"] else "stopped"
            rows.append([node["path"], "service", state, "-", node["restarts"], "-"])

    walk(status.tree)
    table(["path", "kind", "state", "mailbox", "restarts", "handled"], rows)
    if status.targets:
        print()
        _print_targets(status.targets, status.tree)
    if status.queues:
        print()
        _print_queues(status.queues)
    if cluster is not None and cluster.members:
        print()
        _print_cluster(cluster)


_EVENTS_SHOWN = 5  # the last events of the cluster node status prints (--json has all)


def _print_cluster(cluster: ClusterInfo) -> None:
    """The nodes of the cluster as this daemon's node last saw them, then its last
    events."""
    rows: list[list[Any]] = []
    for member in cluster.members:
        state = (
            "this node" if member.node == cluster.node else ("live" if member.alive else "silent")
        )
        epochs = _epochs(member.min_epoch, member.max_epoch)
        rows.append([member.node, member.partitions, epochs, member.lapsed, state])
    if cluster.unowned:
        rows.append(["-", cluster.unowned, "-", "-", "no live lease"])
    table(["node", "partitions", "epochs", "lapsed", "state"], rows)
    if cluster.events:
        print()
        table(
            ["time", "event", "partitions", "nodes"],
            [
                [when(e.at), e.kind, e.partitions, ",".join(e.nodes) or "-"]
                for e in cluster.events[-_EVENTS_SHOWN:]
            ],
        )


def _epochs(low: int | None, high: int | None) -> str:
    if low is None or high is None:
        return "-"
    return str(low) if low == high else f"{low}-{high}"


_KEYS_PRINTED = 10  # paused (or resumed) keys of a domain printed by name (--json: 100)


def _keys(node: dict[str, Any], field: str) -> str:
    """A domain's paused (or resumed) keys, the first few by name and how many in all
    when there are more (a daemon lists at most 100 of them in its statistics)."""
    keys: list[str] = list(node.get(field) or [])
    total = max(int(node.get(f"{field}_total") or 0), len(keys))
    shown = ", ".join(keys[:_KEYS_PRINTED])
    return shown if total <= _KEYS_PRINTED else f"{shown}, ... ({total} in all)"


def _domain_pauses(node: dict[str, Any]) -> str:
    if node.get("paused"):
        resumed = _keys(node, "resumed_keys")
        return " (paused" + (f", except {resumed})" if resumed else ")")
    keys = _keys(node, "paused_keys")
    return f" (paused keys: {keys})" if keys else ""


def _domains(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The domain nodes of a status tree by the last part of their path; a name two
    domains share maps to neither."""
    found: dict[str, dict[str, Any]] = {}
    shared: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if node.get("kind") == "domain":
            name = str(node["path"]).rsplit("/", 1)[-1]
            if name in found:
                shared.add(name)
            found[name] = node
        for child in node.get("children", []):
            walk(child)

    walk(tree)
    return {name: node for name, node in found.items() if name not in shared}


def _target_paused(target: TargetInfo, domains: dict[str, dict[str, Any]]) -> str:
    node = domains.get(target.name) if target.kind == "domain" else None
    if node is None:
        return "yes" if target.paused else "no"
    if target.paused or node.get("paused"):
        resumed = _keys(node, "resumed_keys")
        return f"yes, except {resumed}" if resumed else "yes"
    keys = _keys(node, "paused_keys")
    return f"keys: {keys}" if keys else "no"


def _print_targets(targets: Sequence[TargetInfo], tree: dict[str, Any] | None = None) -> None:
    """The exposed targets; with the status ``tree``, a domain's paused column names
    its keys paused on their own (or, paused whole, those resumed on their own)."""
    domains = _domains(tree) if tree is not None else {}
    table(
        ["target", "kind", "paused", "messages"],
        [[t.name, t.kind, _target_paused(t, domains), ", ".join(t.messages)] for t in targets],
    )


def _print_queues(queues: Sequence[QueueInfo]) -> None:
    states = [s for s in JobState if any(s in q.counts for q in queues)]
    table(
        ["queue", "paused", *states],
        [
            [q.name, "yes" if q.paused else "no", *(q.counts.get(s, 0) for s in states)]
            for q in queues
        ],
    )
