"""The results side: reading what Tune stored, never the trainable.

`report` and `summaries` (tables, plots, live summaries), `search_report`, `predict` (submission.csv) and
`export` (a standalone Hugging Face model folder).
"""
