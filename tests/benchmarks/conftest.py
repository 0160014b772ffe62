"""The trainer's tiny build fixture, shared (benchmarks' scripts train on it)."""

from tests.trainer.conftest import tiny_build  # noqa: F401
