"""Start the test OpenID provider (tests/idp/server.mjs) for a test, on a free 127.0.0.1 port."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent


def ensure_installed() -> None:
    """`npm ci` once (lockfile-exact); a file lock keeps parallel test processes from racing."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the OIDC provider tests need Node 20+")
    marker = HERE / "node_modules" / "oidc-provider" / "package.json"
    if marker.exists():
        return
    with open(HERE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE, check=True,
                           timeout=300)


class OidcProvider:
    """A running oidc-provider; `issuer`, `port`, `discovery()`; stop() or use as a context manager."""

    def __init__(self, *, redirect_uris: list[str], client_id: str = "sql-mcp",
                 client_secret: str = "sql-mcp-secret", realm: str | None = None,
                 resources: list[str] | None = None, access_token_ttl: int = 600,
                 registration: bool = False, extra_args: list[str] | None = None):
        ensure_installed()
        args = ["node", str(HERE / "server.mjs"), "--port", "0", "--client-id", client_id,
                "--client-secret", client_secret, "--access-token-ttl", str(access_token_ttl)]
        for uri in redirect_uris:
            args += ["--redirect-uri", uri]
        for res in resources or ["urn:sqlgate:unused=opaque"]:
            args += ["--resource", res]
        if realm:
            args += ["--realm", realm]
        if registration:
            args.append("--registration")
        args += extra_args or []
        env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST", "CLIENT_ID", "CLIENT_SECRET")}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"test IdP did not start: {line}{self.proc.stderr.read() if self.proc.stderr else ''}")
        info = json.loads(line[len("READY "):])
        self.issuer: str = info["issuer"]
        self.port: int = info["port"]
        self.client_id, self.client_secret = client_id, client_secret

    def discovery(self) -> dict:
        return httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10).raise_for_status().json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> OidcProvider:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
