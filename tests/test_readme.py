"""The README's shell examples, run as written (in a scratch directory, `sqlgate` on PATH).

A section's first ```bash block is split into commands; `serve` lines are started and must answer
/healthz (HTTP) or an MCP initialize (stdio) instead of running forever.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, isolated_env
from tests.readme import bash_block


def shell_env(tmp: Path) -> dict[str, str]:
    env = isolated_env(tmp, COLUMNS="200")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's sqlgate
    return env


def run_command(command: str, cwd: Path, env: dict[str, str]) -> None:
    argv = shlex.split(command)
    if "serve" in argv:
        return check_serve(argv, cwd, env)
    proc = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, command


def check_serve(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    http = "--transport" in argv and argv[argv.index("--transport") + 1] == "http"
    port = free_port()
    if http and "--port" in argv:  # the README's port may be taken on a shared machine
        argv[argv.index("--port") + 1] = str(port)
    elif http:
        argv += ["--port", str(port)]
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        if not http:
            return check_stdio(proc, argv)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{shlex.join(argv)} exited: {proc.stderr.read().decode()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"{shlex.join(argv)} did not start")
    finally:
        proc.terminate()
        proc.wait(10)


def check_stdio(proc: subprocess.Popen, argv: list[str]) -> None:
    """A stdio server answers an MCP initialize on stdout (and stays up)."""
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "readme", "version": "1"}}}
    proc.stdin.write((json.dumps(init) + "\n").encode())
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, f"{shlex.join(argv)} did not answer initialize"
    line = proc.stdout.readline()
    assert line, f"{shlex.join(argv)} exited: {proc.stderr.read().decode()}"
    answer = json.loads(line)
    assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"], answer
    assert proc.poll() is None, f"{shlex.join(argv)} exited after initialize"


def test_quick_start_commands_work_as_written(tmp_path):
    commands = bash_block("## Quick start with your own project")
    assert commands[0].startswith("sqlgate init myproject")
    env = shell_env(tmp_path)
    for command in commands:
        run_command(command, tmp_path, env)
