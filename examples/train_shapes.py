"""Trains hpspec's shapes demo (32x32 RGB scenes of flat shapes) and writes it into the package.

    python examples/train_shapes.py                    # the shipped recipe: about 75 minutes on 2 cores
    python examples/train_shapes.py --steps 100 --out shapes-quick   # a quick look
    python examples/train_shapes.py --rescore          # re-score saved weights with the judge

Writes, under the weights directory (hpspec/demo/shapes/weights by default):
  transformer/config.json, transformer/diffusion_pytorch_model.safetensors  (diffusers, fp16)
  training.json     settings, timings, and the trained model's scores per GenEval category

The EMA weights are saved every --checkpoint-every steps, so a stopped run leaves a usable model
(training.json then says at which step). Deterministic under --seed (same machine and versions).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from hpspec.demo.models import SHAPES
from hpspec.demo.sampler import DemoGenerator
from hpspec.demo.shapes.model import load_shapes_transformer
from hpspec.demo.shapes.paths import SHAPES_WEIGHTS_DIR
from hpspec.demo.shapes.prompts import eval_prompts, split_prompts
from hpspec.demo.shapes.scorer import ShapesScorer
from hpspec.demo.shapes.training import POOL_SIZE, scene_pool, train_shapes
from hpspec.demo.text import load_text_encoder
from hpspec.demo.training import TransformerTraining
from hpspec.method.evaluate import evaluate

# The shipped recipe, fixed before the run (8000 steps: about 75 minutes on 2 quiet cores).
RECIPE = TransformerTraining(steps=8000, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999, log_every=50)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHAPES_WEIGHTS_DIR, help="weights directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=RECIPE.steps)
    parser.add_argument("--batch-size", type=int, default=RECIPE.batch_size)
    parser.add_argument("--lr", type=float, default=RECIPE.lr)
    parser.add_argument("--pool", type=int, default=POOL_SIZE, help="training scenes rendered up front")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rescore", action="store_true", help="train nothing: score the weights in --out")
    return parser.parse_args()


def score_trained(model: nn.Module) -> dict[str, object]:
    """The model on the eval prompts (held-out tuples) x 4 seeds, and on the validation prompts,
    with the shapes demo's sampler settings."""
    generator = DemoGenerator(model, steps=SHAPES.steps, guidance=SHAPES.guidance)
    scorer = ShapesScorer()
    return {
        "sampler": {"steps": generator.steps, "guidance": generator.guidance},
        "eval_prompts": evaluate(generator, scorer, eval_prompts(), seeds=(0, 1, 2, 3)),
        "validation_prompts": evaluate(generator, scorer, split_prompts("validation"), seeds=(0,)),
    }


def save_transformer(model: nn.Module, out: Path) -> None:
    """Writes out/transformer whole: into a fresh folder first, then renamed over the old one."""
    tmp = out / "transformer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    copy.deepcopy(model).half().save_pretrained(tmp, safe_serialization=True)  # type: ignore[operator]
    shutil.rmtree(out / "transformer", ignore_errors=True)
    tmp.rename(out / "transformer")


def write_record(out: Path, record: dict[str, object]) -> None:
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def rescore(out: Path) -> dict[str, object]:
    scores = score_trained(load_shapes_transformer(out / "transformer"))
    record_file = out / "training.json"
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
    record["scores"] = scores
    write_record(out, record)
    return scores


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.rescore:
        print(json.dumps(rescore(args.out), indent=2), flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cfg = TransformerTraining(
        **{**RECIPE.as_dict(), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    )
    base: dict[str, object] = {"pool": args.pool, "torch": torch.__version__, "threads": args.threads}
    base["machine"] = platform.machine()
    pool = scene_pool(args.pool, seed=args.seed)
    print(f"pool of {args.pool} scenes, {len(pool.prompts)} prompts, {time.perf_counter() - started:.0f}s", flush=True)

    def checkpoint(ema: nn.Module, step: int) -> None:
        save_transformer(ema, args.out)
        write_record(args.out, {"transformer": {**cfg.as_dict(), "stopped_at_step": step}, **base})
        print(f"checkpoint at step {step}", flush=True)

    def log(line: str) -> None:
        print(line, flush=True)

    model, transformer_record = train_shapes(cfg, load_text_encoder(), pool, log, checkpoint, args.checkpoint_every)
    save_transformer(model, args.out)
    record = {"transformer": {**cfg.as_dict(), **transformer_record}, **base}
    write_record(args.out, record)
    record["scores"] = score_trained(load_shapes_transformer(args.out / "transformer"))  # as shipped: fp16
    record["total_seconds"] = time.perf_counter() - started
    write_record(args.out, record)
    print(json.dumps(record["scores"], indent=2), flush=True)


if __name__ == "__main__":
    main()
