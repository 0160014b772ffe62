"""``python -m serwild`` is the same as the ``serwild`` command."""

from serwild.cli import main

raise SystemExit(main())
