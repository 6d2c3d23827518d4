"""Cards and their calibration tables: what a plan's coefficients are, where they come from, what they predict.

A per-card table (`trainables/driver/calibration/<card>.json`) turns workload features (trainables.driver.features)
into GiB and seconds: each prediction is a sum of features times a few coefficients (`peaks`, `micro_batch_s`,
`eval_batch_s`, `load_s` below say which). The tables are fitted from real-size runs on that card by
`benchmarks/fit_calibration.py` (which `plan --calibrate` runs); the table's `notes` say how many rows back each
coefficient. Cards without their own table borrow the H100's, with the time terms scaled by the datasheet ratios
(FLOP-bound terms by dense bf16 throughput, bandwidth-bound terms by memory bandwidth; per-call overheads
unchanged), which the plan prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.config import ConfigError
from trainables.driver.features import GIB, Features

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
DEFAULT_FAMILY = "seq2seq"  # <card>.json holds this family's table; another family's is <card>-<family>.json
# The FLOP term's share of the card's dense bf16 rate is fitted (`flop_utilisation`; this default where a table has
# none or the rows can't tell); the bandwidth term is fixed at 60% of the datasheet bandwidth. On a card without its
# own table the FLOP term scales by the datasheet ratio at the calibrated card's utilisation.
FLOP_UTILISATION = 0.35
BANDWIDTH_UTILISATION = 0.6


class PlanError(ConfigError):
    """A bad --card / --gpu-memory / calibration file, phrased for the user."""


@dataclass(frozen=True)
class Card:
    key: str
    name: str
    memory_gib: float  # what torch reports as total memory
    bf16_tflops: float  # dense, datasheet
    bandwidth_tbs: float  # datasheet


CARDS = {
    "rtx3090": Card("rtx3090", "NVIDIA GeForce RTX 3090", 23.7, 71.0, 0.936),
    "a100-40": Card("a100-40", "NVIDIA A100-SXM4-40GB", 39.4, 312.0, 1.555),
    "a100-80": Card("a100-80", "NVIDIA A100-SXM4-80GB", 79.2, 312.0, 2.039),
    "h100": Card("h100", "NVIDIA H100 80GB HBM3", 79.2, 989.0, 3.35),
    "h200": Card("h200", "NVIDIA H200", 139.8, 989.0, 4.8),
}


@dataclass
class Calibration:
    card: str
    key: str
    memory_gib: float
    measured: str
    source: str
    command: str
    coefficients: dict[str, float]
    fit: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""
    backing: dict[str, str] = field(default_factory=dict)  # coefficient -> the rows it was fitted on, or its source
    families: list[str] = field(default_factory=list)  # model families its rows measured (trainables.trial.families)
    path: str = ""


def calibration_path(key: str, family: str = DEFAULT_FAMILY) -> Path:
    return CALIBRATION_DIR / (f"{key}.json" if family == DEFAULT_FAMILY else f"{key}-{family}.json")


def load_calibration(key: str, family: str = DEFAULT_FAMILY) -> Calibration:
    path = calibration_path(key, family)
    try:
        raw = json.loads(path.read_text())
        calib = Calibration(**{k: raw[k] for k in ("card", "key", "memory_gib", "measured", "source", "command",
                                                    "coefficients")}, fit=raw.get("fit", []), notes=raw.get("notes", ""),
                            backing=raw.get("backing", {}), families=raw.get("families", []), path=str(path))
    except FileNotFoundError:
        raise PlanError(f"{path}: no calibration for {key}; run `python tune_main7.py plan --calibrate` on that card, "
                        "or plan with --card h100") from None
    except (ValueError, KeyError, TypeError) as err:
        raise PlanError(f"{path}: not a calibration table ({err}); restore it from git or rerun `plan --calibrate`") from None
    return calib


def card_of(name: str) -> Card:
    """The known card whose name (as torch or nvidia-smi prints it) this is; else a card of that name, size unknown."""
    low = name.lower()
    for key, needle in (("h200", "h200"), ("h100", "h100"), ("a100-80", "a100-sxm4-80"), ("a100-80", "a100 80"),
                        ("a100-80", "a100-pcie-80"), ("a100-40", "a100"), ("rtx3090", "3090")):
        if needle in low:
            return CARDS[key]
    return Card(low.replace(" ", "-")[:40], name, 0.0, CARDS["h100"].bf16_tflops, CARDS["h100"].bandwidth_tbs)


def resolve_card(card: str | None = None, gpu_memory: float | None = None) -> tuple[Card, Calibration, bool]:
    """The card to plan for and its calibration (the H100's, scaled, where the card has none)."""
    if card and card not in CARDS:
        raise PlanError(f"--card {card}: unknown card; use one of {', '.join(CARDS)}, or --gpu-memory GB")
    if gpu_memory is not None and gpu_memory <= 0:
        raise PlanError(f"--gpu-memory {gpu_memory}: must be a positive number of GB")
    chosen = CARDS[card or "h100"]
    if gpu_memory is not None:
        chosen = Card(chosen.key if card else "custom", f"{chosen.name if card else 'a GPU'} with {gpu_memory:g} GB",
                      gpu_memory * 1e9 / GIB, chosen.bf16_tflops, chosen.bandwidth_tbs)
    key = chosen.key if calibration_path(chosen.key).exists() else "h100"
    return chosen, load_calibration(key), key != chosen.key


def family_calibration(card: Card, family: str) -> tuple[Calibration, bool] | None:
    """A model family's own table (calibration/<card>-<family>.json, else the H100's, scaled) and whether it is
    scaled; None where no GPU run has calibrated the family: the plan then uses the card's default table."""
    for key in (card.key, "h100"):
        if family != DEFAULT_FAMILY and calibration_path(key, family).exists():
            return load_calibration(key, family), key != card.key
    return None


def local_card() -> tuple[str | None, float | None]:
    """The first local CUDA card's --card key (or None) and its memory in GB, through torch."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    props = torch.cuda.get_device_properties(0)
    card = card_of(props.name)
    return (card.key if card.key in CARDS else None), props.total_memory / 1e9


def local_card_cheap() -> tuple[str | None, float | None]:
    """Like local_card, through nvidia-smi (no torch import: `plan` stays fast); (None, None) without a GPU."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None, None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        name, mib = [x.strip() for x in out[0].split(",")]
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None, None
    card = card_of(name)
    return (card.key if card.key in CARDS else None), float(mib) * 2**20 / 1e9


# ---------------------------------------------------------------------------------------------------
# What the coefficients predict (the fit, benchmarks/fit_calibration.py, uses the same functions)


def peaks(f: Features, c: dict[str, float]) -> tuple[float, float]:
    """(training peak, generation peak) in GiB, allocated: the resident training model plus a micro-batch's
    activations and logits, or plus the merged copy (exact bytes) and a generation batch."""
    train = f.static_gib + c["mem_act"] * f.act_gib + c["mem_logit"] * f.logit_gib
    return train, f.static_gib + f.merged_gib + c["mem_gen"] * f.gen_gib


def flop_s(f: Features, card: Card, c: dict[str, float] | None = None) -> float:
    return f.tflop / (card.bf16_tflops * (c or {}).get("flop_utilisation", FLOP_UTILISATION))


def bandwidth_s(f: Features, card: Card) -> float:
    return f.gen_tb / (card.bandwidth_tbs * BANDWIDTH_UTILISATION)


def micro_batch_s(f: Features, c: dict[str, float], card: Card) -> float:
    """Seconds of one training micro-batch: per-call overhead plus the FLOP term."""
    return c["s_per_call"] * f.module_calls + flop_s(f, card, c)


def eval_batch_s(f: Features, c: dict[str, float], card: Card) -> float:
    """Seconds of one generation batch: per-call overhead (the beams' vocabulary work included: the rows show no
    separate term) plus the weights and caches read at the fixed bandwidth share."""
    return c["gen_s_per_call"] * f.gen_calls + bandwidth_s(f, card)


def load_s(c: dict[str, float]) -> float:
    """Seconds to load the model once (each OOM'd attempt loads it again). One constant: between the 124M and 582M
    models of the rows no size dependence showed (a per-parameter term did not lower the leave-one-out error)."""
    return c["load_s"]
