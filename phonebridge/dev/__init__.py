"""`phonebridge dev`: a local softphone in the browser against the real bridge and the emulators."""

# This package was one module; its names stay importable from here.
from phonebridge.dev.cli import *  # noqa: F403
