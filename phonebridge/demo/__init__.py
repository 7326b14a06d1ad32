"""`phonebridge demo`: a whole phone call on this machine, offline."""

# This package was one module; its names stay importable from here.
from phonebridge.demo.cli import *  # noqa: F403
