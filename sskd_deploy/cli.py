"""The ``sskd-deploy`` command line.

Each command parses its options, loads a config where it has one, and calls one library
function (most of them in :mod:`sskd_deploy.commands`). Imports of numpy, torch and friends
happen inside the commands so ``--help`` is instant. User errors
(:class:`sskd_deploy.errors.SSKDError`) become one red line on stderr and exit code 2; nothing
else is swallowed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="sskd-deploy",
    help="Semi-supervised distillation of foundation models into small instance-segmentation experts, "
    "compiled and served.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Generate, inspect and validate datasets.", no_args_is_help=True)
config_app = typer.Typer(help="Validate and print configuration files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
model_app = typer.Typer(help="Inspect model presets and checkpoints.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
teacher_app = typer.Typer(help="The Grounding DINO + SAM2 foundation-model teacher: zero-shot AP and "
                               "pseudo-labels.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")

ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config (default: the embedded default).")
]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config value, e.g. data.synth.num_train=50.")
]


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _parse_size(text: str) -> tuple[int, int]:
    """``"192x256"`` (height x width) or ``"224"`` (square)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"expected HxW or N, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise typer.BadParameter(f"expected HxW with positive sides, got {text!r}")
    return values[0], values[1]


def _load_config(path: Optional[Path], overrides: Optional[list[str]]):
    from sskd_deploy.config import apply_overrides, load_config

    config = load_config(path)
    return apply_overrides(config, list(overrides or []))


@app.command()
def run(config: ConfigOption = None, set_: SetOption = None) -> None:
    """The main job on a config (default: the embedded synthetic world): prepare and check the data,
    draw overlays, and write a run manifest."""
    from sskd_deploy.commands.run import run_pipeline

    run_pipeline(_load_config(config, set_), console=_console())


@app.command()
def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    stages: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated stages to run: teacher_1a, teacher_1b, student_2, student_3, supervised."),
    ] = None,
) -> None:
    """Three-stage SSKD training (teacher adaptation, distillation, refinement) plus the supervised
    baseline. Finished stages are skipped; an interrupted stage resumes from its last checkpoint."""
    from sskd_deploy.commands.train import train_command

    train_command(_load_config(config, set_), stages=stages, console=_console())


@app.command()
def pretrain(
    out: Annotated[Path, typer.Option("--out", "-o", help="Pretraining folder (resumed when it exists).")] = Path(
        "runs/pretrain"),
    part: Annotated[Optional[list[str]], typer.Option(
        help="What to pretrain: teacher (teacher-tiny, whole model) and/or student (student-tiny; its encoder "
             "is saved as a Dinov2Model directory). Repeat for both (default: both).")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps per part.")] = 3000,
    batch_size: Annotated[int, typer.Option(help="Source images per step (each one new).")] = 8,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (warm-up, then poly decay).")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the source world's images and of the training.")] = 0,
    image_size: Annotated[str, typer.Option(help="Image size HxW (multiples of 32).")] = "192x256",
    eval_every: Annotated[int, typer.Option(help="Source-val mask AP every N steps (0: at the end only).")] = 500,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
    init: Annotated[Optional[Path], typer.Option(
        help="Continue a completed pretraining folder, or a shipped folder ('shipped': the package's own "
             "stand-ins): start from its weights, on images it has not seen, with a new schedule of --steps "
             "(steps and time add up in the provenance).")] = None,
    ship_to: Annotated[Optional[Path], typer.Option(
        "--ship", help="Afterwards, write the FP16 shipped form here (the package's: sskd_deploy/weights/shipped).")] = None,
) -> None:
    """Pretrain the foundation stand-ins (teacher-tiny, student-tiny encoder) on the synthetic source
    world: a wider named vocabulary in a different rendering style. Resumable; records provenance."""
    from sskd_deploy.errors import ConfigError
    from sskd_deploy.training.context import pick_device
    from sskd_deploy.training.pretrain import PretrainSettings, pretrain as run_pretrain, ship

    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        settings = PretrainSettings(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                    image_size=_parse_size(image_size), eval_every=eval_every,
                                    init=_pretrain_init(init))
        console = _console()
        provenance = run_pretrain(out, settings, parts=tuple(part or ("teacher", "student")),
                                  device=pick_device(device), console=console, log=console.print)
        if ship_to is not None:
            ship(out, ship_to)
            console.print(f"shipped to {ship_to}")
    except ValueError as err:
        raise ConfigError(None, [str(err)]) from None
    for name, record in provenance["parts"].items():
        console.print(f"{name}: {record['steps']} steps, source val mask AP {record['val_ap']:.1f}")


