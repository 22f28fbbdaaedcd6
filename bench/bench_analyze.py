"""Seconds per entry and peak memory of `analyze` on a real (small) FLUX pipeline: the in-place swap
against the deep-copy route it replaced, and the probe pass against the generation-based analysis.

The pipeline is a diffusers FluxPipeline built from config with FLUX.1's block counts (19 double,
38 single), narrow (2 heads x 64), tiny CLIP and T5 encoders, a one-level VAE, 16x16 images, 16 text
tokens, scored by a tiny CLIP scorer (builders from tests/tiny_pipelines.py; random weights, nothing
downloaded), saved and loaded back as `hpspec analyze --model DIR` loads a pipeline
(``method.pipeline_subject``: every prompt encoded once, the encoders released). Three routes, each in its own process so that one's freed memory does not hide the
next one's peak:

- ``inplace``: ``hpspec.method.analyze.analyze``, every block removed in turn by swapping modules of
  the one transformer in place (today's route);
- ``deepcopy``: the same entries, each on ``copy.deepcopy`` of the transformer pruned by
  ``hpspec.apply`` (the route before, as it was: a copy goes when Python's collector gets to it,
  and a pipeline around a copy holds reference cycles);
- ``deepcopy-gc``: the same, ``gc.collect()`` after every entry (the route before at its best);
- ``probe``: ``probe_analysis`` with cosine, mse and cka: one generation pass with block hooks (the
  fastest of ``--repeats`` passes, since one short pass is noisy on shared cores).

Peak memory is the process's peak RSS growth during the route (``method.footprint.PeakMemory``, CPU).
Seconds are wall and CPU time; the ratios use CPU time, which a busy machine disturbs far less.
The probe ratio is per ranked entry: analysis seconds per entry over probe seconds per ranked block
(goal >= 50x). Ratios are against routes measured in the same run.

    python bench/bench_analyze.py [--double 19 --single 38] [--prompts 4] [--steps 2] [--threads 1]
    python bench/bench_analyze.py --tiny --in-process        # seconds: what the smoke test runs
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ROUTES = ("inplace", "deepcopy", "deepcopy-gc", "probe")
PROMPTS = ("a red cat", "a blue dog", "a green bird", "a yellow house", "two boats", "a tall tree", "snow", "fire")


def build_subject(args: argparse.Namespace, workdir: Path) -> Any:
    """A FluxPipeline of the requested shape, saved and loaded back as `hpspec analyze` loads one
    (``method.pipeline_subject``: prompts encoded once, encoders released), with a tiny CLIP scorer."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from hpspec.method.pipeline_subject import PipelineRequest, pipeline_subject
    from hpspec.method.pipelines import Sampling
    from hpspec.method.scorers import CLIPScorer
    from tests.tiny_pipelines import (
        TEXT_TOKENS,
        save_pipeline,
        tiny_clip_model,
        tiny_clip_text_config,
        tiny_clip_tokenizer,
        tiny_t5,
        tiny_t5_tokenizer,
        tiny_vae,
    )

    torch.manual_seed(0)
    tokenizer, t5_tokenizer = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    heads, head_dim = 2, args.head_dim
    rope = (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=args.double, num_single_layers=args.single, attention_head_dim=head_dim,
        num_attention_heads=heads, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=rope,
    )  # fmt: skip
    pipe = FluxPipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(4),
        text_encoder=CLIPTextModel(tiny_clip_text_config(len(tokenizer))), tokenizer=tokenizer,
        text_encoder_2=tiny_t5(len(t5_tokenizer)), tokenizer_2=t5_tokenizer,
    )  # fmt: skip
    save_pipeline(pipe, workdir / "pipe")
    scorer = CLIPScorer.from_pretrained(tiny_clip_model(workdir / "clip"))
    sampling = Sampling(args.steps, 3.5, args.size, args.prompts)
    request = PipelineRequest(str(workdir / "pipe"), sampling, max_sequence_length=TEXT_TOKENS)
    subject, _ = pipeline_subject(request, scorer, "clip (tiny)", list(PROMPTS[: args.prompts]), workdir / "t.json")
    return subject


def with_transformer(subject: Any, module: Any) -> Any:
    """The subject's generator around another transformer (the deep-copy route): the same pipeline
    components and cached embeddings, `module` in the transformer's place."""
    from hpspec.method.pipelines import EmbeddedGenerator

    own = subject.generator_for(subject.transformer)
    pipeline = type(own.pipeline)(**{**own.pipeline.components, "transformer": module})
    pipeline.set_progress_bar_config(disable=True)
    return EmbeddedGenerator(pipeline, own.embeddings, own.sampling)


