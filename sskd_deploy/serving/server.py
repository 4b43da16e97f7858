"""Find a ``tritonserver``, start it on a generated repository, wait until the model is ready, stop it cleanly.

Two kinds of install are recognised:

- A Triton install tree (NVIDIA's containers: ``/opt/tritonserver/bin/tritonserver`` with ``backends/``),
  from ``serve.triton_home``, ``$SSKD_TRITON_HOME`` or ``tritonserver`` on ``PATH``.
- The real ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel, installed in a separate
  virtual environment (``serve.backend_env``, ``$SSKD_TRITON_ENV``, default ``<this venv>/triton-env``;
  ``make install`` creates it). It is separate because the wheel pins ``numpy<2`` and the Python
  backend's C++ tensor bridge reads numpy-2 arrays as empty, while this project runs on numpy 2.

For the bundled server three things must be arranged, all found by experiment on this machine:
the backend stub for the environment's Python version is taken from ``python_backend_stubs/<ver>/``
(assembled, with the backend library, in a private ``--backend-directory``); the stub embeds
``libpython`` and must load the environment's own (``LD_LIBRARY_PATH`` = the interpreter's LIBDIR,
else it finds the system's and fails on a standard-library mismatch); and the embedded interpreter
locates its ``site-packages`` from the first ``python3`` on ``PATH``, so the environment's ``bin`` goes first.

The server runs in its own session (process group); :meth:`TritonServer.stop` signals the group,
so the backend stubs go with it and no process is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sskd_deploy.errors import SSKDError


class ServeError(SSKDError):
    """The server could not be found, started, or reached."""


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backends: tuple[str, ...]  # backend names available to this install
    backend_dir: Path | None  # --backend-directory; None: the install's default
    env: dict[str, str] = field(default_factory=dict)  # variables the server process needs
    source: str = ""  # how it was found, for messages
    python_stub: Path | None = None  # bundled installs: the stub to place in the private backend dir
    python_backend: Path | None = None  # bundled installs: directory with libtriton_python.so

    def describe(self) -> str:
        return f"{self.binary} ({self.source}; backends: {', '.join(self.backends) or 'none'})"


def _backends_in(directory: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in directory.iterdir() if p.is_dir())) if directory.is_dir() else ()


def _install_tree(home: Path, source: str) -> TritonInstall:
    binary = home / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServeError(f"{home}: no bin/tritonserver here ({source})")
    return TritonInstall(binary=binary, backends=_backends_in(home / "backends"), backend_dir=home / "backends",
                         source=source)


_PROBE = """
import json, sys, sysconfig, pathlib
import pytriton
root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
print(json.dumps({"root": str(root), "libdir": sysconfig.get_config_var("LIBDIR"),
                  "version": f"{sys.version_info[0]}.{sys.version_info[1]}"}))
"""


def _bundled(env_dir: Path, source: str) -> TritonInstall:
    python = env_dir / "bin" / "python"
    if not python.is_file():
        raise ServeError(f"{env_dir}: not a virtual environment (no bin/python) ({source})")
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        raise ServeError(f"{env_dir}: nvidia-pytriton is not installed in this environment ({source}); "
                         f"create it with `make triton-env` (or: {python} -m pip install nvidia-pytriton "
                         f"onnxruntime 'numpy<2')")
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    root = Path(info["root"])
    stub = root / "python_backend_stubs" / info["version"] / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServeError(f"{root}: no Python-backend stub for Python {info['version']}")
    libs = [info["libdir"], str(root.parent.parent / "nvidia_pytriton.libs")]
    if os.environ.get("LD_LIBRARY_PATH"):
        libs.append(os.environ["LD_LIBRARY_PATH"])
    env = {"PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "LD_LIBRARY_PATH": os.pathsep.join(libs), "VIRTUAL_ENV": str(env_dir)}
    return TritonInstall(binary=root / "bin" / "tritonserver", backends=_backends_in(root / "backends"),
                         backend_dir=None, env=env, source=source, python_stub=stub,
                         python_backend=root / "backends" / "python")


def default_backend_env() -> Path:
    return Path(sys.prefix) / "triton-env"


def locate_triton(triton_home: Path | None = None, backend_env: Path | None = None) -> TritonInstall:
    """The Triton install to use; explicit settings win, then environment variables, then discovery."""
    if triton_home is not None:
        return _install_tree(Path(triton_home), "serve.triton_home")
    if os.environ.get("SSKD_TRITON_HOME"):
        return _install_tree(Path(os.environ["SSKD_TRITON_HOME"]), "$SSKD_TRITON_HOME")
    if backend_env is not None:
        return _bundled(Path(backend_env), "serve.backend_env")
    if os.environ.get("SSKD_TRITON_ENV"):
        return _bundled(Path(os.environ["SSKD_TRITON_ENV"]), "$SSKD_TRITON_ENV")
    on_path = shutil.which("tritonserver")
    if on_path:
        return _install_tree(Path(on_path).resolve().parent.parent, "tritonserver on PATH")
    if default_backend_env().is_dir():
        return _bundled(default_backend_env(), "default backend environment")
    raise ServeError("no Triton server found: set serve.triton_home (a Triton install with bin/tritonserver), "
                     f"or create the bundled one with `make triton-env` (a venv at {default_backend_env()} with "
                     "nvidia-pytriton, onnxruntime and numpy<2)")


def choose_form(install: TritonInstall, requested: str, *, has_engine: bool) -> str:
    """Which repository form this install can serve: ``auto`` prefers the native ONNX Runtime backend."""
    available = {"python": "python" in install.backends, "onnxruntime": "onnxruntime" in install.backends,
                 "tensorrt": "tensorrt" in install.backends and has_engine,
                 "openvino": "openvino" in install.backends}
    if requested == "auto":
        for form in ("onnxruntime", "python"):
            if available[form]:
                return form
        raise ServeError(f"{install.describe()}: neither the onnxruntime nor the python backend is installed")
    if not available[requested]:
        why = "the artifact has no TensorRT engine" if requested == "tensorrt" and not has_engine else \
            f"this install has no {requested} backend"
        raise ServeError(f"serve.backend={requested}: {why} ({install.describe()})")
    return requested


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's choice); for tests and ``--grpc-port 0``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> list[int]:
    """PIDs still in process group ``pgid`` (Linux /proc)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


