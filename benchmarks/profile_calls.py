#!/usr/bin/env python3
"""Where a sqlgate call spends its CPU: py-spy samples a server under load, prints the top frames.

    .venv/bin/python benchmarks/profile_calls.py                       # all four cases, 20 s each
    .venv/bin/python benchmarks/profile_calls.py --case jwt --seconds 30 --top 30

(Not `profile.py`: that name would shadow the standard library's `profile`, which cProfile imports.)

Cases: `trivial` (the `ping` tool, no auth), `rows` (the 1,000-row x 10-column `rows` tool), `jwt`
(`ping` with an HS256 JWT on every call), `oauth` (`ping` with an OAuth-proxy token from a real
login against a fake GitHub). For each, the server runs alone, the load generator calls it
(c=1 by default) while py-spy (pip extra `bench`) samples the server process, keeping the samples of
the thread holding the GIL: Python work (DuckDB's own execution releases it, and waiting threads do
not hold it, which py-spy's idle detection alone misses for threads parked on a lock).

Prints, per case, the frames that were running themselves (self) and the frames that were on the
stack (cumulative, each counted once per sample), as % of the samples, then the same cumulative
view limited to sqlgate's own code, where the per-call work to remove shows up by name, and for the
JWT and OAuth-proxy cases limited to the token's path (auth middleware, verifiers, grant store).
Needs ptrace permission on the server process (root, or kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import (
    LOADGEN,
    PY,
    Case,
    Server,
    jwt_env,
    jwt_token,
    oauth_proxy_sqlgate,
    progress,
    running,
    sqlgate_cmd,
    warm_up,
    workdir,
)
from projects import ping_project

CASES = {"trivial": "ping", "rows": "rows", "jwt": "ping", "oauth": "ping"}
# the auth cases also show the token's own path: the auth middleware, the verifiers, the grant store
# (key_value) and what they call (joserfc, cryptography)
AUTH_FRAMES = ("auth", "joserfc", "key_value", "grant", "cryptography")
FOCUS = {"jwt": AUTH_FRAMES, "oauth": AUTH_FRAMES}
STEM_SHARE = 0.95  # a frame on this share of its thread's samples is part of the thread's stem


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(PY).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy not found: pip install -e '.[bench]' (or `make bench`)")
    return found


@contextmanager
def server_for(case: str, work: Path, env: dict[str, str]) -> Iterator[Server]:
    project = ping_project(work / case)
    log = work / f"{case}.log"
    if case == "oauth":
        with oauth_proxy_sqlgate(project, work, env, log) as server:
            yield server
    elif case == "jwt":
        with running(sqlgate_cmd(project), jwt_env(env), log) as server:
            server.token = jwt_token(server)
            yield server
    else:
        with running(sqlgate_cmd(project), env, log) as server:
            yield server


def sample(server: Server, tool: str, seconds: int, concurrency: int, out: Path) -> None:
    """py-spy on the server while the load generator keeps it busy (stopped when py-spy is done)."""
    load = [PY, str(LOADGEN), server.mcp_url, tool, "-n", "1000000", "-c", str(concurrency), "--warmup", "0"]
    if server.token:
        load += ["--token", server.token]
    gen = subprocess.Popen(load, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        spy = subprocess.run([py_spy(), "record", "--pid", str(server.proc.pid), "--duration", str(seconds),
                              "--rate", "200", "--gil", "--format", "raw", "--nolineno", "--output", str(out)],
                             capture_output=True, text=True, timeout=seconds + 60)
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed: {spy.stderr.strip()[-500:]}")
        if gen.poll() is not None:
            raise SystemExit(f"the load generator stopped early: {gen.stderr.read()[-500:]}")
    finally:
        gen.terminate()
        gen.wait(timeout=10)


def top_frames(raw: Path, top: int, focus: tuple[str, ...] = ()) -> tuple[int, dict[str, list[tuple[str, float]]]]:
    """Samples, and the self / cumulative / sqlgate-only cumulative shares of them (%), from py-spy's
    raw output: one `frame;frame;...;leaf count` line per distinct stack, root first. The cumulative
    views leave out a thread's stem: frames on (nearly) every stack of that thread (runpy, the CLI,
    the event loop's run_forever), which say nothing about a call."""
    self_, cumulative, per_root, root_total, total = Counter(), Counter(), Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        root_total[frames[0]] += n
        self_[frames[-1]] += n
        for frame in set(frames):  # a recursive frame counts once per sample
            cumulative[frame] += n
            per_root[frame, frames[0]] += n
    stem = {f for (f, root), n in per_root.items() if n >= STEM_SHARE * root_total[root]}
    called = Counter({f: n for f, n in cumulative.items() if f not in stem})
    chosen = {"self": self_, "cumulative": called,
              "sqlgate cumulative": Counter({f: n for f, n in called.items() if "(sqlgate/" in f})}
    if focus:
        chosen["auth cumulative"] = Counter({f: n for f, n in called.items() if any(k in f for k in focus)})
    views = {name: [(f, 100.0 * n / max(total, 1)) for f, n in counts.most_common(top)]
             for name, counts in chosen.items()}
    return total, views


def print_case(case: str, tool: str, samples: int, views: dict[str, list[tuple[str, float]]]) -> None:
    print(f"\n## {case} (`{tool}`), {samples} samples holding the GIL\n")
    for name, frames in views.items():
        print(f"{name}:\n")
        print("| % | frame |\n|---|---|")
        for frame, pct in frames:
            print(f"| {pct:.1f} | `{frame}` |")
        print()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable; default: all")
    ap.add_argument("--seconds", type=int, default=20, help="sampling time per case")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--keep", type=Path, help="directory to keep py-spy's raw stacks in")
    opts = ap.parse_args()
    py_spy()  # fail before starting anything
    with workdir() as (work, env):
        for case in opts.case or list(CASES):
            tool = CASES[case]
            progress(f"profiling {case}")
            with server_for(case, work, env) as server:
                warm_up([Case(case, "s", tool)], {"s": server}, calls=50)
                raw = (opts.keep or work) / f"{case}.txt"
                raw.parent.mkdir(parents=True, exist_ok=True)
                sample(server, tool, opts.seconds, opts.concurrency, raw)
            print_case(case, tool, *top_frames(raw, opts.top, FOCUS.get(case, ())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