def _pretrain_init(init: Optional[Path]) -> str | None:
    """``--init``: a folder, or the keyword ``shipped`` for the stand-ins that come with the package."""
    if init is None:
        return None
    from sskd_deploy.weights import FOLDER, SHIPPED

    return str(FOLDER if str(init) == SHIPPED else init.resolve())


@app.command()
def export(
    config: ConfigOption = None,
    set_: SetOption = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint (default: the run's latest student).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Artifact directory (default: <run>/export).")] = None,
    int8: Annotated[Optional[bool], typer.Option("--int8/--no-int8", help="Also write the INT8 Q/DQ graph.")] = None,
    fp16: Annotated[Optional[bool], typer.Option("--fp16/--no-fp16", help="Also write the FP16 graph.")] = None,
    calib: Annotated[Optional[Path], typer.Option(help="Folder of calibration images (default: unlabeled split).")] = None,
    calib_count: Annotated[Optional[int], typer.Option(help="Calibration images to use.")] = None,
    calib_method: Annotated[Optional[str], typer.Option(help="minmax | entropy | percentile.")] = None,
    recalibrate: Annotated[bool, typer.Option("--recalibrate", help="Ignore the calibration cache.")] = False,
    max_ap_drop: Annotated[Optional[float], typer.Option(help="INT8 AP budget in points (default 1.0).")] = None,
    mixed: Annotated[Optional[bool], typer.Option("--mixed/--no-mixed", help="AP-budgeted mixed precision.")] = None,
    tensorrt: Annotated[Optional[str], typer.Option(help="Build TensorRT engines: auto | on | off.")] = None,
    verify: Annotated[Optional[bool], typer.Option("--verify/--no-verify", help="Run the parity gate.")] = None,
) -> None:
    """Compile the student: ONNX FP32, FP16, INT8 (calibrated on unlabeled images) and TensorRT engines,
    with a manifest and the parity gate against PyTorch (exit 1 when a budget is broken)."""
    from sskd_deploy.commands.export import export_command

    flags = {"export.checkpoint": checkpoint, "export.out_dir": out, "export.int8": int8, "export.fp16": fp16,
             "export.calibration.images": calib, "export.calibration.count": calib_count,
             "export.calibration.method": calib_method, "export.budgets.int8_ap": max_ap_drop,
             "export.mixed_precision": mixed, "export.tensorrt": tensorrt, "export.verify": verify}
    overrides = [*(set_ or []), *(f"{k}={_yaml_scalar(v)}" for k, v in flags.items() if v is not None)]
    manifest = export_command(_load_config(config, overrides), console=_console(), recalibrate=recalibrate)
    if not manifest.get("parity", {"ok": True})["ok"]:
        raise typer.Exit(1)


@app.command("verify")
def verify_cmd(
    artifact_dir: Annotated[Path, typer.Argument(help="Directory written by sskd-deploy export.")],
    config: ConfigOption = None,
    set_: SetOption = None,
    max_ap_drop: Annotated[Optional[float], typer.Option(help="INT8 AP budget in points (default 1.0).")] = None,
    split: Annotated[str, typer.Option(help="val, or labeled (the training labels: a sanity check where the "
                                            "model's AP is high).")] = "val",
    triton: Annotated[Optional[str], typer.Option(help="gRPC URL of a server (host:port): compare it with the same "
                                                       "graph run in-process instead.")] = None,
    triton_model: Annotated[Optional[str], typer.Option(help="Served model name (default: the only one).")] = None,
) -> None:
    """Parity gate: the val split through PyTorch and every compiled form in ARTIFACT_DIR; tensor
    differences, decision agreement and mask AP; parity.json + parity.md; exit 1 on a broken budget.
    With --triton: the served model against the same graph in-process (parity_triton.json)."""
    from sskd_deploy.commands.export import verify_command

    overrides = [*(set_ or []), *([f"export.budgets.int8_ap={max_ap_drop}"] if max_ap_drop is not None else [])]
    report = verify_command(artifact_dir, _load_config(config, overrides), console=_console(), split=split,
                            triton=triton, triton_model=triton_model)
    if not report["ok"]:
        raise typer.Exit(1)


@app.command()
def serve(
    artifact_dir: Annotated[Optional[Path], typer.Argument(help="Export directory (default: <run>/export).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    grpc_port: Annotated[Optional[int], typer.Option(help="gRPC port (0: any free port; default 8001).")] = None,
    http_port: Annotated[Optional[int], typer.Option(help="HTTP port (0: any free port; default 8000).")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="Metrics port (0: any free port; default 8002).")] = None,
    host: Annotated[Optional[str], typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="Graph to serve: fp32, fp16, int8 or mixed.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, python, onnxruntime, tensorrt or openvino.")] = None,
    repository: Annotated[Optional[Path], typer.Option(help="Where to generate the model repository.")] = None,
) -> None:
    """Generate the Triton model repository from the artifact's IOSpec, start tritonserver, wait until
    the model is ready, print where it listens, and serve until Ctrl-C / SIGTERM (then stop it all)."""
    from sskd_deploy.commands.serve import serve_command

    flags = {"serve.grpc_port": grpc_port, "serve.http_port": http_port, "serve.metrics_port": metrics_port,
             "serve.host": host, "serve.precision": precision, "serve.backend": backend,
             "serve.repository": None if repository is None else str(repository)}
    overrides = [*(set_ or []), *(f"{k}={_yaml_scalar(v)}" for k, v in flags.items() if v is not None)]
    code = serve_command(_load_config(config, overrides), artifact_dir, console=_console())
    if code:
        raise typer.Exit(code)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    url: Annotated[str, typer.Option(help="gRPC endpoint of the server, host:port.")] = "127.0.0.1:8001",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: predictions.json and overlays/.")] = Path(
        "predictions"),
    model: Annotated[Optional[str], typer.Option(help="Served model name (default: the only ready one).")] = None,
    artifact: Annotated[Optional[Path], typer.Option(help="Export directory whose IOSpec the server must match.")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 4,
    batch: Annotated[int, typer.Option(help="Images per request.")] = 1,
    score_threshold: Annotated[float, typer.Option(help="Drop instances scoring below this.")] = 0.05,
    overlays: Annotated[bool, typer.Option("--overlays/--no-overlays", help="Write overlay PNGs.")] = True,
) -> None:
    """Send images to a served model over gRPC (readiness, metadata and IOSpec checks first); write
    COCO-style predictions.json (RLE masks, boxes, scores) and overlay PNGs. Exit 2 if any image failed."""
    from sskd_deploy.commands.serve import predict_command

    code = predict_command(url, list(images), out=out, model=model, artifact_dir=artifact, concurrency=concurrency,
                           batch_size=batch, score_threshold=score_threshold, overlays=overlays,
                           console=_console())
    if code:
        raise typer.Exit(code)


