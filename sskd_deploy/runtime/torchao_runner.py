"""torchao behind the Runner interface: INT8 (and FP8 on new GPUs) without TensorRT or ONNX.

The deploy wrapper's network is quantised in place by ``torchao.quantization.quantize_``:

- ``int8``: ``Int8DynamicActivationInt8WeightConfig``: weights INT8 per channel, activations
  quantised per token at run time (no calibration set), INT8 matmuls. Runs on CUDA and, more
  slowly, on the CPU.
- ``float8``: ``Float8DynamicActivationFloat8WeightConfig``: FP8 (e4m3) weights and dynamically
  scaled FP8 activations; needs FP8 tensor cores, i.e. CUDA compute capability 8.9 or newer
  (Ada, Hopper, Blackwell). :func:`torchao_schemes` offers it only there.

torchao swaps the weights of ``nn.Linear`` layers whose input and output widths are multiples of
16 (:func:`quantizable`: what the INT8 and FP8 matmul kernels take; a 7-way class head is not);
convolutions, norms, the other layers and the selection tail stay in FP32. The quantised module is then ``torch.compile``'d, which is what turns
torchao's tensor subclasses into fused kernels; the first call per batch size compiles and its time
is kept in ``compile_seconds`` like :class:`~sskd_deploy.runtime.torch_runner.TorchRunner`.

torchao is an optional extra (``pip install .[torchao]``); :func:`torchao_unavailable` says why
it cannot be used here, and nothing in this module imports it at import time.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from sskd_deploy.models.deploy import DeployWrapper
from sskd_deploy.runtime.base import Outputs, RunnerInfo, check_images, check_outputs
from sskd_deploy.runtime.torch_runner import COMPILE_MODES, DEFAULT_MAX_BATCH

SCHEMES = {"int8": "Int8DynamicActivationInt8WeightConfig", "float8": "Float8DynamicActivationFloat8WeightConfig"}
PRECISION = {"int8": "int8", "float8": "fp8"}
FLOAT8_MIN_CAPABILITY = (8, 9)


def torchao_unavailable() -> str | None:
    """``None`` when torchao imports and has both configs, else the reason (for a skipped row)."""
    try:
        import torchao.quantization as quantization
    except Exception as err:  # ImportError, or a torchao built for another torch failing at import
        return f"torchao is not installed or does not import ({type(err).__name__}: {err}); pip install '.[torchao]'"
    missing = [name for name in SCHEMES.values() if not hasattr(quantization, name)]
    if missing:
        return f"torchao {_version()} lacks {', '.join(missing)}: install the version the [torchao] extra pins"
    return None


def _version() -> str:
    try:
        import torchao

        return str(getattr(torchao, "__version__", "?"))
    except Exception:
        return "?"


def cuda_capability(device: str | torch.device) -> tuple[int, int] | None:
    """``(major, minor)`` of a CUDA device, ``None`` for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def torchao_schemes(device: str | torch.device) -> dict[str, str | None]:
    """Each scheme -> ``None`` when it can run on ``device``, else why not."""
    capability = cuda_capability(device)
    schemes: dict[str, str | None] = {"int8": None}
    if capability is None:
        schemes["float8"] = "FP8 matmuls need a CUDA GPU with compute capability >= 8.9"
    elif capability < FLOAT8_MIN_CAPABILITY:
        schemes["float8"] = (f"FP8 matmuls need compute capability >= 8.9; this GPU has "
                             f"{capability[0]}.{capability[1]}")
    else:
        schemes["float8"] = None
    return schemes


def quantization_config(scheme: str) -> Any:
    """The torchao config object of ``scheme`` (``int8`` or ``float8``)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")
    import torchao.quantization as quantization

    return getattr(quantization, SCHEMES[scheme])()


KERNEL_MULTIPLE = 16


def quantizable(module: torch.nn.Module, fqn: str = "") -> bool:
    """The ``filter_fn`` given to ``quantize_``: linear layers the low-precision kernels can take."""
    return (isinstance(module, torch.nn.Linear) and module.in_features % KERNEL_MULTIPLE == 0
            and module.out_features % KERNEL_MULTIPLE == 0)


class TorchaoRunner:
    """A copy of ``wrapper`` with its network quantised by torchao, optionally compiled.

    ``run(images)``: uint8 ``(B, 3, H, W)`` numpy -> ``(scores (B, K) f32, labels (B, K) i64,
    mask_logits (B, K, H/4, W/4) f32)``, the contract of every runner.
    """

    def __init__(self, *, wrapper: DeployWrapper, scheme: str = "int8", device: str = "cpu",
                 threads: int | None = None, name: str | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                 path: str = "", compile: bool = True, compile_mode: str = "default") -> None:
        reason = torchao_unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        why_not = torchao_schemes(device).get(scheme, f"unknown scheme {scheme!r}; have {sorted(SCHEMES)}")
        if why_not is not None:
            raise ValueError(why_not)
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {list(COMPILE_MODES)}, got {compile_mode!r}")
        if threads is not None:
            torch.set_num_threads(int(threads))
        from torchao.quantization import quantize_

        self.device = torch.device(device)
        # a copy: the FP32 rows beside this one keep their weights
        self.wrapper = copy.deepcopy(wrapper).eval().to(self.device)
        linears = [m for m in self.wrapper.model.modules() if isinstance(m, torch.nn.Linear)]
        quantize_(self.wrapper.model, quantization_config(scheme), filter_fn=quantizable)
        kept = sum(1 for m in linears if type(m.weight) is torch.nn.Parameter)
        self.spec = wrapper.spec
        self.max_batch = int(max_batch)
        mode = None if compile_mode == "default" else compile_mode
        self._forward = torch.compile(self.wrapper, dynamic=None, mode=mode) if compile else self.wrapper
        self.compiled = bool(compile)
        self.compile_seconds: dict[int, float] = {}
        details: dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                                   "torchao": _version(), "config": SCHEMES[scheme],
                                   "quantized_linears": len(linears) - kept, "fp32_linears": kept}
        if compile:
            details["compile_mode"] = compile_mode
        self.info = RunnerInfo(name=name or f"torchao-{scheme}", backend="torchao", precision=PRECISION[scheme],
                               device=str(self.device), provider="inductor" if compile else "eager", path=path,
                               details=details)

    def run(self, images: np.ndarray) -> Outputs:
        images = check_images(self.spec, images, max_batch=self.max_batch)
        first = self.compiled and images.shape[0] not in self.compile_seconds
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = self._forward(torch.from_numpy(images).to(self.device))
            arrays = [t.detach().float().to("cpu").numpy() if t.is_floating_point() else t.detach().to("cpu").numpy()
                      for t in outputs]
        if first:
            self.compile_seconds[images.shape[0]] = time.perf_counter() - start
        return check_outputs(self.spec, arrays, images.shape[0])

    def close(self) -> None:
        """Nothing to release beyond the module itself; present for the Runner protocol."""

    def __repr__(self) -> str:
        return f"TorchaoRunner(name={self.info.name!r}, device={self.info.device!r})"
