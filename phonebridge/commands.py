"""Subcommands beyond `serve`: demo, replay, call, twilio configure, dev (registered on the CLI's parser)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Each command module adds its own parser; this is the one list of them."""
    from phonebridge import demo, twilio_cli

    demo.add_parser(sub)
    from phonebridge import replay_cli; replay_cli.add_parser(sub)  # noqa: E702
    twilio_cli.add_parsers(sub)
    from phonebridge import dev; dev.add_parser(sub)  # noqa: E702
