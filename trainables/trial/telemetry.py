"""How busy the trial's GPU was and how fast it trained, reported with the metrics at every report.

A background thread samples the trial's GPU through NVML (`nvidia-ml-py`) every half second; at each report
the samples since the previous report become `gpu_util_mean`, `gpu_util_p10` (the 10th percentile: how low it
dipped), `gpu_mem_used_gb` (the most the device had in use) and `gpu_power_w` (mean, where the driver gives
it). Without a GPU, or without NVML, those fields are left out: never a fake zero.
Always reported: `train_samples_per_s` and `train_label_tokens_per_s` (counted from the batches the optimizer
saw, over the training seconds since the previous report, evaluation and checkpoint saving excluded) and
`eval_s` (the Trainer's own evaluation runtime).
NVML reads the whole device: trials sharing one GPU see each other's load.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from trainables import compat

log = logging.getLogger("trainables.trial.telemetry")

GPU_FIELDS = ("gpu_util_mean", "gpu_util_p10", "gpu_mem_used_gb", "gpu_power_w")
THROUGHPUT_FIELDS = ("train_samples_per_s", "train_label_tokens_per_s", "eval_s")


def nvml_handle():
    """NVML's handle for this process's CUDA device 0 (matched by UUID, as CUDA_VISIBLE_DEVICES renumbers), or None."""
    try:
        import pynvml
        import torch

        if not torch.cuda.is_available():
            return None
        pynvml.nvmlInit()
    except Exception as err:  # no nvidia-ml-py, no driver: no GPU fields
        log.info("GPU telemetry off: %s", err)
        return None
    try:
        uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
    except Exception:
        try:
            return pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as err:
            log.info("GPU telemetry off: %s", err)
            return None


class GpuSampler:
    """NVML samples of one GPU, taken in a daemon thread until `stop()`."""

    def __init__(self, interval_s: float = 0.5):
        self.handle = nvml_handle()
        self.interval_s = interval_s
        self._samples: list[tuple[float, float, float | None]] = []  # (util %, memory used GB, power W)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if self.handle is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-telemetry", daemon=True)
            self._thread.start()

    def _sample(self) -> tuple[float, float, float | None]:
        import pynvml

        util = pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        mem = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used / 2**30
        try:
            power = pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0  # mW -> W
        except Exception:  # not supported by this driver/board (e.g. some MIG slices)
            power = None
        return float(util), float(mem), power

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = self._sample()
            except Exception as err:  # the driver went away: stop quietly, report what we have
                log.warning("GPU telemetry stopped: %s", err)
                return
            with self._lock:
                self._samples.append(sample)
            self._stop.wait(self.interval_s)

    def take(self) -> dict[str, float]:
        """The GPU fields over the samples since the last call (none without a GPU or samples)."""
        with self._lock:
            samples, self._samples = self._samples, []
        if not samples:
            return {}
        utils = sorted(s[0] for s in samples)
        out = {
            "gpu_util_mean": round(sum(utils) / len(utils), 1),
            "gpu_util_p10": utils[int(0.1 * (len(utils) - 1))],
            "gpu_mem_used_gb": round(max(s[1] for s in samples), 3),
        }
        powers = [s[2] for s in samples if s[2] is not None]
        if powers:
            out["gpu_power_w"] = round(sum(powers) / len(powers), 1)
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class Telemetry:
    """One trial's telemetry: the GPU sampler plus counters of the training batches and their time."""

    def __init__(self, gpu: bool):
        self.gpu = GpuSampler() if gpu else None
        self.samples = 0
        self.label_tokens: Any = 0  # a tensor on the batches' device once counting starts (no sync per step)
        self.since = time.time()
        self.eval_ended: float | None = None

    def count_batches(self, batches: list[dict[str, Any]]) -> None:
        for batch in batches:
            labels = batch.get("labels") if hasattr(batch, "get") else None
            if labels is None:
                continue
            self.samples += int(labels.shape[0])
            self.label_tokens = self.label_tokens + labels.ne(-100).sum()

    def collect(self, eval_s: float | None) -> dict[str, Any]:
        """The fields for this report: throughput over the training seconds since the last report (wall time
        less this evaluation and the checkpoint save that followed it), and the GPU fields."""
        now = time.time()
        save_s = now - self.eval_ended if self.eval_ended else 0.0
        train_s = max(now - self.since - (eval_s or 0.0) - save_s, 1e-9)
        tokens = int(self.label_tokens.item() if hasattr(self.label_tokens, "item") else self.label_tokens)
        out = {
            "train_samples_per_s": round(self.samples / train_s, 3),
            "train_label_tokens_per_s": round(tokens / train_s, 1),
            "eval_s": round(float(eval_s), 3) if eval_s is not None else None,
        }
        if self.gpu is not None:
            out.update(self.gpu.take())
        return out

    def restart(self) -> None:
        """After a report: the next interval starts now."""
        self.samples, self.label_tokens = 0, 0
        self.since, self.eval_ended = time.time(), None

    def stop(self) -> None:
        if self.gpu is not None:
            self.gpu.stop()

    def callback(self):
        """A TrainerCallback that notes when each evaluation ended (the save that follows is not training)."""
        from transformers import TrainerCallback

        telemetry = self

        class TelemetryTimes(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                telemetry.restart()

            def on_evaluate(self, args, state, control, **kwargs):
                telemetry.eval_ended = time.time()

        return TelemetryTimes()


@compat.observe_training_batches
class CountTrainingBatches:
    """Trainer mixin: counts the samples and label tokens of every batch the training loop draws (only the
    training loop: evaluation's batches are not counted)."""

    telemetry: Telemetry | None = None

    def on_training_batches(self, batches: list[dict[str, Any]]) -> None:
        if self.telemetry is not None:
            self.telemetry.count_batches(batches)
