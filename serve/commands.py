"""`medner serve ...` subcommands."""

from __future__ import annotations


def add_serve_commands(stages) -> None:
    pass
