"""The ``fiefdom`` command line: run the daemon (``serve``), migrate its store, and
drive a running daemon through its control channel. Output is a readable table by
default and JSON with ``--json``; times carry their zone (UTC, or this machine's
with ``--local``). An error is one line on stderr and exit status 1 (2 when
``serve`` cannot start), with its traceback before it under ``--debug``; output cut
short by its reader (``| head``) ends the command quietly. The global options may
come before or after the command.

The control token is read from ``--token-file``, else ``FIEFDOM_TOKEN``, else from
the configuration's tokens, else from the daemon's ``admin.token``. ``--token``
works too, but any user of the machine can read it in the process list: the command
warns when it is used."""

from ._common import CommandError as CommandError
from ._main import main as main

__all__ = ["CommandError", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
