"""The driver's half of packing's safety net: a packed trial that overran its share is retried on a whole GPU.

Inside the trial, an OOM at the configured batch under a packed cap raises `placement.PackedTrialOverrun`
(backoff.retry_on_oom). Tune records the failure, sets the trial PENDING for a retry (when --max-failures allows
one) and then calls `on_trial_recover`: there this callback finds the error's class name in the trial's last
failure and asks Ray for a whole GPU for the retry (`Trial.update_resources`, allowed while the trial is not
running). The retry resumes from its last checkpoint as any retry does, reads the fraction Ray gave it
(`placement.granted_gpu_fraction`, trainables/trial/placement.py) and runs uncapped; its results say so (`eff_replaced`, eff_notes). Any other failure
keeps the trial's fraction.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ray.tune import Callback

from trainables.trial.placement import PackedTrialOverrun

log = logging.getLogger(__name__)

WHOLE_GPU = {"cpu": 1, "gpu": 1}


def last_failure(trial) -> str:
    """The text of the trial's latest failure: Tune appends each to its error file as "Failure # N ..."."""
    path = getattr(trial, "error_file", None)
    if not path or not Path(path).is_file():
        return ""
    text = Path(path).read_text(errors="replace")
    return text[text.rfind("Failure # "):]


def overran_its_share(trial) -> bool:
    return f"{PackedTrialOverrun.__name__}:" in last_failure(trial)


def gpu_of(trial) -> float:
    return float(trial.placement_group_factory.required_resources.get("GPU", 0.0))


class ReplaceOverrunTrials(Callback):
    """on_trial_recover: a trial that failed with PackedTrialOverrun on a fraction of a GPU retries on a whole one."""

    def on_trial_recover(self, iteration, trials, trial, **info):
        share = gpu_of(trial)
        if not (0 < share < 1) or not overran_its_share(trial):
            return  # not packed, or another failure: retried as it was placed
        trial.update_resources(WHOLE_GPU)
        log.warning("%s overran its packed share of the GPU (%g): retrying it on a whole GPU from its last "
                    "checkpoint (%s)", trial, share, last_failure(trial).strip().splitlines()[-1][:300])
