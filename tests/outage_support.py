"""Providers that fail the way real ones do, for the refresh and outage tests.

- FlakyGoogle: the Google-like fake (non-rotating refresh tokens) that can answer refreshes 503,
  hold requests unanswered until released (a hanging IdP; or a slow one: the refresh is received,
  not yet processed), be stopped and started again on the same port with its grants intact.
- Hanging: a socket server that accepts connections and never answers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import anyio

from tests.auth_support import MemoryTokenStorage, call_tool, oauth_client, start_auth_server
from tests.browser import Browser
from tests.conftest import free_port, stop_server
from tests.fakes.base import Reply, _Server
from tests.fakes.providers import FakeGoogle


class FlakyGoogle(FakeGoogle):
    down = False  # refreshes answer 503 temporarily_unavailable
    hold_refresh = False  # refreshes are received and held, unanswered, until `release` (then 503)
    refresh_delay = 0.0  # seconds a refresh takes (a slow provider)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hold_paths: set[str] = set()  # requests to these paths are held the same way
        self.held = threading.Event()  # a request is being held
        self.release = threading.Event()

    def dispatch(self, req):
        refresh = req.form.get("grant_type") == "refresh_token"
        if req.path in self.hold_paths or (self.hold_refresh and refresh):
            self.held.set()
            self.release.wait(60)
            return Reply.json({"error": "temporarily_unavailable"}, 503)
        if refresh and self.refresh_delay:
            time.sleep(self.refresh_delay)
        if self.down and refresh:
            return Reply.json({"error": "temporarily_unavailable", "error_description": "try later"}, 503)
        return super().dispatch(req)

    def refreshes(self) -> int:
        return sum(1 for r in self.seen if r.form.get("grant_type") == "refresh_token")

    def restart(self) -> None:
        """Start again on the same port after stop(), with the same users, codes and tokens."""
        self._server = _Server(("127.0.0.1", self.port), self._handler_class())
        self.start()


def google_auth(fake: FakeGoogle, **auth) -> dict:
    base = fake.base_url
    return {"provider": "google",
            "google": {"client_id": "google-client", "client_secret": "google-secret",
                       "auth_url": f"{base}/o/oauth2/v2/auth", "token_url": f"{base}/token",
                       "userinfo_url": f"{base}/v1/userinfo", "revoke_url": f"{base}/revoke",
                       **auth.pop("google", {})},
            **auth}


def login_alice(server) -> MemoryTokenStorage:
    """alice logged in by the official client (her own client registration and grant)."""
    storage = MemoryTokenStorage()
    res = anyio.run(call_tool, server.url, oauth_client(server.url, Browser("alice", "alice-password"), storage),
                    "whoami")
    assert not res.is_error, res.content
    return storage


@contextlib.contextmanager
def google_stack(tmp_path, login: bool = True, **auth) -> Iterator[tuple[FlakyGoogle, object, MemoryTokenStorage]]:
    """(fake, server, storage): a sqlgate server on the fake, alice logged in by the official client."""
    port = free_port()
    with FlakyGoogle("google-client", "google-secret", [f"http://127.0.0.1:{port}/google/callback"]) as fake:
        server = start_auth_server(tmp_path, google_auth(fake, **auth), port=port)
        try:
            yield fake, server, login_alice(server) if login else MemoryTokenStorage()
        finally:
            fake.release.set()
            stop_server(server)


class Hanging:
    """Accepts TCP connections on 127.0.0.1 and never answers (until stop())."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read from or written to

    def stop(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()
