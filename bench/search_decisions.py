"""The search's decisions on the recorded grid, to compare two versions of the searcher.

    python bench/search_decisions.py --out new.json                    # this checkout
    python /path/to/old/bench/search_decisions.py --out old.json       # another checkout
    python bench/search_decisions.py --compare old.json new.json

Replays every searcher of ``bench/search_efficiency.py`` for ``--seeds`` seeds against
``bench/data/search_grid.json`` and writes, per searcher and seed, the trials it ran in order
(configuration and steps charged). ``--compare`` prints where two such files differ: a
rewrite of the searcher or the scheduler that should not change what they decide is checked
this way (issue 11 replaced Ray's OptunaSearch and ASHAScheduler by ours).

``bench/data/search_decisions.json`` holds the decisions of commit 7aed8f6, the last one on
Ray's classes; tests/test_search.py replays a few seeds against it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RECORDED = HERE / "data" / "search_decisions.json"


def decisions(seeds: int) -> dict[str, list[list[list]]]:
    """Searcher name -> per seed, the [config key, steps] of every trial in launch order."""
    from bench import search_efficiency as se
    from bench.search_grid import GRID_FILE

    table = json.loads(GRID_FILE.read_text())["table"]
    budget = sum(e["curve"][-1]["step"] for e in table.values())
    out: dict[str, list] = {}
    for seed in range(seeds):
        for name, (searcher, scheduler) in se.searchers(seed, len(table)).items():
            events = se.replay(table, searcher, scheduler, budget)
            out.setdefault(name, []).append([[e["key"], e["steps"]] for e in events])
    return out


def compare(old: dict, new: dict) -> list[str]:
    """One line per (searcher, seed) whose decisions differ, or that only one file has."""
    lines = []
    for name in sorted(set(old) | set(new)):
        if name not in old or name not in new:
            lines.append(f"{name}: only in {'the new' if name in new else 'the old'} file")
            continue
        for seed, (a, b) in enumerate(zip(old[name], new[name])):
            if a != b:
                at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                lines.append(f"{name}, seed {seed}: first differs at trial {at}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, help="write this checkout's decisions here")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        old, new = (json.loads(p.read_text()) for p in args.compare)
        lines = compare(old, new)
        runs = sum(len(v) for v in new.values())
        print("\n".join(lines) or f"identical: {runs} replays ({len(new)} searchers) decide alike")
        return 1 if lines else 0
    if not args.out:
        parser.error("give --out FILE or --compare OLD NEW")
    args.out.write_text(json.dumps(decisions(args.seeds)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
