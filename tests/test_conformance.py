"""The MCP conformance suite's generic server scenarios against a served example project.

The suite (`@modelcontextprotocol/conformance`, Node >= 22) is installed by `make install-test` into
tests/conformance (with Node itself, as the `node` npm package). Its other server scenarios call
fixture tools of the SDKs' reference server (test_image_content, test_sampling …), which a SQL
project does not have.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "conformance"
BIN = HERE / "node_modules" / ".bin"
GENERIC_SCENARIOS = [
    "server-initialize", "ping", "logging-set-level", "completion-complete", "tools-list", "tools-call-error",
    "resources-list", "prompts-list", "server-sse-multiple-streams", "dns-rebinding-protection",
]


@pytest.fixture(scope="module")
def suite_results(shop_server, tmp_path_factory) -> dict[str, list[dict]]:
    """One run of the whole suite (one Node start-up), results per scenario."""
    if not (BIN / "conformance").exists():
        pytest.fail("the conformance suite is not installed: run `make install-test` "
                    "(or `cd tests/conformance && npm ci`)")
    out = tmp_path_factory.mktemp("conformance")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(BIN / "conformance"), "server", "--url", shop_server.url, "-o", str(out)],
                   env=env, capture_output=True, text=True, timeout=180)
    results: dict[str, list[dict]] = {}
    for checks in out.rglob("checks.json"):
        scenario = checks.parent.name.removeprefix("server-").rsplit("-", 6)[0]  # strip the timestamp
        results[scenario] = json.loads(checks.read_text())
    return results


@pytest.mark.parametrize("scenario", GENERIC_SCENARIOS)
def test_generic_conformance_scenario(suite_results, scenario):
    checks = suite_results.get(scenario)
    assert checks, f"scenario {scenario} did not run; ran: {sorted(suite_results)}"
    failed = [c for c in checks if c.get("status") not in ("SUCCESS", "INFO")]
    assert not failed, failed
