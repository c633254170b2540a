"""The `sip-to-ai` command: serve | call | check-config."""

from __future__ import annotations

import argparse
import asyncio
import sys

from bridge import config
from bridge.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["call"]:
        from bridge.caller import main as call_main

        return call_main(argv[1:])
    parser = argparse.ArgumentParser(prog="sip-to-ai", description="Realtime voice AI on phone calls.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the adapter (echo agent unless AI_VENDOR is set)")
    sub.add_parser("call", help="place test calls: sip-to-ai call sip:user@host:port [--seconds N] ...")
    sub.add_parser("check-config", help="load and validate the configuration, print it with secrets redacted")
    args = parser.parse_args(argv)
    try:
        settings = config.load()
    except ConfigError as exc:
        print(f"sip-to-ai: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(repr(settings))
        return 0
    from bridge.app import loop_factory, serve
    from bridge.ops.logs import setup_logging

    setup_logging(settings)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
            runner.run(serve(settings))
    except KeyboardInterrupt:
        pass
    except ExceptionGroup as group:  # an ingress could not bind its port: one line each, no traceback
        bind_errors, rest = group.split(OSError)
        if bind_errors is None or rest is not None:
            raise
        for exc in _leaves(bind_errors):
            print(f"sip-to-ai: cannot listen: {exc}", file=sys.stderr)
        return 2
    return 0


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    return [leaf for exc in group.exceptions
            for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])]


if __name__ == "__main__":
    raise SystemExit(main())
