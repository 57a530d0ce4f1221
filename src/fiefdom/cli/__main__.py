"""``python -m fiefdom.cli``: the command line, as the ``fiefdom`` script runs it."""

from fiefdom.cli import main

raise SystemExit(main())
