"""Telemetry: Prometheus /metrics after a known workload (one process, a separate port, two workers),
and OpenTelemetry spans carrying the end user, captured in process by an InMemorySpanExporter."""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sqlgate import metrics
from tests.auth_support import auth_project, start_auth_server
from tests.clients import hs256_bearer, mcp_session
from tests.conftest import free_port, stop_server
from tests.scrape import sample

SECRET = "telemetry-test-shared-secret-0123456789abcdef"
SCRAPE_TOKEN = "scrape-token-0123456789"


def jwt_auth() -> dict:
    return {"jwt": {"secret": SECRET, "algorithms": ["HS256"], "issuer": "https://issuer.test"}}


async def workload(url: str, ok_calls: int) -> None:
    async with mcp_session(url, hs256_bearer(SECRET, url, "alice")) as session:
        for i in range(ok_calls):
            res = await session.call_tool("query", {"sql": f"SELECT {i} AS n"})
            assert not res.is_error, res.content
        refused = await session.call_tool("query", {"sql": "DELETE FROM customers"})
        assert refused.is_error
        missing = await session.call_tool("no_such_tool", {})
        assert missing.is_error


def scrape(url: str, token: str | None = SCRAPE_TOKEN) -> httpx.Response:
    return httpx.get(url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=10)


