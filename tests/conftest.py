"""Shared fixtures: example projects in temp dirs and real server subprocesses."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "src" / "sqlgate" / "templates" / "shop"
SQLGATE = [sys.executable, "-m", "sqlgate"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for a server subprocess: no user config from the developer's home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLGATE_")}
    env["SQLGATE_CONFIG"] = str(tmp / "no-user-config.yml")
    env["HOME"] = str(tmp)
    env.update(extra)
    return env


_built_shop: Path | None = None


def copy_shop(dest: Path) -> Path:
    """A copy of the example project at `dest` with its database already built (once per test
    process, then copied: a build costs ~0.5 s of CPU at every server start). For tests that need
    a shop to serve; tests of building itself copy EXAMPLE without its data."""
    global _built_shop
    if _built_shop is None:
        root = Path(tempfile.mkdtemp(prefix="sqlgate-shop-"))
        atexit.register(shutil.rmtree, root, True)
        shutil.copytree(EXAMPLE, root / "shop", ignore=shutil.ignore_patterns("data", "__pycache__"))
        subprocess.run([*SQLGATE, "validate", "-p", str(root / "shop")], check=True, capture_output=True,
                       env=isolated_env(root))
        _built_shop = root / "shop" / "data" / "shop.duckdb"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("data", "__pycache__"))
    (dest / "data").mkdir()
    shutil.copy2(_built_shop, dest / "data" / "shop.duckdb")
    return dest


@pytest.fixture(scope="session")
def shop_project(tmp_path_factory) -> Path:
    """A copy of the example project with its database built once per test session."""
    root = tmp_path_factory.mktemp("shop")
    shutil.copytree(EXAMPLE, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("data", "__pycache__"))
    subprocess.run([*SQLGATE, "validate", "-p", str(root)], check=True, capture_output=True,
                   env=isolated_env(root))
    return root


class ServerProcess:
    def __init__(self, proc: subprocess.Popen, url: str, base: str, log: Path):
        self.proc, self.url, self.base, self.log = proc, url, base, log

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(project: Path, tmp: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None, timeout: float = 60, port: int | None = None,
                 cwd: Path | None = None) -> ServerProcess:
    port = port or free_port()
    log = tmp / f"server-{port}.log"
    proc = subprocess.Popen(
        [*SQLGATE, "serve", "-p", str(project), "--transport", "http", "--host", "127.0.0.1",
         "--port", str(port), *(args or [])],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env or isolated_env(tmp), cwd=cwd,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return ServerProcess(proc, f"{base}/mcp", base, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not become healthy:\n{log.read_text()}")


def together(*starts: Callable[[], ServerProcess]) -> list[ServerProcess]:
    """Start several servers at once (each start is a subprocess's CPU-bound imports, so a second one
    overlaps the first on the other core); their ServerProcesses in order. If one fails, the others
    are stopped."""
    with ThreadPoolExecutor(len(starts)) as pool:
        futures = [pool.submit(start) for start in starts]
    failed = next((f.exception() for f in futures if f.exception() is not None), None)
    if failed is not None:
        for f in futures:
            if f.exception() is None:
                stop_server(f.result())
        raise failed
    return [f.result() for f in futures]


def stop_server(server: ServerProcess) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()


@pytest.fixture(scope="session")
def shop_server(shop_project, tmp_path_factory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("server")
    server = start_server(shop_project, tmp)
    yield server
    stop_server(server)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    """(kind, location) of an OAuth state store per backend, for the grant-store and rate-limit tests."""
    from tests.grant_backends import postgres_available, postgres_database

    if request.param == "sqlite":
        yield "sqlite", str(tmp_path / "state" / "oauth.db")
    elif not postgres_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    else:
        with postgres_database() as dsn:
            yield "postgres", dsn
