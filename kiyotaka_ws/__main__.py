"""``python -m kiyotaka_ws``: the same as the ``kiyotaka-ws`` command."""

from .cli import main

raise SystemExit(main())
