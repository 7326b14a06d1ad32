"""Luigi's pizzeria, the example agent: its source is phonebridge/examples/pizzeria.py.

It lives inside the package so that `phonebridge demo` finds it from any install; this file lets
`phonebridge serve --agent examples/pizzeria.py` work from a checkout. Copy that file to start your own.
"""

from phonebridge.examples.pizzeria import agent

__all__ = ["agent"]
