"""Trains hpspec's embedded demo and writes it into the package (or --out).

    python examples/train_demo.py                 # about 8-10 minutes on 2 CPU cores
    python examples/train_demo.py --steps 200 --out demo-quick   # a quick look
    python examples/train_demo.py --rescore       # re-score saved weights (after a sampler change)

Writes, under the weights directory:
  transformer/config.json, transformer/diffusion_pytorch_model.safetensors  (diffusers, fp32)
  digit_classifier.safetensors      the scorer's MLP
  digit_feature_stats.safetensors   mean/covariance of its features over all real digits
  training.json                     settings, timings, and the trained model's scores

Deterministic under --seed (same machine, same library versions).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from hpspec.demo.paths import WEIGHTS_DIR
from hpspec.demo.prompts import UNSEEN_TEMPLATES, default_prompts, prompts_for
from hpspec.demo.sampler import DemoGenerator
from hpspec.demo.scorer import DemoScorer, save_classifier, save_stats
from hpspec.demo.text import load_text_encoder
from hpspec.demo.training import TransformerTraining, real_feature_stats, train_classifier, train_transformer
from hpspec.method.evaluate import evaluate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="weights directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=TransformerTraining.steps)
    parser.add_argument("--batch-size", type=int, default=TransformerTraining.batch_size)
    parser.add_argument("--lr", type=float, default=TransformerTraining.lr)
    parser.add_argument("--classifier-epochs", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="train nothing: score the weights in --out and update training.json's scores",
    )
    return parser.parse_args()


def score_trained(generator: DemoGenerator, scorer: DemoScorer) -> dict[str, object]:
    """The trained model on the shipped prompts, and on templates it never saw."""
    shipped = evaluate(generator, scorer, default_prompts(), seeds=(0, 1, 2, 3))
    unseen = [p for d in range(10) for p in prompts_for(d, UNSEEN_TEMPLATES)]
    images = generator.generate(unseen, seed=0)
    return {
        "sampler": {"steps": generator.steps, "guidance": generator.guidance},
        "default_prompts": shipped,
        "unseen_templates_prompt_accuracy": scorer.prompt_accuracy(images, unseen),
    }


def rescore(out: Path) -> dict[str, object]:
    """Scores the saved weights with the current sampler defaults; updates training.json."""
    from safetensors.torch import load_file

    from hpspec.demo.model import load_demo_transformer
    from hpspec.demo.scorer import load_classifier

    stats = load_file(str(out / "digit_feature_stats.safetensors"))
    scorer = DemoScorer(
        load_classifier(out / "digit_classifier.safetensors"), stats["mu"], stats["sigma"]
    )
    scores = score_trained(DemoGenerator(load_demo_transformer(out / "transformer")), scorer)
    record_file = out / "training.json"
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
    record["scores"] = scores
    record_file.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return scores


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.rescore:
        print(json.dumps(rescore(args.out), indent=2))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    classifier, classifier_record = train_classifier(seed=args.seed, epochs=args.classifier_epochs)
    mu, sigma = real_feature_stats(classifier)
    save_classifier(classifier, args.out / "digit_classifier.safetensors")
    save_stats(mu, sigma, args.out / "digit_feature_stats.safetensors")

    encoder = load_text_encoder()
    cfg = TransformerTraining(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    model, transformer_record = train_transformer(cfg, encoder)
    model.save_pretrained(args.out / "transformer", safe_serialization=True)

    scores = score_trained(
        DemoGenerator(model, encoder), DemoScorer(classifier, mu, sigma)
    )
    record = {
        "transformer": {**cfg.as_dict(), **transformer_record},
        "classifier": classifier_record,
        "scores": scores,
        "total_seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()
