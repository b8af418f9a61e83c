"""Run one fake by hand:  python -m tests.fakes github --redirect-uri URI [--port N] [--auto-login alice]

Prints `READY {"base_url": ...}` and serves until interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading

from tests.fakes.providers import FAKES


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.fakes")
    ap.add_argument("provider", choices=sorted(FAKES))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--client-id")
    ap.add_argument("--client-secret")
    ap.add_argument("--redirect-uri", action="append", default=[])
    ap.add_argument("--auto-login")
    a = ap.parse_args()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with FAKES[a.provider](a.client_id, a.client_secret, a.redirect_uri, port=a.port, auto_login=a.auto_login) as fake:
        print("READY " + json.dumps({"base_url": fake.base_url, "client_id": fake.client_id,
                                     "client_secret": fake.client_secret, "redirect_uris": fake.redirect_uris}),
              flush=True)
        done.wait()


if __name__ == "__main__":
    main()
