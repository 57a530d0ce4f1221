"""The control channel's published reference, generated from the wire types: the JSON
Schema of every frame (what ``/schema`` serves) and the table of requests with the
role each needs (read off the request union, as ``REQUIRED_ROLE`` is). Tests hold
``docs/protocol.schema.json`` and the table in ``docs/protocol.md`` to them::

    python -m fiefdom.protocol._reference schema > docs/protocol.schema.json
    python -m fiefdom.protocol._reference roles   # the table between the roles markers
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import typing
from collections.abc import Sequence

from ._codec import json_schema
from ._messages import REQUIRED_ROLE, ROLE_RANK, ClientMessage

REGENERATE_SCHEMA = "python -m fiefdom.protocol._reference schema > docs/protocol.schema.json"
REGENERATE_ROLES = "python -m fiefdom.protocol._reference roles"


def schema_text() -> str:
    """The JSON Schema of the protocol as the server serves it on ``/schema``, with a
    final newline."""
    return json.dumps(json_schema(), indent=2) + "\n"


def _summary(request: type) -> str:
    """The first paragraph of a request type's docstring, in Markdown, on one line."""
    doc = inspect.getdoc(request) or ""
    first = doc.split("\n\n", 1)[0]
    return re.sub(r"``([^`]+)``", r"`\1`", " ".join(first.split())).replace("|", "\\|")


def roles_table() -> str:
    """Each request type (its ``type`` tag) with the weakest role allowed to send it,
    how many frames it counts as against the connection's rate, and what it does;
    by role, then in the order of the union."""
    requests = list(typing.get_args(ClientMessage))
    ordered = sorted(requests, key=lambda t: ROLE_RANK[REQUIRED_ROLE[t]])
    rows = ["| request `type` | role | counts as | what it does |", "| --- | --- | --- | --- |"]
    for request in ordered:
        tag = request.__struct_config__.tag
        rows.append(
            f"| `{tag}` | {REQUIRED_ROLE[request]} | {request.cost} | {_summary(request)} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the schema (``schema``) or the roles table (``roles``) on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["schema"]:
        sys.stdout.write(schema_text())
    elif args == ["roles"]:
        sys.stdout.write(roles_table())
    else:
        sys.stderr.write(f"usage: {REGENERATE_SCHEMA}\n       {REGENERATE_ROLES}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
