"""The training loop under ``torchrun --nproc_per_node 2`` on CPU (gloo): sharding, averaging, rank-0 files, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")

SCRIPT = '''
import sys
from pathlib import Path

import torch
from torch import nn

from sskd_deploy.training.distributed import cleanup, init_from_env
from sskd_deploy.training.loop import LoopConfig, train_loop


class Points(torch.utils.data.Dataset):
    def __init__(self):
        self.x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.seen = []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.seen.append(int(i))
        return {"x": self.x[i], "y": self.y[i : i + 1]}


out, results, stop_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rank, world, _ = init_from_env()
torch.manual_seed(0)
model, scale, data = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)), nn.Linear(1, 1), Points()


def step_fn(m, batch, step):
    if step == stop_at:
        raise RuntimeError("simulated kill")
    loss = ((scale(m(batch["x"])) - batch["y"]) ** 2).mean()
    return {"loss": loss, "rank": float(rank)}


cfg = LoopConfig(steps=8, batch_size=4, lr=1e-2, warmup_steps=2, checkpoint_every=3, log_every=1, seed=5)
groups = {"encoder": list(model[0].parameters()), "decoder": list(model[2].parameters())}
try:
    result = train_loop(out_dir=out, model=model, step_fn=step_fn, dataset=data, collate=None, cfg=cfg,
                        param_groups=groups, extra_modules={"scale": scale})
    results.mkdir(parents=True, exist_ok=True)
    torch.save({"seen": data.seen, "model": model.state_dict(), "scale": scale.state_dict(),
                "resumed_from": result.resumed_from, "world": world}, results / f"rank{rank}.pt")
except BaseException:
    cleanup(synchronize=False)
    raise
cleanup()
'''


def launch(tmp_path: Path, out: str, results: str, *, stop_at: int = -1, procs: int = 2) -> subprocess.CompletedProcess:
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    launcher = [str(TORCHRUN), "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [*launcher, str(script), str(tmp_path / out), str(tmp_path / results), str(stop_at)]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_close(a: dict, b: dict, atol: float) -> None:
    for key, value in a.items():
        assert torch.allclose(value, b[key], atol=atol, rtol=0), key


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this interpreter")
def test_two_gloo_ranks_shard_average_and_resume(tmp_path: Path) -> None:
    single = launch(tmp_path, "out1", "res1", procs=1)
    assert single.returncode == 0, single.stderr
    full = launch(tmp_path, "out2", "res2")
    assert full.returncode == 0, full.stderr[-3000:]
    ref, r0, r1 = load(tmp_path / "res1/rank0.pt"), load(tmp_path / "res2/rank0.pt"), load(tmp_path / "res2/rank1.pt")
    assert r0["world"] == 2
    # the first epoch (5 global batches of 4): each rank sees 10 distinct images, together all 20
    assert not set(r0["seen"][:10]) & set(r1["seen"][:10])
    assert sorted(r0["seen"][:10] + r1["seen"][:10]) == list(range(20))
    # rank slices of each global batch are exactly the one-process batch: same images overall
    assert sorted(r0["seen"] + r1["seen"]) == sorted(ref["seen"])
    assert_close(r0["model"], r1["model"], atol=0)  # gradients averaged: identical replicas
    assert_close(r0["scale"], r1["scale"], atol=0)  # extra module outside DDP averaged too
    assert_close(r0["model"], ref["model"], atol=1e-5)  # global batch: same run as one process
    # only rank 0 wrote: one metrics line per step, averaged over ranks (rank term = mean of 0 and 1)
    lines = [json.loads(line) for line in (tmp_path / "out2/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9)) and lines[0]["rank"] == 0.5
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["metrics.jsonl", "train_state.pt"]

    crashed = launch(tmp_path, "out3", "res3", stop_at=4)
    assert crashed.returncode != 0 and "simulated kill" in crashed.stderr
    assert load(tmp_path / "out3/train_state.pt")["step"] == 3
    resumed = launch(tmp_path, "out3", "res3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = load(tmp_path / "res3/rank1.pt")
    assert again["resumed_from"] == 3
    assert_close(again["model"], r1["model"], atol=1e-6)
    assert_close(again["scale"], r1["scale"], atol=1e-6)