@app.command()
def bench(
    artifact_dir: Annotated[Optional[Path], typer.Argument(help="Export directory (default: <run>/export if any).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    model: Annotated[Optional[list[str]], typer.Option(help="Also time a preset (random weights) or checkpoint, with its ONNX graphs (repeatable).")] = None,
    pair: Annotated[Optional[list[str]], typer.Option(help="TEACHER:STUDENT (presets or checkpoints) timed at one input size (repeatable; replaces bench.pairs).")] = None,
    no_pairs: Annotated[bool, typer.Option("--no-pairs", help="Time no teacher/student pair.")] = False,
    input_size: Annotated[Optional[str], typer.Option(help="HxW for --model presets and pairs.")] = None,
    batch: Annotated[Optional[str], typer.Option(help="Batch sizes, e.g. 1,2,4 (default: bench.batches).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for every runner.")] = None,
    iters: Annotated[Optional[int], typer.Option(help="Timed calls per runner and batch size.")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Untimed calls first.")] = None,
    compile_: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile row.")] = None,
    roofline: Annotated[Optional[bool], typer.Option("--roofline/--no-roofline", help="Measure peaks; %% of peak per row.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="JSON to write (CSV and PNGs go beside it).")] = None,
    triton: Annotated[Optional[str], typer.Option(help="Also load-test a Triton server at this gRPC URL.")] = None,
    triton_model: Annotated[Optional[str], typer.Option(help="Served model name (default: the only one).")] = None,
    concurrency: Annotated[str, typer.Option(help="Triton: requests in flight per level, e.g. 1,4,8.")] = "1,4,8",
    duration: Annotated[float, typer.Option(help="Triton: seconds per concurrency level.")] = 10.0,
    profile: Annotated[Optional[list[str]], typer.Option(help="Write the top ops by time of this runner (e.g. onnxruntime-int8, openvino-int8), batch 1 (repeatable).")] = None,
) -> None:
    """Latency (p50/p90/p99, pre/infer/post) and throughput of every runner at every batch size, % of the
    measured FP32/INT8 peak, teacher/student pairs, plots; with --triton, the served model under load."""
    from sskd_deploy.bench.load import parse_levels
    from sskd_deploy.commands.bench import bench_command

    try:
        levels = parse_levels(concurrency)
        batches = None if batch is None else [int(b) for b in batch.split(",") if b.strip()]
        pairs = None if pair is None else [_parse_pair(p) for p in pair]
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if duration <= 0:
        raise typer.BadParameter(f"--duration must be positive, got {duration}")
    flags = {"bench.batches": batches, "bench.threads": threads, "bench.iters": iters, "bench.warmup": warmup,
             "bench.compile": compile_, "bench.roofline": roofline, "bench.models": model or None,
             "bench.pairs": [] if no_pairs else pairs, "bench.profile": profile or None,
             "bench.input_size": None if input_size is None else list(_parse_size(input_size))}
    overrides = [*(set_ or []), *(f"{k}={_yaml_value(v)}" for k, v in flags.items() if v is not None)]
    bench_command(_load_config(config, overrides), artifact_dir, out=out, console=_console(), triton=triton,
                  triton_model=triton_model, concurrency=levels, duration_s=duration)


def _parse_pair(text: str) -> list[str]:
    teacher, sep, student = text.partition(":")
    if not sep or not teacher or not student:
        raise ValueError(f"--pair expects TEACHER:STUDENT, got {text!r}")
    return [teacher, student]


def _yaml_value(value: object) -> str:
    """A flag value (scalar or list) as YAML flow text for an override."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return _yaml_scalar(value)


def _yaml_scalar(value: object) -> str:
    """A CLI flag value as the YAML text an override expects (paths stay text, booleans lower-case)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))  # quoted: YAML would read a bare `on`/`off` as a boolean


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="YAML config to validate.")],
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing when the file is valid.")] = False,
) -> None:
    """Validate FILE (every problem reported at once) and print the resolved config."""
    from sskd_deploy.config import config_hash, dump_config

    cfg = _load_config(file, set_)
    if not quiet:
        console = _console()
        console.print(f"[green]ok[/green] {file} (config hash {config_hash(cfg)[:12]})")
        console.print(dump_config(cfg), markup=False, end="")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset directory.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 0,
    num_train: Annotated[int, typer.Option(help="Train images (labeled + unlabeled).")] = 400,
    num_val: Annotated[int, typer.Option(help="Labeled validation images.")] = 100,
    labeled_fraction: Annotated[float, typer.Option(help="Fraction of train images that keep labels.")] = 0.1,
    image_size: Annotated[str, typer.Option(help="Image size HxW, e.g. 192x256.")] = "192x256",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
) -> None:
    """Generate the synthetic instance-segmentation world (the embedded default dataset)."""
    from sskd_deploy.data.sources import synthesize

    size = _parse_size(image_size)
    synthesize(
        out,
        dict(seed=seed, num_train=num_train, num_val=num_val, labeled_fraction=labeled_fraction, image_size=size),
        overwrite=force,
        console=_console(),
    )


