"""``python -m kiyotaka_ws``: the same as the ``kiyotaka-ws`` command."""

from ._cli.command import main

raise SystemExit(main())
