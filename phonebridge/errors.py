"""phonebridge's errors, one small hierarchy.

Each class says who broke the contract, as h11 does (``local``: we did, our code or our user's settings and
handlers; ``remote``: the peer did, Twilio, the Live service, the caller's network), in its ``side``, and
its docstring says what happens next::

    PhonebridgeError                      (raised directly only for one-line CLI failures)
    ├── ProtocolError                     a protocol was broken; `reason` tags how (never raised directly)
    │   ├── LocalProtocolError     local  our bug: a move the call core's state table does not allow
    │   └── RemoteProtocolError    remote a peer broke its protocol (never raised directly)
    │       ├── TwilioProtocolError       a Media Streams frame: dropped and counted, the call goes on
    │       ├── ModelProtocolError        a Live server message: the model connection is replaced
    │       └── SignatureError            a webhook or upgrade Twilio did not sign: 403, no session opened
    ├── ConfigError                local  our user's configuration: refused at start, before any call
    ├── ModelUnavailable           remote the Live service cannot be reached: the call falls back (TwiML)
    ├── ToolError                  local  a business handler failed: the model is told, the call goes on
    │   ├── ToolArgumentError      remote the model's arguments do not fit the tool: it is told, may retry
    │   └── ToolResponseError      local  a handler's answer cannot be sent: the model gets an error instead
    └── TwilioApiError             remote Twilio's REST API refused a request (after retries for transient failures)

Catch ``RemoteProtocolError`` for "a peer misbehaved" and ``LocalProtocolError`` for "we have a bug";
``ProtocolError`` catches both. tests/test_errors.py checks that every class here is raised somewhere.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Side = Literal["local", "remote"]

__all__ = [
    "ConfigError", "LocalProtocolError", "ModelProtocolError", "ModelUnavailable", "PhonebridgeError",
    "ProtocolError", "RemoteProtocolError", "SignatureError", "ToolArgumentError", "ToolError",
    "ToolResponseError", "TwilioApiError", "TwilioProtocolError",
]


class PhonebridgeError(Exception):
    """Base of every error phonebridge raises on purpose. `main` prints one line for it and exits 2."""

    side: ClassVar[Side | None] = None  # who broke the contract; each subclass says


class ProtocolError(PhonebridgeError):
    """A protocol was broken, by us or by a peer (see the two subclasses). `reason` is a short
    machine-readable tag for counting and logs."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """We broke our own rules (a bug): a move the call core's state table does not allow.

    Next: nothing catches it: it propagates out of the call core to the bridge's task, loud in tests."""

    side: ClassVar[Side] = "local"


class RemoteProtocolError(ProtocolError):
    """A peer sent what its protocol does not allow. Raised only as one of its subclasses, which say
    which peer and what happens next."""

    side: ClassVar[Side] = "remote"


class TwilioProtocolError(RemoteProtocolError):
    """Twilio (or whoever holds the media socket) sent a frame we cannot accept.

    Next: the frame is dropped and counted as malformed under its `reason`; the call goes on."""


class ModelProtocolError(RemoteProtocolError):
    """The Live service sent a server message we cannot interpret.

    Next: the model link replaces the connection (resuming the session); the call goes on."""


class SignatureError(RemoteProtocolError):
    """A webhook or the media WebSocket upgrade is not signed by Twilio (X-Twilio-Signature missing or
    wrong), or its body cannot be read to check it. `reason` says which.

    Next: answered 403, counted and logged sparingly; no call session is opened."""


class ConfigError(PhonebridgeError):
    """Our user's settings, agent or command line are invalid.

    Next: refused at start-up (one line, exit 2), before any call; never raised mid-call."""

    side: ClassVar[Side] = "local"


class ModelUnavailable(PhonebridgeError):
    """The Live service could not be reached or refused the session (or no client could be built).

    Next: the call's fallback TwiML runs (dial or say), and readiness reports the model down for a while."""

    side: ClassVar[Side] = "remote"


class ToolError(PhonebridgeError):
    """A business handler failed or refused; its message is what the model is told.

    Next: the model gets it as the tool's error response; the call goes on."""

    side: ClassVar[Side] = "local"


class ToolArgumentError(ToolError):
    """The model called a tool with arguments that do not fit its declared parameters.

    Next: the handler is not run; the model is told what was wrong and may call again."""

    side: ClassVar[Side] = "remote"


class ToolResponseError(ToolError):
    """A handler returned something that cannot be sent to the model (an iterator, or too much).

    Next: the model gets this error as the tool's response instead; the call goes on."""

    side: ClassVar[Side] = "local"


class TwilioApiError(PhonebridgeError):
    """Twilio's REST API refused a request. `status` is the HTTP status (None: no response), `code` Twilio's code.

    Next: after retries for transient failures, the caller decides: hang-up and transfer log it and close
    the stream instead; the CLI prints it and exits 2."""

    side: ClassVar[Side] = "remote"

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
