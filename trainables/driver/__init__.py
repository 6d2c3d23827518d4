"""The driver side: what runs in `tune_main7.py`'s process before and around the trials.

Checks and overlays before a run (`launch`), the pre-flight plan and packing (`plan`), the Tuner and its grid
(`grid`), hyperparameter search (`search`), and the driver's Tune callbacks (`overrun`, `wandb_logging`).
Nothing here imports torch at module level; the trial side is reached only through Ray.
"""
