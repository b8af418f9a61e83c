"""Plumbing shared by the benchmarks.

- servers: start subprocesses on free loopback ports (one or many at once), wait until they answer,
  always stop them; their CPU time and RSS (the whole process tree, for `--workers`)
- commands of every server kind: the raw limit, bare FastMCP, sqlgate (no auth, JWT, OAuth proxy)
- load: one run of the load generator (loadgen.py) with the server CPU it cost, rounds that alternate
  between servers, medians and spread
- the OAuth proxy: a sqlgate proxying to a local fake GitHub, and a token from a real login
  (`oauth_proxy_sqlgate`, or its parts `github_fake` / `oauth_proxy_env` / `oauth_token`)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

HOST = "127.0.0.1"
MIB = 1024 * 1024
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable  # the venv's python: sqlgate, fastmcp and duckdb are importable there
LOADGEN = HERE / "loadgen.py"
LOAD_METRICS = ("calls_per_s", "p50_ms", "p99_ms", "cpu_ms")

Command = Callable[[int], list[str]]  # port -> argv


def progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- servers

class ServerFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Spec:
    """How to start one server and how to tell that it is up."""
    cmd: Command
    env: dict[str, str]
    log: Path
    ready_path: str = "/healthz"  # GET until 200
    ready_any: bool = False  # any HTTP answer means up (MXCP has no health route)
    cwd: Path | None = None
    timeout: float = 60.0


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    startup_s: float  # spawn -> first 200 from /healthz
    token: str | None = None  # bearer token the load generator sends, for servers with auth on

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp"

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def rss_mib(self) -> float:
        """RSS of the server process itself (of a `--workers` server: the supervisor's)."""
        return psutil.Process(self.proc.pid).memory_info().rss / MIB

    def cpu_s(self) -> float:
        """User + system CPU of the server and its child processes (uvicorn workers), all threads."""
        total = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return total


def free_port() -> int:
    # the kernel picks an unused port; the tiny race until the server binds it is handled by retrying
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def isolated_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment minus anything that could reconfigure sqlgate, with a private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLGATE_", "FASTMCP_", "MXCP_"))}
    env.update({
        "HOME": str(home),
        "SQLGATE_CONFIG": str(home / "no-such-config.yml"),  # no user config / profile leaks in
        "FASTMCP_CHECK_FOR_UPDATES": "off",  # never a network call, for either server
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    # a supervisor killed before it stopped its uvicorn workers leaves them behind
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=5)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class _Launched:
    spec: Spec
    proc: subprocess.Popen
    port: int
    t0: float


def _launch(spec: Spec) -> _Launched:
    port = free_port()
    with spec.log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(spec.cmd(port), env=spec.env, cwd=spec.cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    return _Launched(spec, proc, port, t0)


def _await_ready(launched: _Launched, timeout: float | None = None) -> Server:
    spec, proc, port = launched.spec, launched.proc, launched.port
    url = f"http://{HOST}:{port}{spec.ready_path}"
    timeout = timeout or spec.timeout
    deadline = launched.t0 + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                raise ServerFailed(f"exited with code {proc.returncode} before answering:\n{log_tail(spec.log)}")
            try:
                status = client.get(url).status_code
                if status == 200 or spec.ready_any:
                    return Server(proc, port, time.perf_counter() - launched.t0)
            except httpx.TransportError:
                pass  # not listening yet
            if time.perf_counter() > deadline:
                raise ServerFailed(f"no answer from {url} in {timeout:g} s:\n{log_tail(spec.log)}")
            time.sleep(0.01)  # fine-grained enough for startup times in the 1 s range


def _port_taken(spec: Spec) -> bool:
    return "address already in use" in log_tail(spec.log).lower()


def start_spec(spec: Spec, attempts: int = 3) -> Server:
    for _ in range(attempts):
        launched = _launch(spec)
        try:
            return _await_ready(launched)
        except ServerFailed:
            stop(launched.proc)
            if not _port_taken(spec):
                raise
        except BaseException:
            stop(launched.proc)
            raise
    raise ServerFailed(f"could not bind a free port in {attempts} attempts")


def start(make_cmd: Command, env: dict[str, str], log: Path, timeout: float = 60.0, attempts: int = 3) -> Server:
    return start_spec(Spec(make_cmd, env, log, timeout=timeout), attempts)


@contextmanager
def running(make_cmd: Command, env: dict[str, str], log: Path, timeout: float = 60.0) -> Iterator[Server]:
    server = start(make_cmd, env, log, timeout)
    try:
        yield server
    finally:
        stop(server.proc)


@contextmanager
def running_all(specs: dict[str, Spec], seconds_each: float = 20.0) -> Iterator[dict[str, Server]]:
    """Start every server at once, wait for all, stop all on the way out. Start-up is CPU-bound
    (imports), so N servers on 2 cores take about N/2 times as long: each may take `seconds_each` x N
    (at least its own timeout). A server whose port was taken meanwhile is started again alone."""
    launched = {name: _launch(spec) for name, spec in specs.items()}
    servers: dict[str, Server] = {}
    try:
        for name, item in launched.items():
            try:
                servers[name] = _await_ready(item, max(item.spec.timeout, seconds_each * len(specs)))
            except ServerFailed:
                stop(item.proc)
                if not _port_taken(item.spec):
                    raise ServerFailed(f"{name}: {sys.exc_info()[1]}") from None
                servers[name] = start_spec(item.spec)
        yield servers
    finally:
        for item in launched.values():
            stop(item.proc)
        for server in servers.values():
            stop(server.proc)


# ---------------------------------------------------------------- commands of the servers compared

def sqlgate_cmd(project: Path, workers: int = 1) -> Command:
    def cmd(port: int) -> list[str]:
        argv = [PY, "-m", "sqlgate", "serve", "-p", str(project), "--transport", "http", "--host", HOST,
                "--port", str(port), "--log-level", "warning"]
        return argv + (["--workers", str(workers)] if workers > 1 else [])
    return cmd


def bare_cmd(db: Path, seed: Path) -> Command:
    return lambda port: [PY, str(HERE / "bare_fastmcp.py"), "--db", str(db), "--seed", str(seed), "--host", HOST,
                         "--port", str(port)]


def sdk_cmd(db: Path, seed: Path) -> Command:
    """The `ping` tool on the mcp SDK's low-level Server (bare_sdk.py): the floor under FastMCP."""
    return lambda port: [PY, str(HERE / "bare_sdk.py"), "--db", str(db), "--seed", str(seed), "--host", HOST,
                         "--port", str(port)]


def raw_cmd(db: Path, seed: Path, typed: bool = False) -> Command:
    """The raw limit (raw_mcp.py); `typed`: the thin path, tools/call through the mcp SDK's types."""
    return lambda port: [PY, str(HERE / "raw_mcp.py"), "--db", str(db), "--seed", str(seed), "--host", HOST,
                         "--port", str(port)] + (["--typed"] if typed else [])


JWT_SECRET = "benchmark-shared-secret-0123456789abcdef"
JWT_ISSUER = "https://bench.invalid"


def jwt_env(env: dict[str, str]) -> dict[str, str]:
    """sqlgate verifying an HS256 JWT on every call (audience: its own MCP URL)."""
    return {**env, "SQLGATE_AUTH_MODE": "jwt", "SQLGATE_AUTH_SECRET": JWT_SECRET, "SQLGATE_AUTH_ALGORITHM": "HS256",
            "SQLGATE_AUTH_ISSUER": JWT_ISSUER}


def jwt_token(server: Server) -> str:
    from joserfc import jwt
    from joserfc.jwk import OctKey

    claims = {"iss": JWT_ISSUER, "aud": server.mcp_url, "sub": "bench", "preferred_username": "bench",
              "exp": int(time.time()) + 3600}
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(JWT_SECRET.encode()))


# ---------------------------------------------------------------- the OAuth proxy with a real login

GITHUB_APP = ("bench-github-client", "bench-github-secret")  # the fake's OAuth app, as sqlgate knows it
LOGIN_REDIRECT = "http://127.0.0.1:45997/callback"  # the MCP client's; never listened on, the login stops there


def _tests_importable() -> None:
    # the fakes and the headless browser live in tests/ (stdlib + httpx only)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


@contextmanager
def github_fake() -> Iterator[Any]:
    """A faithful fake of GitHub's OAuth app and API (tests/fakes), served from a thread of this process."""
    _tests_importable()
    from tests.fakes.github import FakeGitHub

    with FakeGitHub(*GITHUB_APP) as fake:
        yield fake


def oauth_proxy_env(work: Path, env: dict[str, str], fake: Any, name: str = "oauth",
                    project_name: str = "bench") -> dict[str, str]:
    """`env` plus a user config making `project_name` an OAuth proxy to `fake` (its own state file)."""
    base = fake.base_url
    auth = {"provider": "github",
            "github": {"client_id": GITHUB_APP[0], "client_secret": GITHUB_APP[1],
                       "auth_url": f"{base}/login/oauth/authorize", "token_url": f"{base}/login/oauth/access_token",
                       "api_base_url": base},
            "persistence": {"path": str(work / f"{name}-state.db")}}
    config = work / f"{name}-config.yml"
    # JSON is YAML: no yaml import needed here
    config.write_text(json.dumps({"projects": {project_name: {"profiles": {"default": {"auth": auth}}}}}))
    return {**env, "SQLGATE_CONFIG": str(config)}


def oauth_token(server: Server, fake: Any, user: str = "alice") -> str:
    """An access token of the OAuth-proxy `server`, from the whole flow a client goes through:
    registration, /authorize, sqlgate's consent page, the provider's login form, code exchange (PKCE)."""
    import base64
    import hashlib
    import secrets

    _tests_importable()
    from tests.browser import Browser, query_of

    callback = f"{server.base}/github/callback"  # the provider redirects here, to sqlgate
    if callback not in fake.redirect_uris:
        fake.redirect_uris.append(callback)
    reg = httpx.post(f"{server.base}/register", json={"redirect_uris": [LOGIN_REDIRECT],
                                                       "token_endpoint_auth_method": "none"})
    reg.raise_for_status()
    client_id = reg.json()["client_id"]
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    url = httpx.URL(f"{server.base}/authorize", params={
        "response_type": "code", "client_id": client_id, "redirect_uri": LOGIN_REDIRECT, "state": "bench",
        "scope": "sqlgate:access", "code_challenge": challenge, "code_challenge_method": "S256"})
    browser = Browser(user, f"{user}-password")
    try:
        code = query_of(browser.run(str(url), LOGIN_REDIRECT))["code"]
    finally:
        browser.close()
    tokens = httpx.post(f"{server.base}/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": LOGIN_REDIRECT, "client_id": client_id,
        "code_verifier": verifier})
    if tokens.status_code != 200:
        raise ServerFailed(f"token exchange failed: HTTP {tokens.status_code} {tokens.text[:300]}")
    return tokens.json()["access_token"]


@contextmanager
def oauth_proxy_sqlgate(project: Path, work: Path, env: dict[str, str], log: Path, workers: int = 1,
                        name: str = "oauth") -> Iterator[Server]:
    """A sqlgate serving `project` as an OAuth proxy to a fake GitHub, `server.token` from a real login."""
    with github_fake() as fake, \
            running(sqlgate_cmd(project, workers), oauth_proxy_env(work, env, fake, name), log) as server:
        server.token = oauth_token(server, fake)
        yield server


# ---------------------------------------------------------------- load

def bench_calls(bench_tool: Path, server: Server, tool: str, args: dict, calls: int, concurrency: int,
                warmup: int = 20) -> dict:
    """One run of the load generator against `server`, plus the server's CPU per call (`cpu_ms`,
    warm-up calls and session set-up included, which every server pays alike) — CPU per call barely
    moves when other work shares the machine, unlike calls/s."""
    cmd = [PY, str(bench_tool), server.mcp_url, tool, "--args", json.dumps(args), "-n", str(calls),
           "-c", str(concurrency), "--warmup", str(warmup), "--json"]
    if server.token:
        cmd += ["--token", server.token]
    cpu, own = server.cpu_s(), _children_cpu_s()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    cpu, own = server.cpu_s() - cpu, _children_cpu_s() - own
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # the load generator exits 1 when any call failed: a benchmark of failing calls is meaningless
    if proc.returncode != 0 or len(rows) != 1:
        first = rows[0].get("first_error") if rows else None
        raise RuntimeError(f"load generator against {server.mcp_url} ({tool}) failed (exit {proc.returncode}): "
                           f"{first or proc.stderr.strip()[-800:]}")
    out = rows[0]
    out["cpu_ms"] = round(cpu * 1000 / (out["calls"] + warmup * concurrency), 3)
    out["loadgen_cpu_s"] = round(own, 4)  # the load generator's own CPU, its start-up included
    return out


def loadgen_cpu_ms(bench_tool: Path, server: Server, concurrency: int = 8) -> float:
    """The load generator's CPU per call, without its start-up: the difference between a short and a
    long run against `server`. On a machine with few cores it bounds what a second worker can win."""
    short, long = (bench_calls(bench_tool, server, "ping", {}, n, concurrency) for n in (200, 1200))
    return round((long["loadgen_cpu_s"] - short["loadgen_cpu_s"]) * 1000 / (long["calls"] - short["calls"]), 3)


def _children_cpu_s() -> float:
    """User + system CPU of this process's reaped children (the load generator, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Case:
    """One load scenario: a tool of one of the running servers at one concurrency."""
    label: str
    server: str
    tool: str = "ping"
    args: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 1
    calls: int | None = None  # None: the run's default
    warmup: int = 20  # calls per client before timing starts


def warm_up(cases: Sequence[Case], servers: dict[str, Server], calls: int = 30) -> None:
    """Untimed calls of each (server, tool): the first calls pay lazy imports and caches. Run in this
    process (the load generator's own code), sparing a load generator start per pair."""
    import asyncio

    import loadgen

    async def each() -> None:
        for key, tool, args in {(c.server, c.tool, json.dumps(c.args)): (c.server, c.tool, c.args)
                                for c in cases}.values():
            server = servers[key]
            out = await loadgen.run_scenario(server.mcp_url, tool, args, server.token, calls, 1, 0, False, 60.0)
            if out["errors"]:
                raise RuntimeError(f"warm-up of {key} ({tool}) failed: {out['first_error']}")

    asyncio.run(each())


def alternate_rounds(cases: Sequence[Case], servers: dict[str, Server], rounds: int, calls: int,
                     load_tool: Path = LOADGEN,
                     after_round: Callable[[], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every case once per round; odd rounds in reverse order (ABBA), so slow drift of a shared machine
    (other tenants, thermal, page cache) hits every server alike. Returns the runs per case label."""
    runs: dict[str, list[dict[str, Any]]] = {c.label: [] for c in cases}
    for i in range(rounds):
        for case in (cases if i % 2 == 0 else list(reversed(cases))):
            progress(f"round {i + 1}/{rounds}: {case.label}")
            runs[case.label].append(bench_calls(load_tool, servers[case.server], case.tool, case.args,
                                                case.calls or calls, case.concurrency, case.warmup))
        if after_round:
            after_round()
    return runs


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: Sequence[dict[str, Any]], metrics: Sequence[str] = LOAD_METRICS) -> dict[str, dict[str, float]]:
    return {m: stats([r[m] for r in runs]) for m in metrics}


def spread(values: Sequence[float], digits: int = 2) -> str:
    """median (min-max); only the median for a single value."""
    med = f"{statistics.median(values):.{digits}f}"
    if len(values) < 2:
        return med
    return f"{med} ({min(values):.{digits}f}\u2013{max(values):.{digits}f})"  # en dash


# ---------------------------------------------------------------- command lines

def load_args(ap: argparse.ArgumentParser, rounds: int, calls: int) -> argparse.ArgumentParser:
    """The options every load benchmark has."""
    ap.add_argument("--rounds", type=int, default=rounds, help=f"alternating rounds (default {rounds})")
    ap.add_argument("--calls", type=int, default=calls, help=f"calls per case and round (default {calls})")
    ap.add_argument("--load-tool", "--bench-tool", dest="load_tool", type=Path, default=LOADGEN,
                    help="the load generator (default: benchmarks/loadgen.py)")
    return ap


@contextmanager
def workdir() -> Iterator[tuple[Path, dict[str, str]]]:
    """A private temporary directory and a server environment whose HOME it is."""
    with tempfile.TemporaryDirectory(prefix="sqlgate-bench-") as tmp:
        work = Path(tmp)
        yield work, isolated_env(work)