def test_metrics_after_a_known_workload(tmp_path):
    server = start_auth_server(tmp_path, jwt_auth(), extra_env={"SQLGATE_METRICS": "true",
                                                                "SQLGATE_METRICS_TOKEN": SCRAPE_TOKEN})
    try:
        anyio.run(workload, server.url, 5)
        for bad in ("not-a-jwt", "still-not-a-jwt"):
            assert httpx.post(server.url, headers={"Authorization": f"Bearer {bad}"}, json={}).status_code == 401
        assert scrape(f"{server.base}/metrics", None).status_code == 401  # protected
        assert scrape(f"{server.base}/metrics", "wrong").status_code == 401
        r = scrape(f"{server.base}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert sample(text, "sqlgate_calls_total", kind="tool", endpoint="query", outcome="ok") == 5
        assert sample(text, "sqlgate_calls_total", kind="tool", endpoint="query", outcome="error") == 1
        # a name the project does not define is counted, but cannot become a label value of its own
        assert sample(text, "sqlgate_calls_total", kind="tool", endpoint="unknown", outcome="error") == 1
        assert "no_such_tool" not in text
        assert sample(text, "sqlgate_call_errors_total", kind="tool", error_class="QueryRefused") == 1
        assert sample(text, "sqlgate_call_duration_seconds_count", kind="tool", endpoint="query") == 6
        assert sample(text, "sqlgate_call_duration_seconds_bucket", kind="tool", endpoint="query", le="+Inf") == 6
        assert sample(text, "sqlgate_auth_refusals_total", status="401", route="mcp") == 2
        assert sample(text, "sqlgate_db_pool_size") == 4
        assert sample(text, "sqlgate_db_connections_in_use") == 0 and sample(text, "sqlgate_db_calls_waiting") == 0
        assert "sqlgate_rate_limited_total" not in text or sample(text, "sqlgate_rate_limited_total") == 0
    finally:
        stop_server(server)


def test_metrics_on_a_separate_port(tmp_path):
    metrics_port = free_port()
    project, env, port = auth_project(tmp_path, {})
    (project / "sqlgate.yml").write_text((project / "sqlgate.yml").read_text() +
                                         f"\ntelemetry:\n  metrics: {{enabled: true, port: {metrics_port}}}\n")
    from tests.conftest import start_server

    server = start_server(project, tmp_path, env=env, port=port)
    try:
        async def calls():
            async with mcp_session(server.url) as session:
                for _ in range(3):
                    await session.call_tool("whoami", {})

        anyio.run(calls)
        assert httpx.get(f"{server.base}/metrics").status_code == 404  # not on the MCP port
        text = scrape(f"http://127.0.0.1:{metrics_port}/metrics", None).text
        assert sample(text, "sqlgate_calls_total", kind="tool", endpoint="whoami", outcome="ok") == 3
    finally:
        stop_server(server)


def test_two_workers_report_together(tmp_path):
    """--workers 2: prometheus_client's multiprocess mode, so any worker's /metrics counts both."""
    server = start_auth_server(tmp_path, jwt_auth(), args=["--workers", "2"],
                               extra_env={"SQLGATE_METRICS": "true", "SQLGATE_METRICS_TOKEN": SCRAPE_TOKEN})
    try:
        async def calls():
            for _ in range(4):  # a new connection each time: the kernel spreads them over the workers
                async with mcp_session(server.url, hs256_bearer(SECRET, server.url, "alice")) as session:
                    for i in range(3):
                        assert not (await session.call_tool("query", {"sql": f"SELECT {i}"})).is_error

        anyio.run(calls)
        counts = {sample(scrape(f"{server.base}/metrics").text, "sqlgate_calls_total", kind="tool",
                         endpoint="query", outcome="ok") for _ in range(6)}
        assert counts == {12}
        pool = sample(scrape(f"{server.base}/metrics").text, "sqlgate_db_pool_size")
        assert pool == 8  # both workers' pools (4 each)
    finally:
        stop_server(server)


def test_rate_limit_counter_api():
    before = sample(metrics.exposition()[0].decode(), "sqlgate_rate_limited_total", principal_kind="user")
    metrics.rate_limited("user")
    metrics.rate_limited("user")
    after = sample(metrics.exposition()[0].decode(), "sqlgate_rate_limited_total", principal_kind="user")
    assert after - before == 2


def test_metrics_on_a_public_bind_need_a_token(tmp_path):
    from sqlgate.config.models import MetricsConfig
    from sqlgate.errors import ConfigError
    from sqlgate.metrics_http import check_exposure

    with pytest.raises(ConfigError, match=r"telemetry\.metrics\.token"):
        check_exposure(MetricsConfig(enabled=True), "0.0.0.0")
    check_exposure(MetricsConfig(enabled=True), "127.0.0.1")
    check_exposure(MetricsConfig(enabled=True, token="t" * 20), "0.0.0.0")
    check_exposure(MetricsConfig(enabled=True, port=9100), "0.0.0.0")


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_traces_carry_the_end_user_and_a_database_span(tmp_path, spans):
    """The server in this process, so its spans land in the in-memory exporter."""
    from sqlgate.config.loader import load_project
    from sqlgate.serve import http_asgi
    from sqlgate.server import build_app

    project, env, port = auth_project(tmp_path, jwt_auth())
    (project / "sqlgate.yml").write_text((project / "sqlgate.yml").read_text() +
                                         "\ntelemetry:\n  traces: {enabled: true, exporter: console}\n")
    import os

    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("SQLGATE_")})
    try:
        loaded = load_project(project, None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    app = build_app(loaded)
    asgi = http_asgi(app, "127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async def calls():
            async with mcp_session(url, hs256_bearer(SECRET, url, "alice")) as session:
                assert not (await session.call_tool("query", {"sql": "SELECT 42 AS answer"})).is_error
                assert (await session.call_tool("query", {"sql": "DROP TABLE customers"})).is_error

        spans.clear()
        anyio.run(calls)
    finally:
        server.should_exit = True
        thread.join(15)
    finished = spans.get_finished_spans()
    calls = [s for s in finished if s.name == "tools/call query"]
    assert len(calls) == 2, [s.name for s in finished]
    ok, refused = sorted(calls, key=lambda s: s.start_time)
    assert ok.kind == trace.SpanKind.SERVER
    assert ok.attributes["enduser.id"] == "alice" and ok.attributes["enduser.name"] == "alice"
    assert ok.attributes["sqlgate.endpoint"] == "query" and ok.attributes["sqlgate.outcome"] == "ok"
    assert refused.attributes["sqlgate.outcome"] == "error" and refused.attributes["error.type"] == "QueryRefused"
    db = [s for s in finished if s.attributes.get("db.system.name") == "duckdb"]
    children = [s for s in db if s.parent is not None and s.parent.span_id == ok.context.span_id]
    assert len(children) == 1 and children[0].kind == trace.SpanKind.CLIENT
    assert children[0].context.trace_id == ok.context.trace_id
    assert "42" not in str(dict(children[0].attributes))  # no SQL literals in spans
