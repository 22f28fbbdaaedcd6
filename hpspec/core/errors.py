"""One error hierarchy for everything hpspec reports to a user: the one home of every error class.

Every failure a user can cause (a wrong spec, a broken checkpoint, a bad command line) is an
`HpspecError`; anything else escaping hpspec is a bug. Spec problems carry `Diagnostic`s that point
at a file, line and column and say what would have been valid.
"""

from __future__ import annotations

from collections.abc import Sequence

from hpspec.core.diagnostics import Diagnostic, render_all


class HpspecError(Exception):
    """Base of every error hpspec raises on purpose. `exit_code` is what the CLI returns."""

    exit_code = 1


class UsageError(HpspecError):
    """The command line itself is wrong (exit 2)."""

    exit_code = 2


class SpecError(HpspecError):
    """A spec failed to parse or check. Holds every diagnostic found, errors and warnings."""

    def __init__(self, diagnostics: Sequence[Diagnostic], source: str | None = None):
        self.diagnostics = tuple(diagnostics)
        self.source = source
        super().__init__(f"{len(self.diagnostics)} diagnostics")

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        """The diagnostics as `check` prints them (repeats merged, the total capped)."""
        return render_all(self.diagnostics, self.source)


class TargetError(HpspecError):
    """A target (built-in name, directory, config or checkpoint) cannot be described as a graph."""


class ArchitectureDataError(HpspecError):
    """An architecture data file is malformed: a bug in hpspec's data, reported precisely."""


class CheckpointError(HpspecError):
    """A checkpoint on disk is missing, broken, unsupported or does not match the plan."""


class PlanError(HpspecError):
    """A plan file is malformed, or does not fit the model it is applied to."""


class SensitivityError(HpspecError):
    """A sensitivity table is malformed or does not fit the model it is used with."""


class ReportError(HpspecError):
    """A report input is malformed, or the report cannot be rendered here."""


class ImageError(HpspecError):
    """An image payload (a report's image grid) is malformed."""


class GuidanceError(HpspecError):
    """The sensitivity guidance (SGDistill) cannot be computed for this plan and table."""


class DataError(HpspecError):
    """A distillation data source is malformed or does not fit the model."""


class DistillError(HpspecError):
    """The distill stage cannot run with these inputs."""


class DistillStopped(DistillError):
    """The run stopped early as asked (`--stop-after`); its checkpoint resumes it (exit 3)."""

    exit_code = 3


class LayoutError(CheckpointError):
    """A single-file checkpoint's key layout is unknown or mixed, its format unreadable (a pickle), or a
    conversion between layouts is impossible."""


class LoraError(HpspecError):
    """A LoRA adapter cannot be remapped through a plan: a module that does not fit the model, a
    name that is not a LoRA module, a file that is not an adapter."""


class MissingPackageError(HpspecError):
    """An optional package a command needs is not installed; the message names the extra that brings it."""


class PipelineError(HpspecError):
    """A diffusers pipeline (a directory or a hub id in the local cache) cannot be loaded, or is not one
    hpspec measures (SD3, SD3.5, FLUX)."""


class ScorerError(HpspecError):
    """A scorer's model cannot be loaded, or does not fit the images it is given."""


class PromptSetError(HpspecError):
    """A prompt set (a text file, one prompt a line, or a JSON list of strings) is missing, malformed or empty."""
