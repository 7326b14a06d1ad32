"""One phone call: the sans-I/O core, its state tables and effects, tool turns, hold sound, the pump."""

# This package was one module; its names stay importable from here.
from phonebridge.call.state import *  # noqa: F403