class TritonServer:
    """One ``tritonserver`` process serving ``models`` from ``repository``; a context manager."""

    def __init__(self, install: TritonInstall, repository: Path, models: list[str], *, host: str = "127.0.0.1",
                 grpc_port: int = 8001, http_port: int = 8000, metrics_port: int = 8002,
                 log_path: Path | None = None, startup_timeout_s: float = 120.0) -> None:
        self.install, self.repository, self.models = install, Path(repository).resolve(), list(models)
        self.host, self.grpc_port, self.http_port, self.metrics_port = host, grpc_port, http_port, metrics_port
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self._scratch: Path | None = None
        self._log = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def _backend_dir(self) -> Path | None:
        if self.install.python_stub is None:
            return self.install.backend_dir
        # A private backend directory: the bundled backend library plus the stub for this Python.
        self._scratch = Path(tempfile.mkdtemp(prefix="sskd-triton-backends-"))
        python = self._scratch / "python"
        python.mkdir()
        for item in self.install.python_backend.iterdir():  # type: ignore[union-attr]
            (python / item.name).symlink_to(item)
        (python / "triton_python_backend_stub").symlink_to(self.install.python_stub)
        return self._scratch

    def command(self, backend_dir: Path | None) -> list[str]:
        cmd = [str(self.install.binary), f"--model-repository={self.repository}", "--model-control-mode=explicit",
               *(f"--load-model={m}" for m in self.models), "--disable-auto-complete-config",
               "--strict-readiness=true", "--exit-timeout-secs=10", "--log-verbose=0",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        return cmd

    def start(self) -> TritonServer:
        for label, port in (("grpc", self.grpc_port), ("http", self.http_port), ("metrics", self.metrics_port)):
            if not port_free(self.host, port):
                raise ServeError(f"{label} port {self.host}:{port} is already in use (choose another with "
                                 f"--{label}-port)")
        cmd = self.command(self._backend_dir())
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "w+b")  # noqa: SIM115 - closed in stop()
        else:
            self._log = tempfile.TemporaryFile()  # noqa: SIM115
        env = {**os.environ, **self.install.env}
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 25) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        keep = [line for line in text.splitlines() if line.strip() and not line.startswith(("|", "+"))]
        return "\n".join(keep[-lines:])

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            while True:
                code = self.process.poll()  # type: ignore[union-attr]
                if code is not None:
                    raise ServeError(f"tritonserver exited with code {code} while starting:\n{self.log_tail()}")
                try:
                    if client.is_server_ready() and all(client.is_model_ready(m) for m in self.models):
                        return
                except InferenceServerException:
                    pass
                if time.monotonic() > deadline:
                    raise ServeError(f"tritonserver not ready after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")
                time.sleep(0.2)
        finally:
            client.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the whole process group, SIGKILL to whatever is left after ``timeout_s``."""
        process, self.process = self.process, None
        if process is not None:
            pgid = process.pid  # start_new_session: the server leads its own group
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 5.0
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _group_alive(pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if process.poll() is None:
                process.wait(timeout=10)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.close_log()
