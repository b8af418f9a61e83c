"""The JWT verifier against a JWKS endpoint whose keys rotate (served on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from sqlgate.auth.jwt_verifier import SqlgateJWTVerifier

AUD = "http://127.0.0.1:1/mcp"


class JWKSServer:
    def __init__(self):
        self.keys: list[RSAKey] = []
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.hits += 1
                body = json.dumps(KeySet(server.keys).as_dict(private=False)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def _key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


def _token(key: RSAKey, kid: str) -> str:
    now = int(time.time())
    return jwt.encode({"alg": "RS256", "kid": kid}, {"iss": "https://iss.test", "aud": AUD, "sub": "s",
                                                      "exp": now + 60, "scope": "a b"}, key)


@pytest.fixture
def jwks():
    server = JWKSServer()
    yield server
    server.close()


async def test_unknown_kid_refreshes_the_jwks_once(jwks):
    old = _key("old")
    jwks.keys = [old]
    verifier = SqlgateJWTVerifier(algorithms=["RS256"], issuer="https://iss.test", audience=[AUD],
                                  jwks_uri=jwks.url, jwks_min_refresh_seconds=0.2)
    first = await verifier.verify_token(_token(old, "old"))
    assert first is not None and first.scopes == ["a", "b"]
    assert jwks.hits == 1
    assert await verifier.verify_token(_token(old, "old")) is not None
    assert jwks.hits == 1, "a known kid is served from the cache"
    new = _key("new")
    jwks.keys = [old, new]  # the IdP rotates: the new key appears in its JWKS
    time.sleep(0.25)
    assert await verifier.verify_token(_token(new, "new")) is not None
    assert jwks.hits == 2
    # a kid nobody publishes: one re-fetch at most per interval, then refused
    stranger = _key("stranger")
    time.sleep(0.25)
    assert await verifier.verify_token(_token(stranger, "stranger")) is None
    assert await verifier.verify_token(_token(stranger, "stranger")) is None
    assert jwks.hits == 3
