"""Ray's entry point into a trial: the function the Tuner schedules (`train_summarizer`).

It imports nothing heavy at module level, so that a trial which will train through Unsloth can import it before
transformers (Unsloth patches transformers as it loads; trainables.trial.unsloth decides whether it will run).
Then it hands the trial to the recipe (trainables.trial.recipe.train_in_ray). The driver never imports Unsloth.
"""

from __future__ import annotations

from typing import Any


def train_summarizer(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: the trial's config as Ray passes it ({"experiment": ..., "run": ...})."""
    from trainables.process import configure_trial_worker

    configure_trial_worker()
    from trainables.config import TrialConfig
    from trainables.trial import unsloth
    from trainables.trial.families import family_of

    trial = TrialConfig.from_ray(config)
    unsloth.import_before_transformers(trial.experiment, family_of(trial.experiment.model.architecture).name)
    from trainables import compat

    compat.import_bitsandbytes()  # before peft does, without torch._inductor (1.95 s of CPU a trial)
    from trainables.trial.recipe import train_in_ray

    train_in_ray(trial)
