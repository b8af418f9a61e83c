"""MXCP (the project sqlgate is compared with) serving the same trivial `ping` tool.

MXCP is not a dependency of sqlgate: it gets its own venv, benchmarks/.mxcp-venv (git-ignored),
created on first use with the recipe below. If that fails (no registry, a broken release), the
benchmark says why and goes on without it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import HERE, Command, Spec

MXCP_VERSION = "0.12.3"
# issue 12's recipe: mxcp 0.12.3 asks for any dbt-core >= 1.6; the comparison was measured with 1.11
REQUIREMENTS = [f"mxcp=={MXCP_VERSION}", "dbt-core<1.12"]
VENV = HERE / ".mxcp-venv"
MXCP = VENV / "bin" / "mxcp"
INSTALL_TIMEOUT_S = 1200

SITE_YML = "mxcp: 1\nproject: bench\nprofile: default\n"
PING_YML = """\
mxcp: 1
tool:
  name: ping
  description: trivial query
  return:
    type: array
  source:
    code: SELECT 42 AS answer
"""


def installed() -> bool:
    if not MXCP.exists():
        return False
    probe = subprocess.run([str(VENV / "bin" / "python"), "-c", "import importlib.metadata as m; "
                            "print(m.version('mxcp'))"], capture_output=True, text=True)
    return probe.stdout.strip() == MXCP_VERSION


def ensure_installed(say=print) -> str | None:
    """Install MXCP into its venv unless it is there; None when ready, else why it is not."""
    if installed():
        return None
    say(f"installing mxcp {MXCP_VERSION} into {VENV} (once; takes a few minutes)")
    try:
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True,
                           text=True, timeout=300)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
                       check=True, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.CalledProcessError as e:
        return f"`pip install {' '.join(REQUIREMENTS)}` failed: {(e.stderr or e.stdout or '').strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not install mxcp: {e}"
    return None if installed() else "mxcp installed but its version does not answer"


def project(root: Path) -> Path:
    """An MXCP repository with one tool, `ping`, running `SELECT 42 AS answer` on DuckDB."""
    (root / "tools").mkdir(parents=True)
    (root / "mxcp-site.yml").write_text(SITE_YML)
    (root / "tools" / "ping.yml").write_text(PING_YML)
    return root


def cmd() -> Command:
    return lambda port: [str(MXCP), "serve", "--transport", "streamable-http", "--port", str(port)]


def spec(root: Path, env: dict[str, str], log: Path) -> Spec:
    # MXCP finds its project in the working directory; its MCP app has no health route, so any answer
    # on /mcp (GET: 406) means it is up. Unlike the other servers it writes an access-log line per
    # request: it builds the mcp SDK's FastMCP without a log level, whose default (INFO) it hands to
    # uvicorn, and no MXCP setting changes that. Analytics off: no calls home during the benchmark.
    env = {**env, "MXCP_DISABLE_ANALYTICS": "1"}
    return Spec(cmd(), env, log, ready_path="/mcp", ready_any=True, cwd=root, timeout=120)
