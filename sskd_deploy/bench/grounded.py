"""Grounded-SAM2 as a timed model: the paper's teacher in a teacher/student latency pair.

``--pair grounded-sam2:student-s`` times Grounding DINO (Swin-L) + SAM2.1 (Hiera-L), built from
the published configurations with seeded random weights (latency does not depend on the weights'
values) and a tokenizer built here (:func:`~sskd_deploy.models.grounded_sam2.local_tokenizer`),
against the student. The teacher may also be a Grounded-SAM2 weights directory (``grounding_dino/``
and ``sam2/`` as ``save_pretrained`` writes them), which is loaded as ``train`` loads it; tests
pass a tiny one.

The operating point is the paper's: Grounding DINO sees the frame at ``bench.grounded_input_size``
(800x1333, rounded up to 800x1336), SAM2 the same frame resized to its own square ``image_size``
(1024), the student its own input size (512x1024). :class:`GroundedSam2Runner` runs the teacher's
labeling path (:meth:`GroundedSam2Teacher.predict_queries`) behind the Runner contract (the
``max_instances`` best boxes become the K candidates) and splits each call's time into
``grounding_dino``, ``sam2_image_encoder`` and ``sam2_mask_decoder``; on CUDA the split comes from
events recorded between the stages, so it does not add synchronisations inside the call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sskd_deploy.bench.models import ModelGroup, RowOptions, cuda_available
from sskd_deploy.runtime.base import Outputs, RunnerInfo, check_images, check_outputs
from sskd_deploy.runtime.torch_runner import AUTOCAST, inference_precision
from sskd_deploy.spec import IOSpec

PUBLISHED_NAMES = ("grounded-sam2", "grounded-sam2-l")
STAGES = ("grounding_dino", "sam2_image_encoder", "sam2_mask_decoder")


def is_grounded(name: str) -> bool:
    """A pair member that names the Grounded-SAM2 teacher: the published configs or a weights directory."""
    return name in PUBLISHED_NAMES or (Path(name) / "grounding_dino").is_dir()


class StageClock:
    """Per-stage milliseconds of one call: wall clock on the CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = [("start", self._now())]

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def mark(self, name: str) -> None:
        self.marks.append((name, self._now()))

    def finish(self) -> dict[str, float]:
        if self.cuda:
            self.marks[-1][1].synchronize()
        times = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            times[name] = float(a.elapsed_time(b)) if self.cuda else (b - a) * 1000.0
        return times


class GroundedSam2Runner:
    """The teacher's labeling path as a Runner: uint8 ``(B, 3, H, W)`` -> top-K scores, labels, stride-4 mask logits.

    A candidate's score is its best class probability and its label that class; ``stage_times``
    keeps each call's ``{stage: ms}``.
    """

    def __init__(self, *, teacher: Any, spec: IOSpec, device: str = "cpu", dtype: str = "fp32",
                 threads: int | None = None, name: str = "torch-fp32", max_batch: int = 64, path: str = "") -> None:
        if dtype not in AUTOCAST:
            raise ValueError(f"dtype must be one of {sorted(AUTOCAST)}, got {dtype!r}")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.teacher = teacher.eval().to(self.device)
        self.spec, self.max_batch = spec, int(max_batch)
        self._autocast = AUTOCAST[dtype]
        self._matmul_precision = "high" if dtype == "tf32" else None
        self.stage_times: list[dict[str, float]] = []
        self.info = RunnerInfo(name=name, backend="torch", precision=dtype, device=str(self.device),
                               provider="eager" + ("-autocast" if self._autocast is not None else "")
                               + ("-tf32" if self._matmul_precision else ""), path=path,
                               details={"threads": torch.get_num_threads(), "torch": torch.__version__,
                                        "sam2_image_size": int(teacher.sam_size), "stages": list(STAGES)})

    def run(self, images: np.ndarray) -> Outputs:
        images = check_images(self.spec, images, max_batch=self.max_batch)
        with inference_precision(self.device, self._autocast, self._matmul_precision):
            clock = StageClock(self.device)
            out = self.teacher.predict_queries(torch.from_numpy(images).to(self.device), on_stage=clock.mark)
            scores, labels = out["class_prob"][..., :-1].float().max(dim=-1)
            arrays = [scores.cpu().numpy(), labels.cpu().numpy(), out["mask_logits"].float().cpu().numpy()]
            self.stage_times.append(clock.finish())
        return check_outputs(self.spec, arrays, images.shape[0])

    def close(self) -> None:
        """Nothing to release beyond the module itself; present for the Runner protocol."""


