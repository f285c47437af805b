"""One trial run to its end in this process, its training peak recorded as it goes.

    python -m bench.long_trial --out DIR --marks 8 50 150 450 -- --task classify --steps 450 ...

The trailing flags are ``python -m study.train_one``'s. After each step in ``--marks`` the peak
of the training phase so far (the RSS high-water mark on CPU, as ``study.trial.resources``
measures it: the maximum over the training segments, evaluations excluded) is recorded;
``DIR/growth.json`` holds ``{"marks": {step: MB}, "metrics": ..., "env": ...}``; ``DIR/marks.json``
the marks passed so far (written at each).
``bench/memory_model.py --long`` runs one process of this per configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from study import record  # noqa: E402
from study.files import write_json  # noqa: E402
from study.trial.resources import rss_peak_mb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--marks", type=int, nargs="+", required=True)
    args, rest = parser.parse_known_args(argv)
    import torch

    from study.train_one import build_config, parse_args
    from study.trial.run import run_trial

    cfg = build_config(parse_args([*[a for a in rest if a != "--"], "--out", str(args.out)]))
    cuda = torch.cuda.is_available()
    seen = {"peak": 0.0}
    marks: dict[int, float] = {}

    def record_peak(step: int, _loss: float) -> None:
        # the segment's high-water mark (reset when training resumes after an evaluation)
        now = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_peak_mb()
        seen["peak"] = max(seen["peak"], now)
        if step in args.marks:
            marks[step] = seen["peak"]
            # as it goes: a run stopped before its last mark keeps the marks it passed
            write_json(args.out / "marks.json", marks)

    metrics = run_trial(cfg, out_dir=args.out, callbacks=(record_peak,))
    out = {"marks": marks, "metrics": metrics, "env": record.read_env(args.out),
           "config": record.read_config(args.out)}
    (args.out / "growth.json").write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
