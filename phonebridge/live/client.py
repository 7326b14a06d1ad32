"""The Gemini client an app's calls share: given by the caller, or built from the SDK's environment.

Part of phonebridge.live, the one subpackage that imports google.genai: phonebridge.server.resources opens
and closes a ModelClient through aiohttp's cleanup_ctx, and each call asks it for the client as it starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google import genai
from google.auth.exceptions import GoogleAuthError
from google.genai import types

from phonebridge.errors import ModelUnavailable

NO_COMPRESSION: dict[str, Any] = {"compression": None}  # reaches websockets.connect through the SDK
SDK_OPTIONS = types.HttpOptions(async_client_args=NO_COMPRESSION)  # the client made from the SDK's environment

GenaiClientOption = genai.Client | Callable[[], genai.Client] | None
"""make_app's `genai_client`: a client, a factory called per call, or None for the SDK's environment."""


class ModelClient:
    """The Gemini client one app's calls share; call it for the client (a call does, as it starts).

    A client or factory given by the caller is handed out as it is and stays the caller's to close. With
    none, it builds ``genai.Client()`` from the SDK's environment (key, GOOGLE_GEMINI_BASE_URL, SSL_CERT_FILE)
    with permessage-deflate declined: base64 audio barely compresses and deflate cost ~12% of our CPU.
    It tries at start-up (``open``); without usable credentials it tries again at each call, which then gets
    ModelUnavailable and its fallback. ``aclose`` closes the async client it built, once.
    """

    def __init__(self, given: GenaiClientOption, http_options: types.HttpOptions | None = None) -> None:
        self._given = given
        self._http_options = http_options
        self.built: genai.Client | None = None
        self.closed = False

    @property
    def owned(self) -> bool:
        """True when this object builds (and so closes) the client."""
        return self._given is None

    def open(self) -> None:
        """Build the client now if it is ours to build; a failure waits for the first call to report it."""
        if self.owned:
            try:
                self()
            except ModelUnavailable:
                pass  # no credentials yet: each call tries again and takes its fallback (the log says why)

    def __call__(self) -> genai.Client:
        if isinstance(self._given, genai.Client):
            return self._given
        if self._given is not None:
            return self._given()
        if self.closed:
            raise ModelUnavailable("the app is shutting down: its Gemini client is closed")
        if self.built is None:
            try:
                self.built = genai.Client(http_options=self._http_options)
            except (ValueError, GoogleAuthError) as exc:  # no usable credentials: the call's fallback runs
                raise ModelUnavailable(f"cannot build the Gemini client: {exc}") from exc
        return self.built

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.built is not None:
            await self.built.aio.aclose()  # the sync client has no session we opened: the SDK closes it on GC
