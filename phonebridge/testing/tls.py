"""A throwaway certificate authority for local TLS servers (the Live emulator, a local bridge).

Real clients verify certificates, so the emulators present one signed by this CA and the client is told to
trust it: in process with `client_context`, or in a subprocess with `SSL_CERT_FILE=ca_file` (the google-genai
SDK builds its WebSocket TLS context from that variable). Nothing here touches the system trust store.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from pathlib import Path

import trustme


class LocalTLS:
    """A test CA and one leaf certificate for `hosts`; `close()` removes the CA file from disk."""

    def __init__(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")) -> None:
        self._ca = trustme.CA(organization_name="phonebridge test CA")
        self._leaf = self._ca.issue_cert(*hosts)
        self._dir = Path(tempfile.mkdtemp(prefix="phonebridge-tls-"))
        self.ca_file = self._dir / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the leaf certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._leaf.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client-side context that trusts only this CA (hostname checks stay on)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self._ca.configure_trust(ctx)
        return ctx

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
