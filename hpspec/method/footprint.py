"""footprint: what a model costs while it runs (peak memory) and at rest (parameters, weight bytes).

``PeakMemory`` measures the paper's memory column around a piece of work:

- on a CUDA device, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: the peak of
  the caching allocator's live tensors, weights included (what the paper's tables report);
- on the CPU, the peak resident set size of this process during the work minus its size at the start,
  sampled every few milliseconds by a thread (Linux ``/proc/self/statm``, else ``psutil``): the
  memory the work added on top of what was loaded before (weights loaded earlier are not in it).

The result names what it measured (``peak_memory_measure``), so a CPU number is never read as a GPU one.
torch is imported when a meter starts, so importing this module stays cheap.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

CUDA_MEASURE = "cuda max_memory_allocated (weights and activations)"
CPU_MEASURE = "cpu peak RSS growth during generation (sampled every 5 ms; weights loaded before not counted)"
SAMPLE_SECONDS = 0.005
STATM = Path("/proc/self/statm")


def rss_bytes() -> int:
    """This process's resident set size now."""
    if STATM.is_file():
        return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import psutil

    return int(psutil.Process().memory_info().rss)


class PeakMemory:
    """A context manager: ``with PeakMemory("cuda") as meter: ...`` then ``meter.result()``."""

    def __init__(self, device: Any = "cpu") -> None:
        self.device = str(device)
        self.cuda = self.device.startswith("cuda")
        self.peak = 0
        self._start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, name="hpspec-peak-rss", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def measured(self) -> int:
        """Peak bytes (CUDA), or the peak's growth over the start (CPU)."""
        return self.peak if self.cuda else max(0, self.peak - self._start)

    def result(self) -> dict[str, Any]:
        return {"peak_memory_bytes": self.measured, "peak_memory_measure": CUDA_MEASURE if self.cuda else CPU_MEASURE}


@dataclass(frozen=True)
class Footprint:
    """A transformer at rest: its parameters (a quantized Linear counts the weights it stands for) and
    the bytes of its state dict as loaded (packed 4-bit weights and their scales, or bf16/fp32 tensors)."""

    parameters: int
    weight_bytes: int

    def as_dict(self) -> dict[str, int]:
        return {"parameters": self.parameters, "weight_bytes": self.weight_bytes}


def footprint(module: nn.Module, parameters: int | None = None) -> Footprint:
    """``parameters`` when the caller knows the logical count (a quantized stage's plan), else the
    module's own count; weight bytes from every tensor of its state dict, each storage once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in module.state_dict().values():
        key = (tensor.data_ptr(), tensor.nbytes) if tensor.data_ptr() else (id(tensor), tensor.nbytes)
        if key not in seen:
            seen.add(key)
            total += tensor.nbytes
    count = parameters if parameters is not None else sum(p.numel() for p in module.parameters())
    return Footprint(count, total)
