"""Client ID Metadata Documents (MCP 2025-11-25): a client whose client_id is the URL of its
metadata logs in without registering — with the official mcp client and by hand — while documents
that break the redirect policy, are too large or too slow are refused, and the fetch never reaches
a loopback or private address unless the development switch allows the loopback interface.

The documents are served by a real local HTTP(S) server (a self-signed certificate for https);
the login runs against the real OIDC provider.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.auth_support import MemoryTokenStorage, call_tool, oauth_client, start_auth_server
from tests.browser import Browser
from tests.conftest import stop_server
from tests.test_auth_flows import _manual_code_flow, bearer_call, drop_stack, make_stack, result_of
from tests.test_auth_server import GITHUB

REDIRECT = "http://127.0.0.1:45970/callback"


class DocServer:
    """Serves client metadata documents on 127.0.0.1; `docs` maps a path to (body, delay seconds)."""

    def __init__(self, tls_dir=None):
        self.docs: dict[str, tuple[bytes, float]] = {}
        self.hits: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.hits.append(self.path)
                body, delay = owner.docs.get(self.path, (b"", 0.0))
                if not body:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if delay:  # a slow server: the headers now, the body much later
                        time.sleep(delay)
                    self.wfile.write(body)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls_dir is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self_signed(tls_dir))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def add(self, path: str, redirect_uris: list[str], delay: float = 0.0, **extra) -> str:
        client_id = self.base + path
        doc = {"client_id": client_id, "client_name": "Metadata Client", "redirect_uris": redirect_uris,
               "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
               "token_endpoint_auth_method": "none", **extra}
        self.docs[path] = (json.dumps(doc).encode(), delay)
        return client_id

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def self_signed(directory) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@pytest.fixture(scope="module")
def docs():
    server = DocServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    built = make_stack("oidc", tmp_path_factory.mktemp("cimd"),
                       cimd={"allow_loopback": True, "timeout_seconds": 1.5, "max_document_bytes": 4096})
    yield built
    drop_stack(built)


def _authorize(base: str, client_id: str, redirect: str = REDIRECT) -> httpx.Response:
    return httpx.get(f"{base}/authorize", params={
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": "s",
        "scope": "sqlgate:access", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256"}, timeout=30)


def test_metadata_advertises_cimd(stack):
    meta = httpx.get(f"{stack['server'].base}/.well-known/oauth-authorization-server").json()
    assert meta["client_id_metadata_document_supported"] is True
    assert "none" in meta["token_endpoint_auth_methods_supported"]


def test_hand_driven_pkce_login_with_a_metadata_url_client_id(stack, docs):
    base = stack["server"].base
    client_id = docs.add("/clients/hand.json", [REDIRECT])
    r = _manual_code_flow(base, client_id, REDIRECT, "sqlgate:access", user="bob")
    assert r.status_code == 200, r.text
    tokens = r.json()
    ok = bearer_call(stack["server"].url, tokens["access_token"])
    assert result_of(ok)["result"]["structuredContent"]["result"]["username"] == "bob"
    fresh = httpx.post(f"{base}/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                              "refresh_token": tokens["refresh_token"]})
    assert fresh.status_code == 200, fresh.text
    # fetched once, then served from the cache
    assert docs.hits.count("/clients/hand.json") == 1
    # nothing was registered for it
    assert "accepted (Metadata Client" in stack["server"].logs()


def test_official_client_logs_in_with_a_metadata_url(stack, tmp_path):
    """The mcp SDK's OAuthClientProvider with client_metadata_url (it insists on https): served
    over TLS on loopback, which the development switch allows (certificate not verified)."""
    tls = DocServer(tls_dir=tmp_path)
    try:
        client_id = tls.add("/mcp/client-metadata.json", [REDIRECT])
        url = stack["server"].url
        storage = MemoryTokenStorage()
        browser = Browser("alice", "alice-password")
        provider = oauth_client(url, browser, storage, redirect=REDIRECT)
        provider.context.client_metadata_url = client_id
        res = anyio.run(call_tool, url, provider, "whoami")
        browser.close()
        assert not res.is_error, res.content
        assert res.structured_content["result"]["username"] == "alice"
        assert storage.client.client_id == client_id, "no dynamic registration happened"
        assert tls.hits == ["/mcp/client-metadata.json"]
    finally:
        tls.stop()


@pytest.mark.parametrize(("uris", "why"), [
    (["https://evil.example/callback"], "is not allowed by this server"),
    ([REDIRECT, "http://192.168.1.5:8080/cb"], "is not allowed by this server"),
    (["http://127.0.0.1:45970/callback#frag"], "fragment"),
    ([f"http://127.0.0.1:{4000 + i}/cb" for i in range(11)], "at most 10"),
])
def test_document_breaking_the_redirect_policy_is_refused(stack, docs, uris, why):
    path = f"/bad/{abs(hash(tuple(uris)))}.json"
    client_id = docs.add(path, uris)
    r = _authorize(stack["server"].base, client_id, uris[0])
    assert r.status_code == 400 and "location" not in r.headers, r.text
    assert why in stack["server"].logs()


def test_redirect_must_be_one_the_document_lists(stack, docs):
    client_id = docs.add("/clients/listed.json", [REDIRECT])
    r = _authorize(stack["server"].base, client_id, "http://127.0.0.1:45971/other")
    assert r.status_code == 400 and "location" not in r.headers


def test_oversize_and_slow_documents_are_refused(stack, docs):
    big = docs.add("/clients/big.json", [REDIRECT], client_uri="https://client.example/" + "a" * 5000)
    r = _authorize(stack["server"].base, big)
    assert r.status_code == 400 and "location" not in r.headers
    assert "larger than 4096 bytes" in stack["server"].logs()
    slow = docs.add("/clients/slow.json", [REDIRECT], delay=6)
    started = time.monotonic()
    r = _authorize(stack["server"].base, slow)
    assert r.status_code == 400 and "location" not in r.headers
    assert time.monotonic() - started < 4, "the fetch is cut at timeout_seconds"
    assert "took longer than 1.5 s" in stack["server"].logs()


def test_without_the_switch_loopback_and_private_addresses_are_never_fetched(tmp_path, docs):
    server = start_auth_server(tmp_path, GITHUB)
    try:
        meta = httpx.get(f"{server.base}/.well-known/oauth-authorization-server").json()
        assert meta["client_id_metadata_document_supported"] is True
        before = len(docs.hits)
        http_id = docs.add("/clients/local.json", [REDIRECT])
        port = docs.base.rsplit(":", 1)[1]
        for client_id in (http_id, f"https://127.0.0.1:{port}/clients/local.json",
                          f"https://localhost:{port}/clients/local.json", "https://10.1.2.3/client.json",
                          "https://169.254.169.254/latest/meta-data.json", "https://[::1]/client.json"):
            r = _authorize(server.base, client_id)
            assert r.status_code == 400 and "location" not in r.headers, (client_id, r.text)
        assert len(docs.hits) == before, "no request reached the loopback document server"
        assert "blocked IP address" in server.logs()
    finally:
        stop_server(server)


def test_new_documents_count_against_the_registration_rate_limit(tmp_path, docs):
    """A URL client id is a registration that skips /register: fetching new documents is limited per
    address like registering, in the same shared counter; cached documents are not counted."""
    server = start_auth_server(tmp_path, {**GITHUB, "cimd": {"allow_loopback": True},
                                          "registration": {"rate_limit": 3, "rate_window_seconds": 120}})
    try:
        ids = [docs.add(f"/limit/{i}.json", [REDIRECT]) for i in range(4)]
        assert [_authorize(server.base, cid).status_code for cid in ids[:3]] == [302, 302, 302]
        assert _authorize(server.base, ids[0]).status_code == 302, "a cached document is not a new registration"
        hits = len(docs.hits)
        r = _authorize(server.base, ids[3])
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 120, r.text
        assert len(docs.hits) == hits, "refused before anything was fetched"
        body = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
        assert httpx.post(f"{server.base}/register", json=body).status_code == 429, "one counter for both"
        assert "client metadata documents from 127.0.0.1 exceed 3 per 120 s" in server.logs()
    finally:
        stop_server(server)
