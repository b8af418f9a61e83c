"""`make bench` end to end on small numbers: every server starts, every row of the report is there
with positive numbers, every target is judged, and --write-readme rewrites only its own section.

This checks the benchmark's structure, never its speed (speed is what the benchmark reports).
MXCP is left out (`--no-mxcp`): installing it takes minutes; the report must then say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"

TRIVIAL = ["raw ASGI + DuckDB (limit)", "bare FastMCP", "sqlgate, no auth", "sqlgate, JWT", "sqlgate, OAuth proxy"]
LAYERS = ["mcp SDK low-level Server", "sqlgate, no auth, JSON responses"]  # c=1 only
WORKERS = ["sqlgate, no auth, 2 workers", "sqlgate, JWT, 2 workers", "sqlgate, OAuth proxy, 2 workers"]
ROWS = ["raw ASGI + DuckDB, text only", "raw ASGI + DuckDB + structuredContent (limit)", "bare FastMCP", "sqlgate"]
MXCP = "MXCP 0.12.3"
README_HEAD = "# A project\n\nText before.\n\n<!-- bench:start -->\nan old table\n<!-- bench:end -->\n"
README_TAIL = "\nText after, kept.\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str, str]:
    tmp = tmp_path_factory.mktemp("bench")
    readme = tmp / "README.md"
    readme.write_text(README_HEAD + README_TAIL)
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--no-mxcp", "--rounds", "1", "--calls", "40", "--rows-calls", "5",
         "--output", str(tmp / "latest.json"), "--write-readme", "--readme", str(readme)],
        capture_output=True, text=True, timeout=900, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "latest.json").read_text()), proc.stdout, readme.read_text()


def rows_of(result: dict, group_prefix: str) -> dict[str, dict]:
    return {r["name"]: r for r in result["report"]["load"] if r["group"].startswith(group_prefix)}


@pytest.mark.timeout(900)
def test_every_case_is_measured_with_positive_numbers(quick_run):
    result, _, _ = quick_run
    expected = {"trivial tool (`SELECT 42`), c=1": [*TRIVIAL, *LAYERS, MXCP],
                "trivial tool (`SELECT 42`), c=8": [*TRIVIAL, *WORKERS, MXCP],
                "1,000 rows": ROWS}
    for group, names in expected.items():
        rows = rows_of(result, group)
        assert sorted(rows) == sorted(names), group
        for name, row in rows.items():
            if name == MXCP:
                assert row["note"] == "not measured: left out (--no-mxcp)"
                continue
            for metric in ("calls_per_s", "p50_ms", "p99_ms", "cpu_ms", "cpu_vs_limit"):
                assert row[metric]["median"] > 0, (group, name, metric)
                assert row[metric]["min"] <= row[metric]["median"] <= row[metric]["max"]
            assert row["p99_ms"]["median"] >= row["p50_ms"]["median"]
            if name.endswith("(limit)"):
                assert row["cpu_vs_limit"]["median"] == 1.0
    # every call was made: the load generator fails a run with any failed call, so runs exist per round
    for row in result["load"]["rows"]:
        assert len(row["runs"]) == 1 and row["runs"][0]["errors"] == 0


@pytest.mark.timeout(900)
def test_every_target_is_judged(quick_run):
    result, _, _ = quick_run
    targets = {t["target"]: t for t in result["report"]["targets"]}
    assert len(targets) == 11
    for name, t in targets.items():
        if "MXCP" in name:
            assert t["ok"] is None and t["note"] == "not measured: left out (--no-mxcp)"
            continue
        assert isinstance(t["ok"], bool), name
        assert t["measured"]["median"] > 0 or "adds" in name, name  # an auth cost may be measured as ≤ 0
    assert result["startup"]["sqlgate"]["1000"][0] > 0 and result["startup"]["validate"]["1000"][0] > 0
    # what holds the targets back is measured in the same run: the SDK's floor, the workers' ceiling
    assert result["load"]["loadgen_cpu_ms"] > 0
    trivial = next(t for name, t in targets.items() if name.startswith("trivial tool"))
    assert trivial["context"].startswith("the mcp SDK alone: ")
    assert all(t["context"].startswith("this machine's ceiling: ") for name, t in targets.items() if "workers" in name)
    idle = result["load"]["rss_idle_mib"]
    assert all(idle[k] > 0 for k in ("raw", "bare", "sg", "sg_jwt", "sg_oauth"))
    assert result["shop_rss_mib"]["restart"] > 0


@pytest.mark.timeout(900)
def test_the_readme_section_is_rewritten_from_the_run(quick_run):
    _, stdout, readme = quick_run
    assert "| server | calls/s | p50 ms | p99 ms | server CPU ms/call | CPU ÷ limit |" in stdout
    assert "| target | measured | status |" in stdout
    head, rest = readme.split("<!-- bench:start -->\n")
    section, tail = rest.split("<!-- bench:end -->")
    assert head + "<!-- bench:start -->\n" == README_HEAD.split("an old table")[0]
    assert tail == "\n" + README_TAIL
    assert section.strip() == stdout.strip()
    assert "an old table" not in readme


def test_the_load_generator_is_the_teams():
    # benchmarks/loadgen.py is ../shared/tools/bench.py with another name and a paragraph on why:
    # where the team's tree is beside the checkout, their code must be the same
    shared = REPO.parent / "shared" / "tools" / "bench.py"
    ours = (REPO / "benchmarks" / "loadgen.py").read_text()
    if shared.exists():
        def code(text: str) -> str:
            return text.split('"""', 2)[2]  # after the module docstring
        assert code(ours) == code(shared.read_text()), "copy ../shared/tools/bench.py again"
    assert "A verbatim copy of the team's shared tools/bench.py" in ours
