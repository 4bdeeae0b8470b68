"""Data-parallel training through torchrun on this machine's CPUs (gloo, 2 processes), on real
Fashion-MNIST images: one run directory, figures summed over the ranks, resumes across world sizes,
a killed rank that ends the job or is restarted by torchrun, and checkpoints within an epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import imgclf
from conftest import write_class_tree
from imgclf.data.loader import DeviceLoader
from test_train import wait_for_checkpoint

pytestmark = pytest.mark.slow


def torchrun(nproc: int, *args: str, restarts: int = 0, job: str = "", wait: bool = True):
    """`torchrun --standalone --nproc-per-node N -m imgclf train ...`; its processes carry IMGCLF_TEST_JOB
    so that the test can find a rank's process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           f"--max-restarts={restarts}", "--monitor-interval=0.2", "-m", "imgclf", "train", *args]
    env = {**os.environ, "IMGCLF_TEST_JOB": job or uuid.uuid4().hex, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def single(*args: str):
    return subprocess.run([sys.executable, "-m", "imgclf", "train", *args], capture_output=True, text=True, timeout=600)


def rank_pid(job: str, rank: int) -> int | None:
    """The process of `rank` in the torchrun job started with IMGCLF_TEST_JOB=job."""
    want = {f"IMGCLF_TEST_JOB={job}".encode(), f"RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                env = set((entry / "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if want <= env:
                return int(entry.name)
    return None


@pytest.fixture(scope="module")
def tree(tmp_path_factory, fmnist):
    images, labels = fmnist
    root = tmp_path_factory.mktemp("ddp") / "clothes"
    write_class_tree(root / "train", images[:2000], labels[:2000])
    write_class_tree(root / "test", images[59000:59500], labels[59000:59500])
    return root


COMMON = ["--device", "cpu", "--seed", "0"]


def test_the_ranks_share_out_every_epoch_exactly_once(fmnist):
    images, labels = fmnist
    data = imgclf.load_data((images[:1001], labels[:1001]), val_fraction=0)
    loaders = [DeviceLoader(data.train, 32, mean=data.mean, std=data.std, train=True, rank=r, world_size=2, drop_last=True)
               for r in range(2)]
    shards = [loader.positions(3) for loader in loaders]
    union = torch.cat(shards)
    assert torch.equal(union.sort().values, torch.arange(1001)) and len(loaders[0]) == len(loaders[1]) == 500 // 32
    # Cut after 5 batches in 2 processes, resumed in 3 with another batch: what was served and what is
    # left make the epoch once more, and every rank has the same number of steps.
    served = loaders[0].served(5)
    assert int(served.sum()) == 2 * 5 * 32
    again = [DeviceLoader(data.train, 24, mean=data.mean, std=data.std, train=True, rank=r, world_size=3, drop_last=False)
             for r in range(3)]
    rest = []
    for loader in again:
        loader.set_epoch(3)
        loader.resume_within_epoch(served, world_size=2, batch_size=32, batches=5)
        first, count = loader.batches_left()
        rest.append(loader._plan(loader.rank, loader._resume)[0])
        assert first == 0 and count == again[0].batches_left()[1]
    left = torch.cat(rest)
    assert not served[left].any() and int(served.sum()) + len(left) == 1001


@pytest.mark.slow
def test_two_processes_make_one_run_as_one_process_would(tree, tmp_path):
    """2 x 32 per process against 1 x 64: the same images in every global batch, so the same run up to
    each rank's BatchNorm statistics; the figures are summed over both ranks exactly."""
    two = torchrun(2, str(tree), *COMMON, "--epochs", "3", "--batch-size", "32", "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    one = single(str(tree), *COMMON, "--epochs", "3", "--batch-size", "64", "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    (run_dir,) = list((tmp_path / "two").iterdir())  # one run directory, not one per rank
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in next((tmp_path / "one").iterdir()).iterdir())
    assert two.stdout.count("run directory:") == 1 and two.stderr.count("epoch 3/3") == 1  # only rank 0 speaks
    assert "global batch 64: 2 processes x --batch-size 32" in two.stderr
    results = json.loads((run_dir / "results.json").read_text())
    single_results = json.loads(next((tmp_path / "one").glob("*/results.json")).read_text())
    assert results["processes"] == 2 and abs(results["test_acc"] - single_results["test_acc"]) <= 0.02, (results, single_results)
    # What the job logged is what its bundle scores on the same images, each counted once.
    assert imgclf.evaluate(run_dir, str(tree)).metrics["accuracy"] == pytest.approx(results["test_acc"], abs=1e-9)
    val = imgclf.evaluate(run_dir, split="val", tta=False)
    assert val.metrics["accuracy"] == pytest.approx(results["best_val_acc"], abs=1 / len(val.images) + 1e-9)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and json.loads((run_dir / "run.json").read_text())["processes"] == 2


@pytest.mark.slow
def test_resume_from_two_processes_in_one_and_back(tree, tmp_path):
    out = tmp_path / "runs"
    first = torchrun(2, str(tree), *COMMON, "--epochs", "1", "--batch-size", "32", "--out", str(out), "--name", "a")
    assert first.returncode == 0, first.stderr
    on_one = single("--resume", str(out / "a"), "--epochs", "2")
    assert on_one.returncode == 0, on_one.stderr
    assert "batches of 64 per process keep the global batch of 64" in on_one.stderr
    changes = json.loads((out / "a" / "run.json").read_text())["changes"]
    assert {"epoch": 2, "setting": "batch_size", "from": 32, "to": 64} == {k: changes[-1][k] for k in ("epoch", "setting", "from", "to")}
    back = single("--resume", str(out / "a"), "--epochs", "3", "--nproc", "2")  # imgclf starts torchrun itself
    assert back.returncode == 0, back.stderr
    assert "batches of 32 per process keep the global batch of 64" in back.stderr
    assert [int(r.split(",")[0]) for r in (out / "a" / "metrics.csv").read_text().splitlines()[1:]] == [1, 2, 3]
    assert json.loads((out / "a" / "results.json").read_text())["epochs"] == 3


def _kill_rank_after(proc, job: str, run_dir_of, epoch: int, rank: int = 1) -> None:
    """SIGKILL `rank` once the job's last.pt holds `epoch` (the kill lands within the next epoch)."""
    deadline = time.time() + 300
    while time.time() < deadline and run_dir_of() is None:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    wait_for_checkpoint(run_dir_of(), epoch, proc)
    pid = rank_pid(job, rank)
    assert pid is not None, "rank process not found"
    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_in_bounded_time_and_its_checkpoint_loads(tree, tmp_path):
    out, job = tmp_path / "runs", uuid.uuid4().hex
    proc = torchrun(2, str(tree), *COMMON, "--epochs", "4", "--batch-size", "16", "--save-every", "10", "--dist-timeout", "30",
                    "--out", str(out), "--name", "k", job=job, wait=False)
    _kill_rank_after(proc, job, lambda: out / "k" if (out / "k").is_dir() else None, 1)
    killed = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.time() - killed < 30 + 15, err[-2000:]
    state = torch.load(out / "k" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] >= 1 and state["world_size"] == 2


@pytest.mark.slow
def test_torchrun_restarts_a_lost_worker_and_the_job_finishes_its_run(tree, tmp_path):
    """No --name: the restarted workers find the run by torchrun's job id, and continue it."""
    out, job = tmp_path / "runs", uuid.uuid4().hex
    proc = torchrun(2, str(tree), *COMMON, "--epochs", "3", "--batch-size", "16", "--save-every", "10", "--out", str(out),
                    restarts=1, job=job, wait=False)
    _kill_rank_after(proc, job, lambda: next((p for p in out.glob("*") if (p / "checkpoints").is_dir()), None), 1)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert "resuming" in err
    assert [int(r.split(",")[0]) for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]] == [1, 2, 3]
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 3


@pytest.mark.slow
def test_a_checkpoint_within_an_epoch_resumes_to_the_same_weights(tmp_path):
    """One process: killed after a checkpoint inside epoch 2, resumed, it ends where an uncut run ends."""
    # --threads 1: bit-for-bit equal needs a fixed thread count (by default it follows the free cores)
    args = ["digits", "--device", "cpu", "--batch-size", "16", "--epochs", "3", "--save-every", "7", "--threads", "1", "--out", str(tmp_path)]
    straight = single(*args, "--name", "straight")
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen([sys.executable, "-m", "imgclf", "train", *args, "--name", "cut"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline:  # a checkpoint of epoch 1 with some of epoch 2 done
        if last.exists():
            state = torch.load(last, map_location="cpu", weights_only=True)
            if state["epoch"] == 1 and "within_epoch" in state:
                break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert "within_epoch" in state and 0 < state["within_epoch"]["batches"] < 101  # 1,618 images, 101 batches an epoch
    resumed = single("--resume", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr
    assert "within epoch" in resumed.stderr
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(last, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    def figures(run: str) -> list[list[str]]:  # every column but the times
        return [row.split(",")[:6] for row in (tmp_path / run / "metrics.csv").read_text().splitlines()]

    assert figures("cut") == figures("straight") and len(figures("cut")) == 4


@pytest.mark.slow
def test_resume_if_exists_starts_then_continues(tmp_path):
    args = ["digits", "--device", "cpu", "--out", str(tmp_path), "--name", "job", "--resume-if-exists"]
    first = single(*args, "--epochs", "1")
    assert first.returncode == 0 and "resuming" not in first.stderr, first.stderr
    again = single(*args, "--epochs", "2")
    assert again.returncode == 0 and "resuming" in again.stderr, again.stderr
    assert json.loads((tmp_path / "job" / "results.json").read_text())["epochs"] == 2
    assert np.array_equal(sorted(p.name for p in tmp_path.iterdir()), ["job"])


@pytest.mark.slow
def test_sync_bn_on_cpus_is_refused_in_one_line(tmp_path):
    """PyTorch's SyncBatchNorm runs on CUDA only: on CPUs the flag is a clear error, before any file is written."""
    job = torchrun(2, "digits", "--device", "cpu", "--epochs", "1", "--sync-bn", "--out", str(tmp_path / "runs"))
    assert job.returncode != 0 and "imgclf: error: --sync-bn needs GPUs" in job.stderr, job.stderr[-2000:]
    assert "Traceback" not in job.stderr.split("imgclf: error:")[0] and not (tmp_path / "runs").exists()
