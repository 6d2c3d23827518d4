"""The trial side: what runs inside one Ray trial process.

`recipe` is the trainable (settings -> data -> model -> trainer -> train); model families live in `families/`,
the removable speed layer in `speed`; `callbacks` and `telemetry` report to Tune.
"""
