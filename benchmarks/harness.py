"""Start servers as subprocesses on free loopback ports, wait for health, always stop them."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

HOST = "127.0.0.1"
MIB = 1024 * 1024


class ServerFailed(RuntimeError):
    pass


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    startup_s: float  # spawn -> first 200 from /healthz
    token: str | None = None  # bearer token the load generator sends, for servers with auth on

    @property
    def mcp_url(self) -> str:
        return f"http://{HOST}:{self.port}/mcp"

    def rss_mib(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / MIB

    def cpu_s(self) -> float:
        """User + system CPU of the server process, all threads."""
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system


def free_port() -> int:
    # the kernel picks an unused port; the tiny race until the server binds it is handled by retrying
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def isolated_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment minus anything that could reconfigure sqlgate, with a private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLGATE_", "FASTMCP_"))}
    env.update({
        "HOME": str(home),
        "SQLGATE_CONFIG": str(home / "no-such-config.yml"),  # no user config / profile leaks in
        "FASTMCP_CHECK_FOR_UPDATES": "off",  # never a network call, for either server
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_healthy(proc: subprocess.Popen, port: int, deadline: float, log: Path) -> None:
    url = f"http://{HOST}:{port}/healthz"
    with httpx.Client(timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                raise ServerFailed(f"exited with code {proc.returncode} before answering:\n{log_tail(log)}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.perf_counter() > deadline:
                raise ServerFailed(f"no 200 from {url} in time:\n{log_tail(log)}")
            time.sleep(0.01)  # fine-grained enough for startup times in the 1 s range


def start(make_cmd: Callable[[int], list[str]], env: dict[str, str], log: Path,
          timeout: float = 60.0, attempts: int = 3) -> Server:
    for _ in range(attempts):
        port = free_port()
        with log.open("w") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(make_cmd(port), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            wait_healthy(proc, port, t0 + timeout, log)
            return Server(proc, port, time.perf_counter() - t0)
        except ServerFailed:
            stop(proc)
            if "address already in use" not in log_tail(log).lower():
                raise
        except BaseException:
            stop(proc)
            raise
    raise ServerFailed(f"could not bind a free port in {attempts} attempts")


@contextmanager
def running(make_cmd: Callable[[int], list[str]], env: dict[str, str], log: Path,
            timeout: float = 60.0) -> Iterator[Server]:
    server = start(make_cmd, env, log, timeout)
    try:
        yield server
    finally:
        stop(server.proc)


def bench_calls(bench_tool: Path, server: Server, tool: str, args: dict, calls: int, concurrency: int,
                warmup: int = 20) -> dict:
    """One run of the shared load generator (bench.py) against `server`, plus the server's CPU per
    call (`cpu_ms`, warm-up calls included) — steadier than calls/s on a busy machine."""
    import json
    import sys

    cmd = [sys.executable, str(bench_tool), server.mcp_url, tool, "--args", json.dumps(args), "-n", str(calls),
           "-c", str(concurrency), "--warmup", str(warmup), "--json"]
    if server.token:
        cmd += ["--token", server.token]
    cpu = server.cpu_s()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    cpu = server.cpu_s() - cpu
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or len(rows) != 1:
        raise RuntimeError(f"bench.py against {server.mcp_url} failed: {proc.stderr[-500:]} {rows}")
    out = rows[0]
    out["cpu_ms"] = cpu * 1000 / (out["calls"] + warmup * concurrency)
    return out