def build_teacher(name: str, class_names: Sequence[str]) -> tuple[Any, str]:
    """The teacher (random weights, seed 0, for the published names; loaded from a directory otherwise) and its label."""
    from sskd_deploy.models.grounded_sam2 import GroundedSam2Teacher, large_configs, load_grounded_sam2, local_tokenizer
    from sskd_deploy.config.teacher import GroundedSam2Config

    cfg = GroundedSam2Config()
    if name not in PUBLISHED_NAMES:
        return load_grounded_sam2(Path(name), cfg=cfg, class_names=class_names, allow_download=False), \
            f"Grounded-SAM2 ({Path(name).name})"
    from transformers import GroundingDinoForObjectDetection, Sam2Model

    grounding_cfg, sam2_cfg = large_configs()
    torch.manual_seed(0)
    grounding, sam2 = GroundingDinoForObjectDetection(grounding_cfg).eval(), Sam2Model(sam2_cfg).eval()
    words = [w for n in class_names for w in str(n).replace("_", " ").split()]
    tokenizer = local_tokenizer(words, vocab_size=int(grounding_cfg.text_config.vocab_size))
    teacher = GroundedSam2Teacher(grounding=grounding, sam2=sam2, tokenizer=tokenizer, class_names=class_names,
                                  cfg=cfg)
    return teacher, "Grounded-SAM2 Swin-L + Hiera-L (random)"


def teacher_gflops(teacher: Any, input_size: Sequence[int], device: torch.device) -> tuple[float, dict[str, float]]:
    """GFLOPs of one image through the labeling path, in total and per stage (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    per_stage: dict[str, float] = {}
    counter = FlopCounterMode(display=False)
    done = 0

    def mark(stage: str) -> None:
        nonlocal done
        total = counter.get_total_flops()
        per_stage[stage] = (total - done) / 1e9
        done = total

    images = torch.zeros(1, 3, *input_size, dtype=torch.uint8, device=device)
    with torch.inference_mode(), counter:
        teacher.predict_queries(images, on_stage=mark)
    return counter.get_total_flops() / 1e9, per_stage


def grounded_group(name: str, *, class_names: Sequence[str], input_size: Sequence[int],
                   options: RowOptions) -> ModelGroup:
    """The teacher with eager PyTorch rows: FP32 on the CPU (unless ``options.cpu`` is off or a GPU is
    present: the large teacher takes seconds per call on a CPU) and FP32/TF32/FP16/BF16 on CUDA."""
    teacher, label = build_teacher(name, class_names)
    cuda = cuda_available()
    device = torch.device("cuda" if cuda else "cpu")
    teacher = teacher.eval().to(device)
    k = min(teacher.cfg.max_instances, int(teacher.grounding.config.num_queries))
    spec = IOSpec(model_name="grounded-sam2", class_names=tuple(class_names), input_size=tuple(input_size), top_k=k)
    gflops, stage_gflops = teacher_gflops(teacher, input_size, device)
    runners: dict[str, Any] = {}
    skipped = []
    if not cuda:
        runners["torch-fp32"] = GroundedSam2Runner(teacher=teacher, spec=spec, threads=options.threads,
                                                   name="torch-fp32")
    else:
        if options.cpu:
            skipped.append({"runner": "torch-fp32", "reason": "the teacher's CPU row is not timed on a GPU machine "
                            "(seconds per call); its CUDA rows are"})
        for dtype in dict.fromkeys(("fp32", *options.gpu_dtypes)):
            runners[f"torch-cuda-{dtype}"] = GroundedSam2Runner(teacher=teacher, spec=spec, device="cuda",
                                                                dtype=dtype, threads=options.threads,
                                                                name=f"torch-cuda-{dtype}")
    params = sum(p.numel() for p in teacher.parameters())
    return ModelGroup(label=label, spec=spec, runners=runners, gflops_per_image=gflops, parameters=params,
                      skipped=skipped, stage_gflops=stage_gflops)


def stage_summary(stage_times: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{stage: {"p50", "mean"}}`` in ms over calls, plus each stage's share of the summed p50s."""
    summary = {}
    for stage in STAGES:
        values = np.asarray([t[stage] for t in stage_times if stage in t], dtype=np.float64)
        if values.size:
            summary[stage] = {"p50": float(np.median(values)), "mean": float(values.mean())}
    total = sum(v["p50"] for v in summary.values()) or 1.0
    for value in summary.values():
        value["share"] = value["p50"] / total
    return summary
