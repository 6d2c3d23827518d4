"""The competition's CSVs: reading and checking them, and turning rows into model inputs.

Files: `train.csv`, `dev.csv` (fname, dialogue, summary, topic) and `test.csv` (fname, dialogue).
Rows whose dialogue or summary is empty or missing are dropped with a warning that counts them; a file
left with no rows is an error. Every error names the file and says how to fix it.

Knows nothing of Ray or the Trainer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from trainables.errors import UserError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = {
    "train": ("fname", "dialogue", "summary"),
    "dev": ("fname", "dialogue", "summary"),
    "test": ("fname", "dialogue"),
}


class DataError(UserError, ValueError):
    """A data problem, phrased for the user: which file, what is wrong, how to fix it."""


@dataclass
class Split:
    name: str
    path: Path
    frame: pd.DataFrame
    dropped: int  # rows dropped for an empty dialogue or summary


def read_split(data_dir: Path, split: str, warn: bool = True) -> Split:
    """Read and check one of train/dev/test. `warn=False` where the driver already warned about dropped rows
    (the trials, the stand-in builder), so each file's warning prints once per run."""
    path = Path(data_dir) / f"{split}.csv"
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; put the competition's {split}.csv there, or pass --data-dir with "
            "train.csv, dev.csv and test.csv (the repo ships a sample in data/)"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; it needs a header line ({', '.join(REQUIRED_COLUMNS[split])}) and rows")
    try:
        frame = pd.read_csv(path, encoding="utf-8", dtype=str, keep_default_na=True)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 ({err.reason} at byte {err.start}); re-save the file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty; it needs a header line and rows") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in REQUIRED_COLUMNS[split] if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}. "
            f"Expected {', '.join(REQUIRED_COLUMNS[split])}"
        )
    if split == "test":  # a submission needs exactly one row per fname
        names = frame["fname"].fillna("").str.strip()
        if (names == "").any():
            rows = ", ".join(str(i + 2) for i in frame.index[names == ""][:5])
            raise DataError(f"{path}: empty fname on line(s) {rows}; every test dialogue needs its id")
        duplicated = sorted(set(names[names.duplicated()]))
        if duplicated:
            raise DataError(f"{path}: duplicate fname value(s) {', '.join(duplicated[:5])}; a submission needs one "
                            "row per fname")
    text_columns = [c for c in ("dialogue", "summary") if c in REQUIRED_COLUMNS[split]]
    keep = pd.Series(True, index=frame.index)
    for column in text_columns:
        keep &= frame[column].notna() & (frame[column].fillna("").str.strip() != "")
    dropped = int((~keep).sum())
    frame = frame[keep].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"{path}: no rows with a non-empty {' and '.join(text_columns)}; fill those columns in, "
                        "or point --data-dir at the competition's files")
    if dropped and warn:
        log.warning("%s: dropped %d row(s) with an empty or missing %s", path, dropped, " or ".join(text_columns))
    return Split(split, path, frame, dropped)


def check_data_dir(data_dir: Path) -> dict[str, Split]:
    """Read train and dev before any trial starts, and test.csv when it is there (`predict` needs it)."""
    splits = [s for s in ("train", "dev", "test") if s != "test" or (Path(data_dir) / "test.csv").exists()]
    return {s: read_split(data_dir, s) for s in splits}


def training_texts(data_dir: Path) -> list[str]:
    """All text a stand-in tokenizer is trained on: train dialogues and summaries."""
    train = read_split(data_dir, "train", warn=False).frame
    return [*train["dialogue"].tolist(), *train["summary"].tolist()]


def model_inputs(dialogues: list[str], prefix: str) -> list[str]:
    return [prefix + d for d in dialogues]


def tokenize_split(frame: pd.DataFrame, tokenizer, prefix: str, encoder_max_len: int, decoder_max_len: int, framing):
    """A `datasets.Dataset` of input_ids/attention_mask/labels, framed with BOS/EOS by `framing`
    (trainables.framing: whatever the tokenizer adds by itself) and truncated to the configured lengths.

    Padding is left to the collator (dynamic padding, labels padded with -100), which matters for
    configs that allow 1,024-token inputs when most dialogues are far shorter."""
    from datasets import Dataset

    input_ids = framing.encode_inputs(tokenizer, model_inputs(frame["dialogue"].tolist(), prefix), encoder_max_len)
    columns = {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}
    if "summary" in frame.columns:
        columns["labels"] = framing.encode_labels(tokenizer, frame["summary"].tolist(), decoder_max_len)
    return Dataset.from_dict(columns)
