"""``python -m serwild`` is the same as the ``serwild`` command (torchrun's evaluation ranks run it too)."""

from serwild.cli import main
from serwild.processes import torchrun

code = main()
if torchrun.is_rank():  # an evaluation rank: end as every rank does
    torchrun.exit_now(code)
raise SystemExit(code)
