"""Subcommands beyond `serve`: demo, replay, call, twilio configure (registered on the CLI's parser)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Each command module adds its own parser; this is the one list of them."""
    from phonebridge import demo

    demo.add_parser(sub)
