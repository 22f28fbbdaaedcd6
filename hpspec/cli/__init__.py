"""The `hpspec` command, the top floor: a thin shell over the library. Nothing below imports it."""

from hpspec.cli.app import main

__all__ = ["main"]
