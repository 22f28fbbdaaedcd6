"""Position-dependent sensitivity of the shapes demo, against the judge's own noise across seeds.

The issue's bar: removing some blocks costs >= 10x the noise of the judge across seeds. Here the
noise is the standard deviation, over the seeds, of the full model's overall score on the prompts
(one image per prompt and seed); a block's cost is the full model's mean overall less the mean
overall with that block skipped (diffusers' own ``skip_layers``, an independent reference for block
removal), on the same prompts and seeds. Printed as a table, one row per block, and written as JSON.

    python bench/shapes_sensitivity.py                       # the shipped model, eval prompts, 5 seeds
    python bench/shapes_sensitivity.py --model DIR --seeds 3 --prompts analysis --blocks 0,11 --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpspec.core.io import dumps_json, write_text_atomic  # noqa: E402  (torch-free)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a shapes transformer directory (default: shipped)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--prompts", choices=("eval", "analysis", "validation"), default="eval")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the demo's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance (default: the demo's)")
    parser.add_argument("--blocks", type=block_list, default=None, help="only these blocks, e.g. 0,11 (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: not a transformer directory (no config.json)")
    return args


def block_list(text: str) -> list[int]:
    """'0,11' -> [0, 11]; argparse turns the ValueError into a usage error that names the flag."""
    return [int(b) for b in text.split(",")]


def prompt_set(name: str) -> list[str]:
    from hpspec.demo.shapes.prompts import analysis_prompts, eval_prompts, split_prompts

    return {"eval": eval_prompts, "analysis": analysis_prompts, "validation": lambda: split_prompts("validation")}[
        name
    ]()


def overall_per_seed(generator: object, prompts: list[str], seeds: range) -> list[float]:
    from hpspec.demo.shapes.scorer import ShapesScorer
    from hpspec.method.evaluate import evaluate

    scorer = ShapesScorer()
    return [float(evaluate(generator, scorer, prompts, seeds=(s,))["overall"]) for s in seeds]  # type: ignore[arg-type]


def measure(args: argparse.Namespace) -> dict[str, object]:
    import torch
    from tqdm import tqdm

    from hpspec.demo.models import SHAPES
    from hpspec.demo.sampler import DemoGenerator

    torch.set_num_threads(args.threads)
    model = SHAPES.load_transformer(args.model)
    steps = args.steps if args.steps is not None else SHAPES.steps
    guidance = args.guidance if args.guidance is not None else SHAPES.guidance
    generator = DemoGenerator(model, steps=steps, guidance=guidance)
    prompts, seeds = prompt_set(args.prompts), range(args.seeds)
    full = overall_per_seed(generator, prompts, seeds)
    noise = statistics.stdev(full) if len(full) > 1 else float("nan")
    mean_full = statistics.fmean(full)
    rows = []
    blocks = args.blocks if args.blocks is not None else range(int(model.config.num_layers))
    for block in tqdm(blocks, desc="skip each block", unit="block"):
        skipped = overall_per_seed(generator.with_skipped([block]), prompts, seeds)
        cost = mean_full - statistics.fmean(skipped)
        rows.append(
            {
                "block": block,
                "overall": statistics.fmean(skipped),
                "cost": cost,
                "cost_over_noise": cost / noise if noise > 0 else None,
            }
        )
    return {
        "prompts": args.prompts,
        "num_prompts": len(prompts),
        "seeds": list(seeds),
        "sampler": {"steps": steps, "guidance": guidance},
        "full_per_seed": full,
        "full_mean": mean_full,
        "noise_std": noise,
        "blocks": rows,
    }


def table(result: dict[str, object]) -> str:
    lines = [
        f"full model: overall {result['full_mean']:.3f}, judge noise (std over {len(result['seeds'])} seeds) "  # type: ignore[arg-type]
        f"{result['noise_std']:.3f}; {result['num_prompts']} {result['prompts']} prompts",
        "",
        "| block skipped | overall | cost | cost / noise |",
        "|---|---|---|---|",
    ]
    for row in result["blocks"]:  # type: ignore[attr-defined]
        ratio = "no noise" if row["cost_over_noise"] is None else f"{row['cost_over_noise']:.1f}x"
        lines.append(f"| {row['block']} | {row['overall']:.3f} | {row['cost']:+.3f} | {ratio} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    print(table(result))
    if args.json is not None:
        write_text_atomic(args.json, dumps_json(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
