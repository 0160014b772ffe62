"""``python -m serwild`` is the same as the ``serwild`` command (torchrun's evaluation ranks run it too)."""

import os

from serwild.cli import main

code = main()
if "TORCHELASTIC_RUN_ID" in os.environ:  # an evaluation rank: end as every rank does
    from serwild.torchrun import exit_now

    exit_now(code)
raise SystemExit(code)
