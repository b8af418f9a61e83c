#!/usr/bin/env python3
"""What authentication costs per call: sqlgate with no auth, a JWT, and an OAuth-proxy token, side by side.

    .venv/bin/python benchmarks/auth_cost.py [--rounds 5] [--calls 400] [--concurrency 1,8] [--baseline-src DIR]

Three servers of the `ping` project (benchmarks/projects.py) over streamable HTTP, one process each:
- `none`: no auth;
- `jwt`: resource-server mode, an HS256 JWT bound to the server's resource URL (as benchmarks/run.py);
- `proxy`: sqlgate as the authorization server in front of the fake GitHub (tests/fakes), the
  token obtained by a real login — the official mcp client, DCR, PKCE, consent, the provider's
  login form, code exchange — so it goes through the grant store like any user's.

Rounds alternate the order of the servers (ABC, CBA, …) so drift hits all alike. Reported per
concurrency level: the server's CPU ms per call (user+system of the whole process, warm-up calls
included; far steadier than calls/s on a shared machine), median and spread (min-max) over rounds,
and each auth mode's extra CPU per call over `none`. With `--baseline-src DIR` the same three
servers also run from another checkout's src/ (first on PYTHONPATH), in the same rounds: before
and after a change, measured side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the tests package: fake provider, browser, official client

from harness import HOST, bench_calls, isolated_env, running  # noqa: E402
from projects import ping_project  # noqa: E402

PY = sys.executable
DEFAULT_BENCH_TOOL = Path("/work/shared/tools/bench.py")
JWT_SECRET = "benchmark-shared-secret-0123456789abcdef"
STATE_KEY = "benchmark-state-key-0123456789abcdef"
MODES = ("none", "jwt", "proxy")


def serve_cmd(project: Path):
    return lambda port: [PY, "-m", "sqlgate", "serve", "-p", str(project), "--transport", "http", "--host", HOST,
                         "--port", str(port), "--log-level", "warning"]


def jwt_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "SQLGATE_AUTH_MODE": "jwt", "SQLGATE_AUTH_SECRET": JWT_SECRET, "SQLGATE_AUTH_ALGORITHM": "HS256",
            "SQLGATE_AUTH_ISSUER": "https://bench.invalid"}


def jwt_token(port: int) -> str:
    from joserfc import jwt
    from joserfc.jwk import OctKey

    claims = {"iss": "https://bench.invalid", "aud": f"http://{HOST}:{port}/mcp", "sub": "bench",
              "preferred_username": "bench", "exp": int(time.time()) + 3600}
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(JWT_SECRET.encode()))


def proxy_env(env: dict[str, str], github_url: str, state: Path) -> dict[str, str]:
    return {**env, "SQLGATE_AUTH_MODE": "proxy", "SQLGATE_AUTH_PROVIDER": "github",
            "SQLGATE_AUTH_UPSTREAM_CLIENT_ID": "bench-client", "SQLGATE_AUTH_UPSTREAM_CLIENT_SECRET": "bench-secret",
            "SQLGATE_AUTH_UPSTREAM_AUTHORIZATION_ENDPOINT": f"{github_url}/login/oauth/authorize",
            "SQLGATE_AUTH_UPSTREAM_TOKEN_ENDPOINT": f"{github_url}/login/oauth/access_token",
            "SQLGATE_AUTH_UPSTREAM_API_BASE_URL": github_url,
            "SQLGATE_AUTH_STATE_PATH": str(state), "SQLGATE_AUTH_ENCRYPTION_KEY": STATE_KEY,
            "SQLGATE_AUTH_REGISTRATION_RATE_LIMIT": "0"}


def proxy_login(url: str) -> str:
    """alice logs in through the official mcp client; her sqlgate access token."""
    import anyio

    from tests.auth_support import MemoryTokenStorage, call_tool, oauth_client
    from tests.browser import Browser

    storage, browser = MemoryTokenStorage(), Browser("alice", "alice-password")
    try:
        result = anyio.run(call_tool, url, oauth_client(url, browser, storage), "ping")
    finally:
        browser.close()
    if result.is_error or storage.tokens is None:
        raise RuntimeError(f"login against the proxy failed: {result.content}")
    return storage.tokens.access_token


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def start_servers(stack: ExitStack, work: Path, modes: tuple[str, ...], trees: dict[str, Path | None]) -> dict:
    """{(tree, mode): Server}: each mode of each source tree (None: this checkout) on its own port."""
    from tests.fakes.github import FakeGitHub

    github = stack.enter_context(FakeGitHub("bench-client", "bench-secret")) if "proxy" in modes else None
    servers = {}
    for tree, src in trees.items():
        env = isolated_env(work, {"PYTHONPATH": str(src)} if src else None)
        for mode in modes:
            name = f"{mode}-{tree}"
            project = ping_project(work / name)
            if mode == "none":
                server = stack.enter_context(running(serve_cmd(project), env, work / f"{name}.log"))
            elif mode == "jwt":
                server = stack.enter_context(running(serve_cmd(project), jwt_env(env), work / f"{name}.log"))
                server.token = jwt_token(server.port)
            else:
                assert github is not None
                server = stack.enter_context(running(serve_cmd(project), proxy_env(env, github.base_url,
                                                                                   work / f"{name}.db"),
                                                     work / f"{name}.log"))
                # the redirect URI the app registered names sqlgate's port, known once it runs
                github.redirect_uris.append(f"http://{HOST}:{server.port}/github/callback")
                server.token = proxy_login(server.mcp_url)
            servers[(tree, mode)] = server
    return servers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=400, help="calls per bench run (per concurrency level)")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--modes", default=",".join(MODES), help="which servers, of " + ", ".join(MODES))
    ap.add_argument("--baseline-src", type=Path, help="src/ directory of another checkout (e.g. from `git archive "
                                                      "BASE | tar -x -C DIR`): its servers run in the same rounds")
    ap.add_argument("--bench-tool", type=Path, default=DEFAULT_BENCH_TOOL)
    opts = ap.parse_args()
    levels = [int(c) for c in opts.concurrency.split(",")]
    modes = tuple(m for m in MODES if m in opts.modes.split(","))
    trees: dict[str, Path | None] = {"this": None}
    if opts.baseline_src:
        trees = {"baseline": opts.baseline_src.resolve(), **trees}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        servers = start_servers(stack, Path(tmp), modes, trees)
        for server in servers.values():  # untimed: one-off lazy imports and caches
            bench_calls(opts.bench_tool, server, "ping", {}, 100, 1)
        cpu: dict[tuple, list[float]] = {(k, c): [] for k in servers for c in levels}
        rate: dict[tuple, list[float]] = {(k, c): [] for k in servers for c in levels}
        order = list(servers)
        for i in range(opts.rounds):
            for key in (order if i % 2 == 0 else order[::-1]):
                for c in levels:
                    run = bench_calls(opts.bench_tool, servers[key], "ping", {}, opts.calls, c)
                    cpu[(key, c)].append(run["cpu_ms"])
                    rate[(key, c)].append(run["calls_per_s"])
            print(f"[auth_cost] round {i + 1}/{opts.rounds} done", file=sys.stderr, flush=True)
    print(f"CPU ms per call of the server, median (min-max) over {opts.rounds} rounds of {opts.calls} calls\n")
    print("| source | auth | " + " | ".join(f"c={c} CPU ms/call | c={c} +ms over none | c={c} calls/s"
                                            for c in levels) + " |")
    print("|---|---|" + "---|---|---|" * len(levels))
    for tree, mode in order:
        cells = []
        for c in levels:
            mine = statistics.median(cpu[((tree, mode), c)])
            none = cpu.get(((tree, "none"), c))
            extra = "—" if mode == "none" or not none else f"{mine - statistics.median(none):+.2f}"
            cells += [summary(cpu[((tree, mode), c)]), extra, f"{statistics.median(rate[((tree, mode), c)]):.0f}"]
        print(f"| {tree} | {mode} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
