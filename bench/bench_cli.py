"""Time whole `hpspec check` and `hpspec diff` processes against `python -c "import diffusers"`.

What a user waits for is the whole process: interpreter start, imports, parsing, graph, check. The
goal is a check of an SD3.5 Large spec in under 0.3 s, a small fraction of importing diffusers.

    python bench/bench_cli.py [--repeat 7] [--enforce]

Prints the median and fastest wall time of each command and its ratio to `import diffusers`.
`--enforce` exits 1 when the check misses the goal. The processes run as an installed package
does: with cached bytecode (in a temporary PYTHONPYCACHEPREFIX, even where the environment sets
PYTHONDONTWRITEBYTECODE), so the numbers do not include compiling hpspec's sources.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

GOAL_S = 0.3
BASE_SPEC = "target sd3.5-large\ndrop blocks[25:29, 31:35]\npreserve auto\ndistill weight=sensitivity\nquantize nf4\n"
NEW_SPEC = "target sd3.5-large\ndrop blocks[25:29, 31:36]\ndrop block[22].context_mlp\npreserve auto\nquantize nf4\n"


def hpspec_command() -> list[str]:
    """The installed console script, as a user runs it; the module when there is none."""
    beside = Path(sys.executable).parent / "hpspec"
    found = str(beside) if beside.exists() else shutil.which("hpspec")
    return [found] if found else [sys.executable, "-m", "hpspec.cli"]


def wall_times(command: Sequence[str], repeat: int, env: dict[str, str]) -> list[float]:
    """Seconds per run, after one unmeasured warm-up (caches: bytecode, the OS's, lark's tables)."""
    subprocess.run(command, check=True, capture_output=True, env=env)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--enforce", action="store_true", help=f"exit 1 if `hpspec check` takes {GOAL_S} s or more")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        base, new = Path(tmp, "base.hps"), Path(tmp, "new.hps")
        base.write_text(BASE_SPEC)
        new.write_text(NEW_SPEC)
        hpspec = hpspec_command()
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "hpspec check (SD3.5 Large)": [*hpspec, "check", str(new)],
            "hpspec diff --format markdown": [*hpspec, "diff", str(base), str(new), "--format", "markdown"],
        }
        if importlib.util.find_spec("diffusers") is not None:
            commands['python -c "import diffusers"'] = [sys.executable, "-c", "import diffusers"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp, "pycache"))
        results = {name: wall_times(command, args.repeat, env) for name, command in commands.items()}

    reference = statistics.median(results.get('python -c "import diffusers"', [float("nan")]))
    print(f"{'command':<32} {'median s':>9} {'fastest s':>9} {'vs import diffusers':>20}")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"{name:<32} {median:>9.3f} {min(times):>9.3f} {median / reference:>19.1%}")
    check = statistics.median(results["hpspec check (SD3.5 Large)"])
    if reference != reference:  # NaN: no diffusers here
        print("diffusers is not installed: no ratio")
    else:
        print(f"hpspec check takes 1/{reference / check:.0f} of the time `import diffusers` takes")
    print(f"goal: hpspec check under {GOAL_S} s: {'met' if check < GOAL_S else 'MISSED'} ({check:.3f} s)")
    return 1 if args.enforce and check >= GOAL_S else 0


if __name__ == "__main__":
    sys.exit(main())
