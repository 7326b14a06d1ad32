"""phonebridge's errors, one small hierarchy.

Each error says who broke the contract (the peer, our user, or the environment) and what happens next::

    PhonebridgeError
    ├── ProtocolError                a peer sent what its protocol does not allow
    │   ├── TwilioProtocolError      Twilio's side (a Media Streams frame): the frame is dropped and
    │   │                            counted; the call goes on unless the stream can no longer be trusted
    │   └── ModelProtocolError       the Live service: the model connection is replaced or the call ends
    ├── SignatureError               a request not signed by Twilio: answered 403, no session opened
    ├── ConfigError                  our user's configuration is wrong: refused at start, before any call
    ├── ModelUnavailable             the Live service cannot be reached: the call falls back (TwiML)
    ├── ToolError                    a business handler failed: the model is told, the call goes on
    │   └── ToolArgumentError        the model's arguments do not fit the tool's signature: it may retry
    └── TwilioApiError               Twilio's REST API refused a request (after retries for transient failures)
"""

from __future__ import annotations


class PhonebridgeError(Exception):
    """Base of every error phonebridge raises on purpose."""


class ProtocolError(PhonebridgeError):
    """A peer broke its protocol. `reason` is a short machine-readable tag for counting and logs."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class TwilioProtocolError(ProtocolError):
    """Twilio (or whoever holds the media socket) sent a frame we cannot accept."""


class ModelProtocolError(ProtocolError):
    """The Live service sent something we cannot interpret."""


class SignatureError(PhonebridgeError):
    """A request's X-Twilio-Signature is missing or wrong."""


class ConfigError(PhonebridgeError):
    """The user's settings or agent are invalid; raised at start-up, never mid-call."""


class ModelUnavailable(PhonebridgeError):
    """The Live service could not be reached or refused the session."""


class ToolError(PhonebridgeError):
    """A business handler failed; its message is what the model is told."""


class ToolArgumentError(ToolError):
    """The model called a tool with arguments that do not fit its declared parameters."""


class ToolResponseError(ToolError):
    """A handler returned something that cannot be sent to the model (an iterator, or too much)."""


class TwilioApiError(PhonebridgeError):
    """Twilio's REST API refused a request. `status` is the HTTP status (None: no response), `code` Twilio's code."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class LocalProtocolError(PhonebridgeError):
    """We broke our own rules (a bug): a move the call core's state table does not allow. Loud in tests."""
