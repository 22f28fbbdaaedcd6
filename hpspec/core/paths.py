"""paths: the names of the files hpspec reads and writes in a model or stage directory.

One definition each; every module that names one of these files imports it from here.
"""

from __future__ import annotations

CONFIG_NAME = "config.json"  # a diffusers transformer's config
MODEL_INDEX_NAME = "model_index.json"  # a diffusers pipeline root's list of components
WEIGHTS_NAME = "diffusion_pytorch_model"  # the stem of a diffusers transformer's safetensors files
WEIGHTS_INDEX_SUFFIX = ".safetensors.index.json"  # a sharded checkpoint's index: WEIGHTS_NAME + this
PLAN_NAME = "plan.json"  # the plan that produced a stage directory
PROVENANCE_NAME = "provenance.json"  # what a stage read, ran and wrote
CARD_NAME = "README.md"  # a stage directory's model card
REPORT_NAME = "report.html"  # a stage directory's report page
SCALES_NAME = "scales.json"  # a distill stage's SGDistill update scales
SINGLE_FILE_NAME = "transformer"  # the stem of a stage's one .safetensors or .gguf file in a single-file layout
SAFETENSORS_SUFFIX = ".safetensors"
EMBEDDINGS_CACHE_PREFIX = ".hpspec-embeds-"  # + digest + SAFETENSORS_SUFFIX: analyze's prompt embeddings, in -o's folder
GGUF_SUFFIX = ".gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # torch.save files: refused, never read
