"""`medner eval ...` subcommands."""

from __future__ import annotations


def add_eval_commands(stages) -> None:
    pass
