#!/usr/bin/env python3
"""What authentication costs per call: sqlgate with no auth, a JWT, and an OAuth-proxy token, side by side.

    .venv/bin/python benchmarks/auth_cost.py [--rounds 5] [--calls 400] [--concurrency 1,8] [--baseline-src DIR]

Three servers of the `ping` project (benchmarks/projects.py) over streamable HTTP, one process each:
- `none`: no auth;
- `jwt`: resource-server mode, an HS256 JWT bound to the server's resource URL (harness.jwt_env);
- `proxy`: sqlgate as the authorization server in front of the fake GitHub (tests/fakes), the
  token obtained by a real login (harness.oauth_token: registration, /authorize, consent, the
  provider's login form, PKCE code exchange), so it goes through the grant store like any user's.

Rounds alternate the order of the servers (ABBA) so drift hits all alike. Reported per
concurrency level: the server's CPU ms per call (its process's user + system time, warm-up calls
included; far steadier than calls/s on a shared machine), median and spread over rounds, and each
auth mode's extra CPU per call over `none` of the same source. With `--baseline-src DIR` the same
three servers also run from another checkout's src/ (first on PYTHONPATH), in the same rounds:
before and after a change, measured side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    Case,
    Spec,
    alternate_rounds,
    github_fake,
    jwt_env,
    jwt_token,
    load_args,
    oauth_proxy_env,
    oauth_token,
    running_all,
    spread,
    sqlgate_cmd,
    warm_up,
    workdir,
)
from projects import ping_project  # noqa: E402

MODES = ("none", "jwt", "proxy")


def main() -> int:
    ap = load_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), rounds=5, calls=400)
    ap.add_argument("--concurrency", default="1,8", help="comma-separated levels (default 1,8)")
    ap.add_argument("--baseline-src", type=Path, help="src/ directory of another checkout (e.g. from `git archive "
                                                      "BASE | tar -x -C DIR`): its servers run in the same rounds")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    sources = {"this": None, **({"baseline": args.baseline_src.resolve()} if args.baseline_src else {})}
    with workdir() as (work, env), ExitStack() as stack:
        fake = stack.enter_context(github_fake())
        specs = {}
        for source, src in sources.items():
            tree_env = {**env, "PYTHONPATH": str(src)} if src else env
            envs = {"none": tree_env, "jwt": jwt_env(tree_env),
                    "proxy": oauth_proxy_env(work, tree_env, fake, name=f"proxy-{source}")}
            for mode in MODES:
                name = f"{source} {mode}"
                specs[name] = Spec(sqlgate_cmd(ping_project(work / name.replace(" ", "-"))), envs[mode],
                                   work / f"{name.replace(' ', '-')}.log")
        servers = stack.enter_context(running_all(specs))
        for name, server in servers.items():
            if name.endswith(" jwt"):
                server.token = jwt_token(server)
            elif name.endswith(" proxy"):
                server.token = oauth_token(server, fake)
        cases = [Case(label=f"{name} c={c}", server=name, concurrency=c) for name in specs for c in levels]
        warm_up(cases, servers)
        runs = alternate_rounds(cases, servers, args.rounds, args.calls, args.load_tool)
    cpu = {label: [r["cpu_ms"] for r in rs] for label, rs in runs.items()}
    rate = {label: [r["calls_per_s"] for r in rs] for label, rs in runs.items()}
    print(f"\nserver CPU ms per call, median (min-max) over {args.rounds} rounds of {args.calls} calls\n")
    print("| source | auth | " + " | ".join(f"c={c} CPU ms/call | c={c} + over none | c={c} calls/s"
                                            for c in levels) + " |")
    print("|---|---|" + "---|---|---|" * len(levels))
    for name in specs:
        source, mode = name.split(" ")
        cells = []
        for c in levels:
            mine, none = cpu[f"{name} c={c}"], cpu[f"{source} none c={c}"]
            extra = "" if mode == "none" else f"{statistics.median(mine) - statistics.median(none):+.2f}"
            cells += [spread(mine), extra, f"{statistics.median(rate[f'{name} c={c}']):.0f}"]
        print(f"| {source} | {mode} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
