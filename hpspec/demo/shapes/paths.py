"""Where the shapes demo's shipped files lie. Imports nothing heavy."""

from __future__ import annotations

from pathlib import Path

SHAPES_DIR: Path = Path(__file__).resolve().parent
SHAPES_WEIGHTS_DIR: Path = SHAPES_DIR / "weights"
SHAPES_TRANSFORMER_DIR: Path = SHAPES_WEIGHTS_DIR / "transformer"
SHAPES_TRAINING_RECORD: Path = SHAPES_WEIGHTS_DIR / "training.json"


def transformer_dir() -> Path:
    """The shipped shapes transformer: a standard diffusers directory (config.json + safetensors)."""
    return SHAPES_TRANSFORMER_DIR