def run_route(route: str, args: argparse.Namespace, subject: Any = None) -> dict[str, Any]:
    """One route, timed, its peak RSS growth measured: {seconds, passes, ranked, peak}; on `subject`
    when given (in-process runs share one: every route leaves the transformer as it found it)."""
    import torch

    from hpspec.method.analyze import Settings, Subject, analyze, measure, probe_analysis, removal_plan, removals
    from hpspec.method.footprint import PeakMemory
    from hpspec.method.probes import PROBES
    from hpspec.model.graph import graph_from_module
    from hpspec.weights.prune import apply

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-analyze-{route}-"))
    subject = subject or build_subject(args, workdir)
    settings = Settings(list(PROMPTS[: args.prompts]), list(range(args.seeds)), False, {"steps": args.steps})
    graph = graph_from_module(subject.transformer, subject.name)
    todo = removals(graph, parts=False)
    with torch.no_grad(), PeakMemory("cpu") as meter:
        start, cpu_start = time.perf_counter(), time.process_time()
        if route == "inplace":
            analyze(subject, settings, workdir / "table.json", progress=False)
        elif route.startswith("deepcopy"):
            measure(subject, settings)
            for removal in todo:
                model = apply(removal_plan(graph, removal), copy.deepcopy(subject.transformer))
                copied = Subject(subject.name, model, lambda m: with_transformer(subject, m), subject.scorer, "")
                measure(copied, settings)
                del model
                if route == "deepcopy-gc":
                    gc.collect()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if route == "probe":
            seconds, cpu = min(_timed(lambda: probe_analysis(subject, settings, PROBES, workdir / "p.json"))
                               for _ in range(args.repeats))  # fmt: skip
    passes = 1 if route == "probe" else len(todo) + 1
    weights = sum(p.numel() * p.element_size() for p in subject.transformer.parameters())
    return {"route": route, "seconds": seconds, "cpu": cpu, "passes": passes, "ranked": len(todo), "peak": meter.measured,
            "weights": weights}  # fmt: skip


def _timed(work: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of `work` (CPU time: what the work costs whatever else shares the cores)."""
    start, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - start, time.process_time() - cpu


def table_text(rows: Sequence[dict[str, Any]]) -> str:
    """The routes and the ratios between them (all measured in this run)."""
    from hpspec.plan.summary import human_bytes, table

    by = {r["route"]: r for r in rows}
    label = {"inplace": "analyze, in-place swap", "deepcopy": "analyze, deep copy (as before)",
             "deepcopy-gc": "analyze, deep copy + gc.collect", "probe": "probe pass"}  # fmt: skip
    body = [
        [label[r["route"]], f"{r['seconds']:.2f}", f"{r['cpu']:.2f}", str(r["passes"]), f"{r['cpu'] / r['passes']:.3f}",
         f"{r['cpu'] / r['ranked']:.4f}", human_bytes(r["peak"])]
        for r in rows
    ]  # fmt: skip
    header = ["route", "wall s", "cpu s", "passes", "cpu s/pass", "cpu s/ranked entry", "peak RSS growth"]
    lines = [table(body, header), "", "ratios of CPU seconds (wall time moves with whatever shares the cores):"]
    inplace, probe = by["inplace"], by["probe"]
    lines.append(f"blocks ranked: {inplace['ranked']}; transformer weights: {human_bytes(inplace['weights'])}")
    for name in ("deepcopy", "deepcopy-gc"):
        deep = by[name]
        lines.append(f"{label[name]} / in place: seconds per entry {deep['cpu'] / inplace['cpu']:.2f}x, "
                     f"peak RSS growth {deep['peak'] / max(inplace['peak'], 1):.2f}x")  # fmt: skip
    ratio = (inplace["cpu"] / inplace["ranked"]) / (probe["cpu"] / probe["ranked"])
    lines.append(f"probes per ranked entry vs analysis: {ratio:.1f}x faster (goal >= 50x)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--double", type=int, default=19, help="double-stream blocks (FLUX.1: 19)")
    parser.add_argument("--single", type=int, default=38, help="single-stream blocks (FLUX.1: 38)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="probe passes timed (the fastest counts)")
    parser.add_argument("--tiny", action="store_true", help="1 + 1 blocks, 1 prompt, 1 step: a smoke run")
    parser.add_argument("--in-process", action="store_true", help="every route in this process (memory less clean)")
    parser.add_argument("--route", choices=ROUTES, help=argparse.SUPPRESS)  # a child: one route, JSON out
    args = parser.parse_args(argv)
    if args.tiny:
        args.double, args.single, args.head_dim, args.prompts, args.steps = 1, 1, 16, 1, 1
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.route:
        print(json.dumps(run_route(args.route, args)))
        return []
    rows = []
    shared = build_subject(args, Path(tempfile.mkdtemp(prefix="bench-analyze-"))) if args.in_process else None
    for route in ROUTES:
        if shared is not None:
            rows.append(run_route(route, args, shared))
            continue
        child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--route", route]
        done = subprocess.run(child, capture_output=True, text=True, check=True, cwd=REPO)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(table_text(rows))
    return rows


if __name__ == "__main__":
    main()
