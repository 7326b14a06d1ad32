"""Subcommands beyond `serve`: demo, replay, call, twilio configure, dev (registered on the CLI's parser)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Each command module adds its own parser; this is the one list of them."""
    import phonebridge.demo.cli as demo
    import phonebridge.twilio.number_cli as twilio_cli

    demo.add_parser(sub)
    import phonebridge.cassette.replay_cli as replay_cli; replay_cli.add_parser(sub)  # noqa: E702
    twilio_cli.add_parsers(sub)
    import phonebridge.dev.cli as dev; dev.add_parser(sub)  # noqa: E702
