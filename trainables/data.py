"""The competition's CSVs: reading and checking them, and turning rows into model inputs.

Files: `train.csv`, `dev.csv` (fname, dialogue, summary, topic) and `test.csv` (fname, dialogue).
Rows whose dialogue or summary is empty or missing are dropped with a warning that counts them; a file
left with no rows is an error. Every cell is text (`NA` is a value, not missing); line breaks inside the
texts are read as `\n` whatever the file was saved with (a warning counts the rows repaired). Every error names the file and says how to fix it.

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


def read_split(data_dir: Path, split: str, warn: bool = True, drop_empty: bool = True) -> Split:
    """Read and check one of train/dev/test. `warn=False` where the driver already warned (dropped rows, line
    breaks repaired: the trials, the stand-in builder), so each file's warning prints once per run.
    `drop_empty=False` (predict): every row is kept, since a submission needs one row per fname."""
    path = Path(data_dir) / f"{split}.csv"
    frame = _read_csv(path, split)
    missing = [c for c in REQUIRED_COLUMNS[split] if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}. "
            f"Expected {', '.join(REQUIRED_COLUMNS[split])}"
        )
    if split == "test":  # a submission needs exactly one row per fname
        _check_test_names(path, frame)
    _normalize_line_breaks(path, frame, warn)
    text_columns = [c for c in ("dialogue", "summary") if c in REQUIRED_COLUMNS[split]]
    keep = pd.Series(True, index=frame.index)
    for column in text_columns:
        keep &= frame[column].fillna("").str.strip() != ""
    dropped = int((~keep).sum()) if drop_empty else 0
    frame = frame[keep].reset_index(drop=True) if drop_empty else frame.fillna({c: "" for c in text_columns})
    if frame.empty and drop_empty:
        raise DataError(f"{path}: no rows with a non-empty {' and '.join(text_columns)}; fill those columns in, "
                        "or point --data-dir at the competition's files")
    if dropped and warn:
        log.warning("%s: dropped %d row(s) with an empty or missing %s", path, dropped, " or ".join(text_columns))
    return Split(split, path, frame, dropped)


def _read_csv(path: Path, split: str) -> pd.DataFrame:
    """Every cell as text: `NA`, `null` or `None` is a value (a test fname, a word of a dialogue), not missing;
    only an empty cell is empty."""
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; put the competition's {split}.csv there, or pass --data-dir with "
            "train.csv, dev.csv and test.csv (the repo ships a sample in data/)"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; it needs a header line ({', '.join(REQUIRED_COLUMNS[split])}) and rows")
    try:
        return pd.read_csv(path, encoding="utf-8", dtype=str, keep_default_na=False)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 ({err.reason} at byte {err.start}); re-save the file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty; it needs a header line and rows") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None


def _check_test_names(path: Path, frame: pd.DataFrame) -> None:
    names = frame["fname"].fillna("").str.strip()
    empty = list(frame.index[names == ""])
    if empty:
        raise DataError(f"{path}: empty fname on {_where(path, empty)}; every test dialogue needs its id")
    duplicated = sorted(set(names[names.duplicated()]))
    if duplicated:
        rows = list(frame.index[names.isin(duplicated[:5])])
        raise DataError(f"{path}: duplicate fname value(s) {', '.join(duplicated[:5])} (on {_where(path, rows)}); "
                        "a submission needs one row per fname")


def _where(path: Path, rows: list[int], most: int = 5) -> str:
    """Rows (0-based, as pandas numbers them) as the file's line numbers (the header is line 1; a quoted dialogue
    spans several lines, so the n-th row is not on line n + 1), or as 1-based row numbers should the file not
    read line by line."""
    lines = record_lines(path)
    more = f" (and {len(rows) - most} more)" if len(rows) > most else ""
    if lines is None or max(rows) >= len(lines):
        return f"row(s) {', '.join(str(i + 1) for i in rows[:most])}{more}"
    return f"line(s) {', '.join(str(lines[i]) for i in rows[:most])}{more}"


def record_lines(path: Path) -> list[int] | None:
    """The line each data row starts on (1-based, the header being line 1), blank lines skipped as pandas skips
    them; None where Python's csv reader can't follow the file."""
    import csv

    starts = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            next(reader, None)
            ended = reader.line_num
            for record in reader:
                if record:
                    starts.append(ended + 1)
                ended = reader.line_num
    except (csv.Error, OSError, UnicodeDecodeError):
        return None
    return starts


LINE_BREAK_COLUMNS = ("dialogue", "summary", "topic")


def _normalize_line_breaks(path: Path, frame: pd.DataFrame, warn: bool) -> None:
    """Line breaks inside the texts as `\\n`, whatever the file was saved with: a file saved on Windows (`\\r\\n`)
    or old Mac (`\\r`) keeps its `\\r` inside quoted dialogues, which the tokenizer reads as a different text
    (different summaries from the same checkpoint). In place, with one warning per file."""
    touched = pd.Series(False, index=frame.index)
    for column in [c for c in LINE_BREAK_COLUMNS if c in frame.columns]:
        text = frame[column].fillna("")
        has_cr = text.str.contains("\r", regex=False)
        if has_cr.any():
            frame[column] = frame[column].str.replace("\r\n", "\n", regex=False).str.replace("\r", "\n", regex=False)
            touched |= has_cr
    if touched.any() and warn:
        log.warning("%s: %d row(s) had Windows (\\r\\n) or old Mac (\\r) line breaks inside a text; read as \\n, as "
                    "from a file saved with Unix line endings", path, int(touched.sum()))


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
