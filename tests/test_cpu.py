"""The CPU at hand: its features recorded with every run, and torch's threads kept to the free cores."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest
import torch

import imgclf
from imgclf.engine import cpu
from imgclf.engine.cpu import ThreadShare, _Sample, others_between, threads_for
from imgclf.errors import ImgclfError


def test_one_thread_per_core_the_others_leave_free():
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 0.4) == 2  # a light neighbour leaves the core to us
    assert threads_for(2, 0.6) == 1  # more than half a core taken: a thread there would hold up the rest
    assert threads_for(2, 2.0) == 1  # never fewer than one
    assert threads_for(8, 3.2) == 5


def test_the_others_are_the_cpus_busy_time_less_this_process_own():
    # 2 cores for 1 s at 100 ticks a second: 400 ticks in all, 300 busy of which 100 were ours.
    before, after = _Sample(busy=1000, total=5000, own=50), _Sample(busy=1300, total=5400, own=150)
    assert others_between(before, after, cores=2) == pytest.approx(1.0)
    assert others_between(after, after, cores=2) == 0.0  # no time passed
    assert others_between(before, _Sample(busy=1400, total=5400, own=50), cores=2) == 2.0  # every tick someone else's
    assert others_between(before, _Sample(busy=1100, total=5400, own=500), cores=2) == 0.0  # tick rounding: never below 0


def test_the_cpu_is_described_with_its_speed_flags():
    f = cpu.features()
    assert f["cpu"] and f["cores"] == cpu.usable_cpus() >= 1 and f["kernels"]
    if sys.platform == "linux":
        flags = f["flags"].split()
        assert flags and all(x.startswith(("avx", "amx", "fma")) or "vnni" in x or "bf16" in x for x in flags), flags
        assert ("avx512_bf16" in flags or "amx_bf16" in flags) == cpu.has_bf16_units() or not flags


@pytest.mark.slow
@pytest.mark.skipif(cpu.usable_cpus() < 2 or sys.platform != "linux", reason="needs 2 cores and /proc/stat")
def test_a_busy_neighbour_takes_a_thread_and_says_so(caplog):
    before = torch.get_num_threads()
    spin = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        share = ThreadShare(every_s=0.0)
        line = share.start()
        assert share.threads <= share.cores - 1 and torch.get_num_threads() == share.threads
        assert line is not None and "the machine is busy" in line and "--threads" in line
        # Followed as the run goes: with the neighbour still there, never back to every core.
        time.sleep(0.5)
        share.follow()
        assert share.threads <= share.cores - 1
    finally:
        spin.kill()
        spin.wait()
        torch.set_num_threads(before)


def test_a_fixed_thread_count_is_kept_and_omp_num_threads_caps(monkeypatch):
    before = torch.get_num_threads()
    try:
        share = ThreadShare(fixed=1)
        assert share.start() is None and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert ThreadShare().cap == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "many")
        assert ThreadShare(cap=1).cap == 1 and ThreadShare().cap == cpu.usable_cpus()
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_a_run_records_its_machine_says_its_threads_and_gives_the_callers_back(digits, tmp_path, caplog):
    images, labels = digits
    before = torch.get_num_threads()
    with caplog.at_level(logging.INFO, logger="imgclf"):
        run = imgclf.train((images[:300], labels[:300]), epochs=1, threads=1, device="cpu", out=str(tmp_path))
    assert "device cpu (1 thread)" in caplog.text
    assert torch.get_num_threads() == before
    machine = json.loads((run.run_dir / "run.json").read_text())["machine"]
    assert machine["cpu"] == cpu.features()["cpu"] and machine["flags"] == cpu.features()["flags"]
    assert machine["cores"] >= 1 and "torch" in machine


def test_threads_below_one_are_refused():
    with pytest.raises(ImgclfError, match="threads=0 must be at least 1"):
        imgclf.train(([], []), threads=0)
