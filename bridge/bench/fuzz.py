"""`python -m bridge.bench fuzz [--examples N] [--only a,b] [--seed S]`: every parser fuzzed, examples per second.

Runs the cases of bridge/bench/fuzz_cases.py (the same strategies and invariants as tests/test_fuzz.py) with
N examples each (default 100,000), the memory bound checked by tracemalloc around every parse, and prints per
parser the examples run, examples per second and the first failure found, shrunk, with its example. The floor
line is hypothesis alone (random bytes into a check that does nothing): no parser can be fuzzed faster here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bridge.bench fuzz")
    parser.add_argument("--examples", type=int, default=100_000, help="examples per parser (default 100000)")
    parser.add_argument("--only", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed, for a reproducible run")
    args = parser.parse_args(argv)
    try:
        from hypothesis import strategies as st

        from bridge.bench import fuzz_cases
    except ModuleNotFoundError as exc:
        if exc.name != "hypothesis":
            raise
        sys.exit("fuzz needs hypothesis, a test extra: pip install -e '.[test]'")
    names = [n for n in args.only.split(",") if n]
    cases = [c for c in fuzz_cases.CASES if not names or c.name in names]
    if names and len(cases) != len(names):
        sys.exit(f"unknown case in --only; the cases: {', '.join(c.name for c in fuzz_cases.CASES)}")
    print(f"$ python -m bridge.bench fuzz {' '.join(argv)}".rstrip())
    bound = f"{fuzz_cases.MEMORY_FACTOR} x input + {fuzz_cases.MEMORY_SLACK // 1024} KiB"
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores; "
          f"memory bound {bound} per parse (tracemalloc)")
    print(f"{'parser':<20} {'examples':>9} {'per second':>11}  result")
    floor = min(args.examples, 20_000)
    _report("floor: hypothesis", *_fuzz(st.binary(max_size=512), lambda data: None, floor, args.seed))
    failures = 0
    for case in cases:
        count, seconds, failure = _fuzz(case.strategy, case.check, args.examples, args.seed)
        _report(case.name, count, seconds, failure)
        failures += failure is not None
    print(f"{failures} parser(s) failed" if failures else "no failure found")
    sys.exit(1 if failures else 0)


CHUNK = 10_000  # examples per hypothesis run: it remembers every example it tried (800 MB after ~50,000 SIP ones)


def _fuzz(strategy: Any, check: Callable[[Any], None], examples: int, seed: int | None, chunk: int = CHUNK
          ) -> tuple[int, float, str | None]:
    """Run `check` on `examples` examples of `strategy`, `chunk` per hypothesis run (seeds seed, seed + 1, ...).

    Returns (examples run, seconds, the first failure found, shrunk, or None).
    """
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as with_seed

    count = 0

    def run(example: Any) -> None:
        nonlocal count
        count += 1
        check(example)

    start = time.perf_counter()
    for part in range(-(-examples // chunk)):
        test = settings(max_examples=min(chunk, examples - count), database=None,
                        deadline=timedelta(seconds=5),  # a hang fails the parser
                        phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
                        report_multiple_bugs=False)(given(strategy)(run))
        if seed is not None:
            test = with_seed(seed + part)(test)
        before = count
        try:
            test()
        except Exception as exc:  # the failure found, shrunk: reported, the other parsers still run
            notes = "\n".join(getattr(exc, "__notes__", []))
            return count, time.perf_counter() - start, f"{type(exc).__name__}: {str(exc)[:300]}\n{notes[:2000]}"
        if count >= examples or count == before:  # done, or hypothesis found nothing new to try
            break
    return count, time.perf_counter() - start, None


def _report(name: str, count: int, seconds: float, failure: str | None) -> None:
    result = "ok" if failure is None else "FAILED\n    " + failure.replace("\n", "\n    ")
    print(f"{name:<20} {count:>9} {count / seconds:>11.0f}  {result}", flush=True)
