"""What a user writes and what runs it: Agent, typed tools, schemas, the call context, handler threads."""

# This package was one module; its names stay importable from here.
from phonebridge.agent.definition import *  # noqa: F403
