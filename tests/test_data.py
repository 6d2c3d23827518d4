"""Reading the CSVs and preprocessing: prefix, added tokens, truncation, -100 label padding."""

from pathlib import Path

import pandas as pd
import pytest

from trainables.data import DataError, read_split
from trainables.trial.families.seq2seq.framing import probe_framing, tokenize_split
from trainables.trial.families.seq2seq.standin import build_standin
from trainables.trial.families.common import load_tokenizer
from trainables.config import DEFAULT_SPECIAL_TOKENS

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_sample_has_the_competition_format():
    for split, columns in (("train", ["fname", "dialogue", "summary", "topic"]), ("dev", ["fname", "dialogue", "summary", "topic"]),
                           ("test", ["fname", "dialogue"])):
        frame = read_split(ROOT / "data", split).frame
        assert list(frame.columns) == columns
        assert 20 <= len(frame) <= 500
        assert frame["dialogue"].str.startswith("#Person1#:").all()
        assert frame["dialogue"].str.contains("\n#Person2#:").all()
    assert read_split(ROOT / "data", "train").frame["dialogue"].str.contains("#PhoneNumber#|#Address#").any()


def test_empty_rows_are_dropped_with_a_count(tmp_path, caplog):
    pd.DataFrame({"fname": ["a", "b", "c"], "dialogue": ["#Person1#: 안녕", "", "#Person1#: 네"],
                  "summary": ["요약", "요약", None]}).to_csv(tmp_path / "train.csv", index=False)
    split = read_split(tmp_path, "train")
    assert split.dropped == 2 and list(split.frame["fname"]) == ["a"]
    assert "dropped 2 row(s)" in caplog.text


@pytest.mark.parametrize("content,needle", [
    (None, "file not found"),
    (b"", "file is empty"),
    (b"fname,dialogue\nx,#Person1#: hi\n", "missing column(s) summary"),
    ("fname,dialogue,summary\nx,대화,요약\n".encode("cp949"), "not UTF-8"),
    (b"fname,dialogue,summary\nx,,\n", "no rows with a non-empty"),
])
def test_bad_files_name_the_file_and_fix(tmp_path, content, needle):
    if content is not None:
        (tmp_path / "train.csv").write_bytes(content)
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train")
    assert needle in str(err.value) and str(tmp_path / "train.csv") in str(err.value)


@pytest.mark.parametrize("arch", ["mt5", "bart"])
def test_preprocessing(arch, standin_cache):
    frame = read_split(ROOT / "data", "dev").frame.head(4)
    texts = read_split(ROOT / "data", "train").frame["dialogue"].tolist()
    path = str(build_standin(arch, texts, standin_cache, warm_start=False))  # tokenization needs no warm start
    tokenizer = load_tokenizer(path, DEFAULT_SPECIAL_TOKENS)
    # speaker tags and masks are single, ordinary (not special) tokens: decoding keeps them
    ids = tokenizer("#Person1#: 번호는 #PhoneNumber#입니다", add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert "#Person1#" in tokens and "#PhoneNumber#" in tokens
    assert "#Person1#" in tokenizer.decode(ids, skip_special_tokens=True)
    assert "#Person1#" not in tokenizer.all_special_tokens

    data = tokenize_split(frame, tokenizer, "요약: ", encoder_max_len=24, decoder_max_len=8,
                          framing=probe_framing(tokenizer, path))
    assert set(data.column_names) == {"input_ids", "attention_mask", "labels"}
    assert all(len(x) <= 24 for x in data["input_ids"]) and all(len(x) <= 8 for x in data["labels"])
    assert tokenizer.decode(data["input_ids"][0], skip_special_tokens=True).startswith("요약:")

    from transformers import DataCollatorForSeq2Seq
    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)([data[i] for i in range(4)])
    assert (batch["labels"] == -100).any() or len({len(x) for x in data["labels"]}) == 1
    assert "token_type_ids" not in batch


def test_line_numbers_follow_quoted_line_breaks_and_blank_lines(tmp_path):
    from trainables.data import record_lines

    path = tmp_path / "test.csv"
    path.write_bytes(b'fname,dialogue\r\na,"x\r\ny\r\nz"\r\n\r\nb,w\rc,"p\rq"\r')
    assert record_lines(path) == [2, 6, 7]  # \r\n, a blank line and lone \r all end a line
    assert read_split(tmp_path, "test").frame["dialogue"].tolist() == ["x\ny\nz", "w", "p\nq"]