@data_app.command("show")
def data_show(
    path: Annotated[Path, typer.Argument(help="Dataset directory, COCO JSON, Cityscapes root or image folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")],
    split: Annotated[Optional[str], typer.Option(help="Split to draw (default: the first labeled one).")] = None,
    num: Annotated[int, typer.Option(help="Number of images to draw.")] = 8,
    columns: Annotated[int, typer.Option(help="Images per row.")] = 4,
    seed: Annotated[int, typer.Option(help="Which images: a seeded sample (-1: the first ones).")] = 0,
) -> None:
    """Draw mask overlays with class names for a few images of a dataset."""
    from sskd_deploy.commands.data import show_dataset

    console = _console()
    written = show_dataset(path, out, split=split, num=num, columns=columns, seed=seed,
                           log=lambda line: console.print(line, markup=False, soft_wrap=True))
    console.print(f"wrote {written}")


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="Dataset directory, COCO JSON, Cityscapes root or image folder.")],
) -> None:
    """Validate a dataset and list every problem found (exit code 1 when there are any)."""
    from sskd_deploy.commands.data import check_command

    report = check_command(path, console=_console())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def report(
    run_dir: Annotated[Optional[Path], typer.Argument(help="Run directory (default: the config's run.out_dir, "
                                                           "e.g. runs/default).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file to write "
                                                                    "(default: RUN_DIR/report.html).")] = None,
    num_overlays: Annotated[int, typer.Option(min=0, help="Best and worst val images to draw, each "
                                                          "(0: none).")] = 4,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """One self-contained HTML page for a run: data, per-stage AP beside the paper, curves, best and worst
    val images, parity, latency and environment. Prints the path of the page."""
    from sskd_deploy.report import build_report

    console = _console(stderr=True)  # progress to stderr: stdout carries only the path, for scripts
    if run_dir is None:
        run_dir = Path(_load_config(config, set_).run.out_dir)
        console.print(f"reporting on {run_dir} (the config's run.out_dir)", markup=False, soft_wrap=True)
    written = build_report(run_dir, out=out, num_overlays=num_overlays,
                           log=lambda line: console.print(line, markup=False))
    print(written)


@app.command("eval")
def eval_(
    pred: Annotated[Path, typer.Option("--pred", help="COCO results JSON (segmentation RLE, score).")],
    gt: Annotated[Path, typer.Option("--gt", help="COCO instances JSON with the ground truth.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the metrics JSON.")] = None,
) -> None:
    """COCO mask AP, AP50, AP75, APs/m/l and per-class AP of PRED against GT."""
    from sskd_deploy.evaluation import evaluate_coco, format_eval_table
    from sskd_deploy.io import atomic_write_json

    result = evaluate_coco(gt, pred)
    _console().print(format_eval_table(result, title=f"mask AP of {pred.name}"))
    target = out or pred.with_name(pred.stem + ".metrics.json")
    atomic_write_json(target, result.to_dict(), indent=2)
    _console().print(f"wrote {target}")


@model_app.command("info")
def model_info_cmd(
    name: Annotated[str, typer.Argument(help="Preset (student-s, student-tiny, teacher-l, teacher-tiny) or checkpoint.")],
    input_size: Annotated[Optional[str], typer.Option(help="Input size HxW (default: the model's).")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes for a preset (a checkpoint has its own).")] = 8,
    iters: Annotated[int, typer.Option(help="Timed CPU forward passes at batch 1 (0: skip latency).")] = 5,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures as JSON.")] = None,
) -> None:
    """Parameters per part, GFLOPs (torch.utils.flop_counter) and measured CPU latency of a model."""
    from sskd_deploy.commands.model import describe_model

    describe_model(name, input_size=_parse_size(input_size) if input_size else None, num_classes=num_classes,
                   iters=iters, threads=threads, json_out=json_out, console=_console())


@model_app.command("profile")
def model_profile_cmd(
    config: ConfigOption = None,
    set_: SetOption = None,
    role: Annotated[str, typer.Option(help="student or teacher (a MaskFormer preset).")] = "student",
    steps: Annotated[int, typer.Option(help="Timed training steps.")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed steps first.")] = 2,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (default: the supervised stage's).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures as JSON.")] = None,
) -> None:
    """Where a training step's time goes (data, forward, matching, loss, backward, optimizer), measured on
    the config's labeled data with its recipe."""
    from sskd_deploy.commands.model import profile_training_step

    profile_training_step(_load_config(config, set_), role=role, steps=steps, warmup=warmup, batch_size=batch_size,
                          threads=threads, json_out=json_out, console=_console())


WeightsOption = Annotated[Optional[Path], typer.Option(
    "--weights", help="Grounded-SAM2 weights directory (grounding_dino/ and sam2/ inside); default: the "
                      "config's train.grounded_sam2.weights.")]
AllowDownload = Annotated[bool, typer.Option(
    "--allow-download", help="Fetch missing weights from the Hugging Face Hub (from_pretrained).")]


BoxThreshold = Annotated[Optional[float], typer.Option(help="Box score threshold (default 0.3).")]
MaxInstances = Annotated[Optional[int], typer.Option(help="At most this many boxes (instances) per image.")]
TeacherBatch = Annotated[Optional[int], typer.Option(help="Images per teacher call.")]
TeacherInputSize = Annotated[Optional[str], typer.Option(help="Grounding DINO input HxW (default: "
                                                              "train.grounded_sam2.input_size, else train.input_size).")]
TeacherDevice = Annotated[Optional[str], typer.Option(help="auto | cpu | cuda (default: train.device).")]


def _grounded_settings(config_path, overrides, *, weights, allow_download, box_threshold, max_instances,
                       batch_size, input_size, device):
    """The config's grounded_sam2 section with the command-line choices applied (its input size always
    resolved) and the device."""
    from sskd_deploy.config.teacher import GroundedSam2Config

    config = _load_config(config_path, overrides)
    g = config.train.grounded_sam2
    changes = {"allow_download": allow_download or g.allow_download}
    for key, value in (("weights", weights), ("box_threshold", box_threshold), ("max_instances", max_instances),
                       ("batch_size", batch_size)):
        if value is not None:
            changes[key] = value
    if input_size:
        changes["input_size"] = _parse_size(input_size)
    elif g.input_size is None:
        changes["input_size"] = tuple(config.train.input_size or (800, 1344))
    cfg = GroundedSam2Config.model_validate({**g.model_dump(), **changes})
    return cfg, device or config.train.device


@teacher_app.command("zero-shot")
def teacher_zero_shot(
    data: Annotated[Path, typer.Option("--data", help="Dataset directory or COCO json with a labeled split.")],
    weights: WeightsOption = None,
    split: Annotated[Optional[str], typer.Option(help="Split to evaluate (default: val when present).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for eval.json and "
                                                          "predictions.json.")] = Path("runs/zero_shot"),
    box_threshold: BoxThreshold = None,
    max_instances: MaxInstances = None,
    batch_size: TeacherBatch = None,
    input_size: TeacherInputSize = None,
    device: TeacherDevice = None,
    allow_download: AllowDownload = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Zero-shot mask AP of Grounding DINO + SAM2 on a labeled split (the paper's zero-shot VFM row)."""
    from sskd_deploy.commands.teacher import zero_shot_command

    cfg, device = _grounded_settings(config, set_, weights=weights, allow_download=allow_download,
                                     box_threshold=box_threshold, max_instances=max_instances,
                                     batch_size=batch_size, input_size=input_size, device=device)
    zero_shot_command(data=data, split=split, cfg=cfg, out=out, device=device, console=_console())


@teacher_app.command("label")
def teacher_label(
    data: Annotated[Path, typer.Option("--data", help="Dataset directory or COCO json; its labels are ignored.")],
    weights: WeightsOption = None,
    split: Annotated[Optional[str], typer.Option(help="Split to label (default: train when present).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class names (default: the "
                                                        "dataset's).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Store root; the store is OUT/<key>/.")] = Path(
        "runs/pseudo"),
    box_threshold: BoxThreshold = None,
    max_instances: MaxInstances = None,
    batch_size: TeacherBatch = None,
    input_size: TeacherInputSize = None,
    device: TeacherDevice = None,
    allow_download: AllowDownload = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Zero-shot pseudo-labels for a split, in the store format stage 1b and stage 2 consume."""
    from sskd_deploy.commands.teacher import label_command

    cfg, device = _grounded_settings(config, set_, weights=weights, allow_download=allow_download,
                                     box_threshold=box_threshold, max_instances=max_instances,
                                     batch_size=batch_size, input_size=input_size, device=device)
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    label_command(data=data, split=split, classes=names, cfg=cfg, out=out, device=device, console=_console())


@app.command()
def version() -> None:
    """Print the version of sskd-deploy and its main dependencies."""
    from sskd_deploy.provenance import library_versions

    for name, ver in library_versions().items():
        print(f"{name} {ver}")


def quiet_host_blas() -> None:
    """One thread for numpy's OpenBLAS in this process (unless the user set it), before numpy loads.

    Host pre/post-processing does small matrix products next to PyTorch / ONNX Runtime, which own
    the cores. OpenBLAS's own pool keeps spinning after each product and starves their threads:
    measured on 2 cores, the trained student-tiny's PyTorch call went from 18 ms to 106 ms p50
    once post-processing ran between calls, and post-processing itself from 0.4 ms to 3-17 ms.
    """
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: Optional[list[str]] = None) -> int:
    """Console-script entry point: run the app, turning user errors into one line and exit code 2."""
    from sskd_deploy.errors import SSKDError

    quiet_host_blas()
    try:
        code = app(args=argv, standalone_mode=False)
    except SSKDError as err:
        from rich.markup import escape

        _console(stderr=True).print(f"[bold red]error:[/bold red] {escape(str(err))}", soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        _console(stderr=True).print("[yellow]interrupted[/yellow]")
        return 130
    except SystemExit as err:  # typer.Exit / click's own exits
        return int(err.code or 0)
    except Exception as err:  # click usage errors arrive here in non-standalone mode
        import click

        # typer >= 0.2x runs on its own copy of click (typer._click), whose errors are not click's classes
        if isinstance(err, (click.ClickException, typer.TyperException)) and hasattr(err, "show"):
            err.show()
            return err.exit_code
        if isinstance(err, (click.exceptions.Exit, typer.Exit)):
            return err.exit_code
        if isinstance(err, (click.exceptions.Abort, typer.Abort)):
            return 130
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
