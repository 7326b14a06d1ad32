"""phonebridge's pytest plugin (registered through the ``pytest11`` entry point).

Fixtures are added as the emulators land.
"""

from __future__ import annotations
