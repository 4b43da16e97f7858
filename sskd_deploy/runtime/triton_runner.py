"""A model served by Triton behind the Runner interface, over gRPC.

On connect the runner checks, in order: the server is live and ready; the model is ready; its
config carries an IOSpec whose digest matches the one stated next to it (and, when the caller
knows which contract it expects, that one too); the served input and outputs (names, datatypes,
shapes) are exactly the IOSpec's. Only then does it send images. The IOSpec comes from the server,
so a client needs nothing but the URL to preprocess and postprocess correctly.

``run`` is safe to call from several threads: each thread gets its own gRPC client.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from sskd_deploy.errors import SSKDError
from sskd_deploy.runtime.base import Outputs, RunnerInfo, check_images, check_outputs
from sskd_deploy.spec import IOSpec

TRITON_DATATYPES = {"uint8": "UINT8", "float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32"}


class TritonError(SSKDError):
    """The server is unreachable, the model is missing or its contract differs, or a request failed."""


def _grpc():
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    return grpcclient, InferenceServerException


def served_models(url: str) -> list[dict[str, Any]]:
    """The repository index: ``[{"name", "version", "state", "reason"}]``."""
    grpcclient, error = _grpc()
    client = grpcclient.InferenceServerClient(url)
    try:
        index = client.get_model_repository_index(as_json=True)
    except error as err:
        raise TritonError(f"{url}: cannot list models ({err.message()})") from None
    finally:
        client.close()
    return [dict(m) for m in index.get("models", [])]


def check_metadata(spec: IOSpec, metadata: dict[str, Any], model: str) -> None:
    """The served tensors must be the IOSpec's: names, datatypes and shapes (batch as -1)."""
    def entries(items, tensors):
        got = [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in items]
        want = [(t.name, TRITON_DATATYPES[t.dtype], list(t.shape)) for t in tensors]
        return got, want

    for kind, items, tensors in (("inputs", metadata.get("inputs", []), [spec.input]),
                                 ("outputs", metadata.get("outputs", []), list(spec.outputs))):
        got, want = entries(items, tensors)
        if sorted(got) != sorted(want):
            raise TritonError(f"model {model!r}: served {kind} {got} differ from its IOSpec's {want}")


class TritonRunner:
    """Runs ``model`` on the Triton server at ``url`` (``host:port`` of the gRPC endpoint)."""

    def __init__(self, url: str, model: str | None = None, *, name: str = "triton", expect_digest: str | None = None,
                 timeout_s: float = 60.0) -> None:
        grpcclient, error = _grpc()
        self.url, self.timeout_s = url, timeout_s
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        client = self._client()
        try:
            if not (client.is_server_live() and client.is_server_ready()):
                raise TritonError(f"{url}: server is not ready")
        except error as err:
            raise TritonError(f"{url}: cannot reach a Triton server ({err.message()})") from None
        self.model = model or self._only_model(url)
        try:
            if not client.is_model_ready(self.model):
                raise TritonError(f"{url}: model {self.model!r} is not ready (served: "
                                  f"{', '.join(m['name'] for m in served_models(url)) or 'none'})")
            config = client.get_model_config(self.model, as_json=True)["config"]
            metadata = client.get_model_metadata(self.model, as_json=True)
        except error as err:
            raise TritonError(f"{url}: model {self.model!r}: {err.message()}") from None
        self.spec, self.precision = self._contract(config, expect_digest)
        check_metadata(self.spec, metadata, self.model)
        self.max_batch = int(config.get("max_batch_size", 0)) or 1
        self.config = config
        self.info = RunnerInfo(
            name=name, backend="triton", precision=self.precision, device="remote",
            provider=f"triton {config.get('backend') or config.get('platform')}", path=f"grpc://{url}/{self.model}",
            details={"model": self.model, "versions": metadata.get("versions", []),
                     "platform": config.get("platform", ""), "backend": config.get("backend", ""),
                     "max_batch_size": self.max_batch},
        )

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            grpcclient, _ = _grpc()
            client = grpcclient.InferenceServerClient(self.url)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    @staticmethod
    def _only_model(url: str) -> str:
        ready = [m["name"] for m in served_models(url) if m.get("state") == "READY"]
        if len(ready) != 1:
            raise TritonError(f"{url}: {len(ready)} models are ready ({', '.join(ready) or 'none'}); name one "
                              "with --model")
        return ready[0]

    def _contract(self, config: dict[str, Any], expect_digest: str | None) -> tuple[IOSpec, str]:
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        if "iospec" not in params:
            raise TritonError(f"model {self.model!r} at {self.url}: its config has no IOSpec parameter (not a "
                              "repository sskd-deploy generated)")
        spec = IOSpec.from_json(params["iospec"], source=f"model {self.model!r} config parameter 'iospec'")
        if params.get("iospec_sha256") != spec.digest():
            raise TritonError(f"model {self.model!r}: the IOSpec in its config does not match its stated digest")
        if expect_digest is not None and spec.digest() != expect_digest:
            raise TritonError(f"model {self.model!r} at {self.url} serves IOSpec {spec.digest()[:12]}, the "
                              f"artifact's is {expect_digest[:12]}: a different model contract")
        return spec, params.get("precision", "unknown")

    def infer_raw(self, images: np.ndarray) -> Outputs:
        """Send ``images`` as they are (no local checks): for probing the server's own validation."""
        grpcclient, error = _grpc()
        images = np.asarray(images)
        dtype = TRITON_DATATYPES.get(images.dtype.name, images.dtype.name.upper())
        tensor = grpcclient.InferInput(self.spec.input_name, list(images.shape), dtype)
        tensor.set_data_from_numpy(images)
        wanted = [grpcclient.InferRequestedOutput(n) for n in self.spec.output_names]
        try:
            result = self._client().infer(self.model, [tensor], outputs=wanted, client_timeout=self.timeout_s)
        except error as err:
            raise TritonError(f"{self.url}: model {self.model!r}: {err.message()}") from None
        return tuple(result.as_numpy(n) for n in self.spec.output_names)  # type: ignore[return-value]

    def run(self, images: np.ndarray) -> Outputs:
        images = check_images(self.spec, images, max_batch=self.max_batch)
        return check_outputs(self.spec, self.infer_raw(images), images.shape[0])

    def statistics(self) -> dict[str, Any]:
        """Server-side counters of this model (requests, executions, queue and compute time)."""
        _, error = _grpc()
        try:
            stats = self._client().get_inference_statistics(self.model, as_json=True)
        except error as err:
            raise TritonError(f"{self.url}: statistics of {self.model!r}: {err.message()}") from None
        return (stats.get("model_stats") or [{}])[0]

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"TritonRunner({self.url!r}, model={self.model!r})"
