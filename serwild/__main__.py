"""``python -m serwild`` is the same as the ``serwild`` command (torchrun's evaluation ranks run it too)."""

from serwild import torchrun
from serwild.cli import main

code = main()
if torchrun.is_rank():  # an evaluation rank: end as every rank does
    torchrun.exit_now(code)
raise SystemExit(code)
