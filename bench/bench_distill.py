"""Distil pruned demo models for a few hundred steps: loss curves, time per step, and the demo's
scores before and after.

    python bench/bench_distill.py [--steps 300] [--batch 64] [--lr 1e-4] [--out DIR] [--threads 2]

Prunes the demo with one fixed HierarchicalPrune-style spec (whole late blocks and parts,
`preserve auto`), then distils it three ways on `--data demo`: uniform, SGDistill binary and
SGDistill inverse (sensitivity from `hpspec analyze --parts` on the demo, measured first unless
`--table` names one). Evaluates the unpruned, pruned and each distilled model with the demo's
scorer (prompt accuracy, quality; the default prompts x 4 seeds) and prints one table plus the
loss every 50 steps. Writes everything under --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SPEC = """target demo
drop blocks[9, 11]
drop block[6].mlp, block[7].context_mlp, block[8].context_norm
preserve auto
distill weight=uniform
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", type=Path, help="a demo sensitivity table (else measured: about 3 minutes)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="bench-distill-")))
    args = parser.parse_args()

    import torch

    from hpspec.cli.app import main as hpspec
    from hpspec.stages.distill import distill_demo
    from hpspec.method.evaluate import evaluate_demo
    from hpspec.weights.load import load_pretrained

    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    table = args.table or out / "sensitivity.json"
    if not table.is_file():
        assert hpspec(["analyze", "--model", "demo", "--parts", "-o", str(table)]) == 0
    (out / "spec.hps").write_text(SPEC)
    assert hpspec(["compile", str(out / "spec.hps"), "--model", "demo", "--out", str(out / "model"), "--no-report"]) == 0
    pruned = out / "model" / "pruned"
    rows = {"original": evaluate_demo(None), "pruned": evaluate_demo(pruned, load_transformer=load_pretrained)}
    curves = {}
    for name, weight, mode in (("uniform", "uniform", "binary"), ("binary", "sensitivity", "binary"), ("inverse", "sensitivity", "inverse")):
        started = time.monotonic()
        result = distill_demo(pruned, out / name, args.steps, lr=args.lr, batch=args.batch, weight=weight, mode=mode,
                              table=table, force=True, progress=True)  # fmt: skip
        wall = time.monotonic() - started
        curves[name] = result.provenance["curve"]
        rows[name] = evaluate_demo(out / name, load_transformer=load_pretrained)
        print(f"{name}: {wall:.0f} s, {result.provenance['seconds_per_step']:.3f} s/step, "
              f"{result.provenance['trainable_params']:,} trainable parameters")  # fmt: skip
    print(f"\n{'model':10} {'prompt accuracy':>16} {'quality':>8}")
    for name, row in rows.items():
        print(f"{name:10} {row['prompt_accuracy']:16.3f} {row['quality']:8.3f}")
    print("\nloss (output + 1e-4 features), mean over the logging window:")
    print("step " + " ".join(f"{name:>9}" for name in curves))
    for i, point in enumerate(curves["uniform"]):
        if point["step"] % 50 == 0 or i == 0:
            print(f"{point['step']:4d} " + " ".join(f"{curves[n][i]['loss']:9.5f}" for n in curves))
    (out / "bench.json").write_text(json.dumps({"scores": rows, "curves": curves}, indent=2, default=str))
    print(f"\nwritten under {out}")


if __name__ == "__main__":
    main()
