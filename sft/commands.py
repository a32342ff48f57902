"""`medner sft ...` subcommands."""

from __future__ import annotations


def add_sft_commands(stages) -> None:
    pass
