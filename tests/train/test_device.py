"""Threads from the free cores, a peak FLOP/s that says where it comes from, and the RNG state
that checkpoints carry."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from moescale.train import device as dev
from moescale.train.distributed import World
from moescale.train.trainer import Trainer


def test_threads_follow_setting_workers_and_load(monkeypatch):
    monkeypatch.setattr(dev, "available_cores", lambda: 8)
    monkeypatch.setattr(dev, "busy_cores", lambda: (0.0, "test"))
    assert dev.choose_threads(3).threads == 3
    assert dev.choose_threads(0, workers=1).threads == 8
    assert dev.choose_threads(0, workers=4).threads == 2
    assert dev.choose_threads(0, workers=1, extra_busy=3).threads == 5
    monkeypatch.setattr(dev, "busy_cores", lambda: (6.2, "test"))  # 6 cores busy elsewhere
    choice = dev.choose_threads(0, workers=1)
    assert choice.threads == 2 and "6.2 busy" in choice.reason
    monkeypatch.setattr(dev, "busy_cores", lambda: (20.0, "test"))
    assert dev.choose_threads(0).threads == 1


def test_more_threads_than_cores_is_taken_and_warned(monkeypatch, caplog):
    monkeypatch.setattr(dev, "available_cores", lambda: 2)
    with caplog.at_level("WARNING", logger="moescale"):
        assert dev.choose_threads(2).threads == 2
        assert not caplog.records
        assert dev.choose_threads(1000).threads == 1000
    assert "train.threads 1000 exceeds the 2 cores" in caplog.text


def test_busy_cores_sees_a_process_that_just_started():
    import subprocess
    import sys

    idle, how = dev.busy_cores(0.3)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        dev.time.sleep(0.3)
        busy, _ = dev.busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert "CPU sample" in how and busy > 0.6, (idle, busy)


def test_peak_is_cached_only_when_measured_quiet(monkeypatch, tmp_path):
    monkeypatch.delenv("MOESCALE_PEAK_FLOPS", raising=False)
    monkeypatch.setenv("MOESCALE_CACHE", str(tmp_path))
    monkeypatch.setattr(dev, "_PEAK_CACHE", {})
    monkeypatch.setattr(dev, "measure_peak_flops", lambda device: 1.5e11)
    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "busy_cores", lambda: (1.0, "test"))
    busy = dev.device_peak_flops(cpu)
    assert busy.flops == 1.5e11 and "busy elsewhere" in busy.source
    assert not (tmp_path / "peak_flops.json").exists()
    monkeypatch.setattr(dev, "_PEAK_CACHE", {})
    monkeypatch.setattr(dev, "busy_cores", lambda: (0.05, "test"))
    assert "measured now" in dev.device_peak_flops(cpu).source
    monkeypatch.setattr(dev, "_PEAK_CACHE", {})
    monkeypatch.setattr(dev, "measure_peak_flops", lambda device: pytest.fail("re-measured"))
    cached = dev.device_peak_flops(cpu)
    assert cached.flops == 1.5e11 and cached.source.startswith("quiet measurement of")
    for what, other in ((dev, "cpu_model"), (torch.backends.cpu, "get_cpu_capability")):
        # the same host name, another CPU (a shared home directory): not this machine's peak
        monkeypatch.setattr(dev, "_PEAK_CACHE", {})
        monkeypatch.setattr(dev, "measure_peak_flops", lambda device: 9e10)
        with monkeypatch.context() as m:
            m.setattr(what, other, lambda: "another CPU")
            assert dev.device_peak_flops(cpu).flops == 9e10
    monkeypatch.setenv("MOESCALE_PEAK_FLOPS", "7e10")
    assert dev.device_peak_flops(cpu) == dev.Peak(7e10, "$MOESCALE_PEAK_FLOPS")


def test_rng_state_is_plain_and_round_trips(tmp_path):
    state = dev.rng_state(torch.device("cpu"))
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    want = (torch.rand(3), np.random.rand(3), random.random())
    dev.set_rng_state(loaded)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


def test_slow_throughput_warns_once(caplog):
    fake = SimpleNamespace(best_rate=0.0, slow_warned=False, threads=2, world=World())
    with caplog.at_level("WARNING", logger="moescale"):
        for rate in (1000.0, 1100.0, 300.0, 200.0):
            Trainer.check_throughput(fake, rate)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "27%" in warnings[0] and "train.threads" in warnings[0]
    rank1 = SimpleNamespace(best_rate=0.0, slow_warned=False, threads=1, world=World(1, 2, 1, 2))
    caplog.clear()
    for rate in (1000.0, 100.0):  # rank 0 speaks for the run
        Trainer.check_throughput(rank1, rate)
    assert not caplog.records


def test_freed_memory_is_kept_unless_asked_not_to(monkeypatch):
    import ctypes

    from moescale.train.device import keep_freed_memory

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr("platform.system", lambda: "Linux")
    monkeypatch.setattr("platform.libc_ver", lambda: ("glibc", "2.36"))
    assert keep_freed_memory() == "freed memory kept for reuse (mallopt)"
    assert [p for p, _ in calls] == [-3, -1, -2]  # mmap threshold, trim threshold, top pad
    calls.clear()
    monkeypatch.setenv("MOESCALE_MALLOC", "default")
    assert "glibc defaults" in keep_freed_memory() and not calls


@pytest.mark.parametrize("name", ["tpu", "mps", "cuda:x", "gpu"])
def test_a_device_moescale_does_not_run_on_is_a_config_error(name):
    from moescale.errors import ConfigError

    with pytest.raises(ConfigError, match=f"--device: '{name}' is not a device moescale runs on"):
        dev.resolve_device(name, "--device")


def test_cuda_without_a_gpu_names_the_flag_it_came_from(monkeypatch):
    from moescale.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device: 'cuda:1' was asked for but no CUDA device"):
        dev.resolve_device("cuda:1", "--device")
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device("cpu", "--device") == torch.device("cpu")
