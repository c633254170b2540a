"""`python -m bridge.bench [codec|pacing|vendors|ops|all|capacity|soak|fuzz] [options]`: print the figures."""

from __future__ import annotations

import argparse
import importlib
import sys


def main() -> None:
    if sys.argv[1:2] in (["capacity"], ["soak"], ["fuzz"]):  # their own processes and options (fuzz: hypothesis)
        importlib.import_module(f"bridge.bench.{sys.argv[1]}").main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(prog="python -m bridge.bench")
    parser.add_argument("which", nargs="?", default="all", choices=["codec", "pacing", "vendors", "ops", "all"])
    parser.add_argument("--calls", default="1,100,500", help="pacing: comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="pacing: seconds measured per run")
    args = parser.parse_args()
    for name in ("codec", "pacing", "vendors", "ops") if args.which == "all" else (args.which,):
        try:
            module = importlib.import_module(f"bridge.bench.{name}")
        except ModuleNotFoundError as exc:
            print(f"[{name}] not available: {exc}")
            continue
        if name == "pacing":
            module.run([int(n) for n in args.calls.split(",")], args.seconds)
        else:
            module.run()


if __name__ == "__main__":
    main()
