"""The suite's schema fuzz test (tests/test_fuzz.py), run longer than CI can afford: hostile
operations against SQLite and PostgreSQL, asserting no 5xx, no INTERNAL_SERVER_ERROR, a code on
every error and strict JSON everywhere. Run by hand (PostgreSQL as for the tests):

    .venv/bin/python bench/fuzz.py [--examples 5000] [--seed N]

`--examples` is per database, and each example sends three operations and reads everything back.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=5000, help="examples per database")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed, to repeat a run")
    args = parser.parse_args()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"]
    if args.seed is not None:
        command.append(f"--hypothesis-seed={args.seed}")
    environment = {**os.environ, "GATEWAY_FUZZ_EXAMPLES": str(args.examples)}
    return subprocess.call(command, cwd=ROOT, env=environment)


if __name__ == "__main__":
    sys.exit(main())
