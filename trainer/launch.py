"""Placeholder: being written (replace this whole file)."""

from serwild.errors import UsageError


def add_arguments(p):
    pass


def run(args):
    raise UsageError("not implemented yet")
