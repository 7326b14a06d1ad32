"""Twilio: the Media Streams protocol, TwiML, signatures, stream tokens, REST and the number CLI."""

# This package was one module; its names stay importable from here.
from phonebridge.twilio.protocol import *  # noqa: F403
