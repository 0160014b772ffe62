"""The deploy tests score the evaluator's hand-written build and checkpoint (tests/evaluate/conftest.py)."""

from tests.evaluate.conftest import build_and_checkpoint  # noqa: F401 (fixture)
