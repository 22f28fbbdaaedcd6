"""Where the demo's shipped files lie. Imports nothing heavy: the CLI asks for paths alone."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR: Path = Path(__file__).resolve().parent
WEIGHTS_DIR: Path = DEMO_DIR / "weights"
TRANSFORMER_DIR: Path = WEIGHTS_DIR / "transformer"
CLASSIFIER_FILE: Path = WEIGHTS_DIR / "digit_classifier.safetensors"
REAL_STATS_FILE: Path = WEIGHTS_DIR / "digit_feature_stats.safetensors"
TRAINING_RECORD: Path = WEIGHTS_DIR / "training.json"


def transformer_dir() -> Path:
    """The shipped demo transformer: a standard diffusers directory (config.json + safetensors)."""
    return TRANSFORMER_DIR
