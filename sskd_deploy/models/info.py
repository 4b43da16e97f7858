"""Size and cost of a model: parameters per part, FLOPs, measured CPU latency.

FLOPs are counted by ``torch.utils.flop_counter`` on one forward pass at the model's input size,
where a multiply-add counts as 2 FLOPs. fvcore-based tools (detectron2, the Mask2Former family of
papers) call multiply-adds "FLOPs", so :attr:`ModelInfo.gmacs` is the figure to hold against theirs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sskd_deploy.config.model import ModelConfig


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_size: tuple[int, int]
    parameters: dict[str, int]  # per part + "total"
    gflops: float  # one image, forward pass of the network (no selection)
    gmacs: float  # multiply-adds, = gflops / 2
    latency_ms: float | None  # median over iterations, batch 1
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters of each part returned by ``model.parts()`` and their total."""
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in model.parts().items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def count_flops(model: nn.Module, input_size: tuple[int, int]) -> int:
    pixels = torch.zeros(1, 3, *input_size)
    # The counter's module tracker hooks choke on leaf tensors that require grad under no_grad
    # (parameters passed as module inputs), so parameters are frozen while counting.
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(pixels)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return int(counter.get_total_flops())


def measure_latency(model: nn.Module, input_size: tuple[int, int], *, iters: int, warmup: int = 1) -> float:
    """Median wall time in ms of a batch-1 forward pass."""
    pixels = torch.randn(1, 3, *input_size)
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            start = time.perf_counter()
            model(pixels)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def model_info(config: ModelConfig, *, iters: int = 5, threads: int | None = None) -> ModelInfo:
    """Build ``config`` with random weights and measure it."""
    from sskd_deploy.models.maskformer import build_model

    if threads is not None:
        torch.set_num_threads(threads)
    model = build_model(config.updated(encoder={"weights": None})).eval()
    latency = measure_latency(model, config.input_size, iters=iters) if iters > 0 else None
    flops = count_flops(model, config.input_size)
    return ModelInfo(
        name=config.name, input_size=tuple(config.input_size), parameters=count_parameters(model),
        gflops=flops / 1e9, gmacs=flops / 2e9, latency_ms=latency, threads=torch.get_num_threads(),
    )
