"""Per-step cost of two checkouts of runner, in alternating processes.

    git worktree add /tmp/bench-old <old commit>
    git worktree add /tmp/bench-new <new commit>
    python bench/ab.py --old /tmp/bench-old --new /tmp/bench-new [--pairs 5] [--repeat 3]
                       [--row DAG SIZE KIND DIR]...

Each row is one `bench/overhead.py --row DAG SIZE KIND --dir DIR --json` (a
warm-up run, then --repeat timed runs, median), run in a fresh process with
PYTHONPATH set to one checkout, so `import runner` takes that checkout's code
and both sides run this same measuring script. For each pair the old side runs,
then the new side, row after row, so that the machine's drift falls on both
alike. Prints each side's median µs per step over the pairs and the median (and
range) of the pairs' new/old ratios. Default rows: a 1,000-step chain and a
2,000-wide fan-out/in, fake provider, cache off and on, on /dev/shm and on
bench/.work (disk), under RUNNER_FSYNC=batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
OVERHEAD = HERE / "overhead.py"
DEFAULT_ROWS = [
    (dag, size, kind, place)
    for dag, size in (("chain", "1000"), ("fan", "2000"))
    for kind in ("fake-off", "fake-on")
    for place in ("/dev/shm", str(HERE / ".work"))
]


def run_side(checkout: Path, row: tuple[str, str, str, str], repeat: int) -> float:
    """Median µs per step of one process running `row` with `checkout`'s runner."""
    dag, size, kind, place = row
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env["PYTHONPATH"] = str(checkout)
    command = [sys.executable, str(OVERHEAD), "--row", dag, size, kind, "--dir", place]
    command += ["--repeat", str(repeat), "--json"]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    used = Path(result["runner"]).resolve().parent.parent
    if used != checkout.resolve():
        raise SystemExit(f"imported runner from {used}, expected {checkout}")
    return float(statistics.median(result["us"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--new", type=Path, required=True, help="checkout of the new code")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per process")
    parser.add_argument("--row", nargs=4, action="append", metavar=("DAG", "SIZE", "KIND", "DIR"))
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    rows = [tuple(row) for row in args.row] if args.row else DEFAULT_ROWS
    old: dict[tuple[str, ...], list[float]] = {row: [] for row in rows}
    new: dict[tuple[str, ...], list[float]] = {row: [] for row in rows}
    for pair in range(args.pairs):
        for row in rows:
            old[row].append(run_side(args.old, row, args.repeat))
            new[row].append(run_side(args.new, row, args.repeat))
            print(f"pair {pair + 1} {' '.join(row)}: old {old[row][-1]:.0f} new {new[row][-1]:.0f}")
    print(f"\n{'row':<42}{'old µs':>8}{'new µs':>8}{'new/old':>9}  range")
    for row in rows:
        ratios = sorted(n / o for n, o in zip(new[row], old[row], strict=True))
        place = "disk" if Path(row[3]).resolve() == (HERE / ".work").resolve() else row[3]
        label = " ".join((*row[:3], place))
        print(
            f"{label:<42}{statistics.median(old[row]):>8.0f}{statistics.median(new[row]):>8.0f}"
            f"{statistics.median(ratios):>9.2f}  {ratios[0]:.2f}-{ratios[-1]:.2f}"
        )
    if args.json:
        records = [{"row": row, "old": old[row], "new": new[row]} for row in rows]
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
