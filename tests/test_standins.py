"""The stand-in builder is deterministic: the same texts give byte-identical tokenizers and weights for every
architecture, built in two fresh processes at once.

Before (measured 2026-12-02, 2 cores): T5's and mT5's tokenizer.json and model.safetensors differed between two
builds of the same texts (Unigram training orders equal scores as a hash map happens to; the warm start then
trained other ids), and the seq2seq warm start ran on all threads. Cached stand-ins are shared between runs and
parallel test workers, and the first folder written wins: it must not matter whose it was.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

ARCHITECTURES = ("bart", "t5", "mt5", "llama", "qwen2", "qwen3")
WARM = ("t5",)  # the production warm start on the architecture whose tokenizer was not deterministic (~10 s)

BUILD = """
import hashlib, json, sys
from pathlib import Path
import pandas as pd
from trainables.trial.families import family_of
texts = pd.read_csv(sys.argv[1], dtype=str)["dialogue"].head(40).tolist()
hashes = {}
for arch in json.loads(sys.argv[3]):
    folder = Path(family_of(arch).build_standin(arch, texts, Path(sys.argv[2]), warm_start=arch in json.loads(sys.argv[4])))
    hashes[arch] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}
print(json.dumps(hashes))
"""


def test_the_same_texts_give_byte_identical_standins_in_fresh_processes(tmp_path):
    runs = [subprocess.Popen([sys.executable, "-c", BUILD, str(ROOT / "data" / "train.csv"), str(tmp_path / name),
                              json.dumps(ARCHITECTURES), json.dumps(WARM)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("a", "b")]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert sorted(first) == sorted(ARCHITECTURES)
    for arch in ARCHITECTURES:
        assert {"tokenizer.json", "model.safetensors", "config.json"} <= set(first[arch]), (arch, sorted(first[arch]))
        differ = sorted(name for name in first[arch] if first[arch][name] != second[arch].get(name))
        assert not differ, f"{arch}: {differ} differ between two builds of the same texts"


BUILD_ONCE = """
import sys, time
from pathlib import Path
from trainables.trial.families.common import build_once
target, log = Path(sys.argv[1]), Path(sys.argv[2])

def build():
    with log.open("a") as f:
        f.write("built\\n")
    time.sleep(1.0)  # the other process arrives while this one is still building
    (target / "config.json").parent.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    return target

print(build_once(target, build))
"""


def test_two_builders_of_one_standin_build_it_once(tmp_path):
    """Two processes asking for the same stand-in at once: one builds, the other waits for its folder."""
    target, log = tmp_path / "standins" / "x", tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", BUILD_ONCE, str(target), str(log)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [str(target)] * 2
    assert log.read_text().splitlines() == ["built"], "the stand-in was built more than once"


REUSE = """
import json, sys
from pathlib import Path
from trainables.trial.families import family_of
texts = json.loads(sys.argv[2])
folders = [str(family_of(arch).build_standin(arch, texts, Path(sys.argv[1]), warm_start=False)) for arch in json.loads(sys.argv[3])]
print(json.dumps([folders, sorted(m for m in ("torch", "transformers") if m in sys.modules)]))
"""


def test_a_cached_standin_is_found_without_importing_torch_or_transformers(tmp_path):
    """The driver asks for every stand-in before each smoke run; one already built costs it no torch or
    transformers imports (~2 s of CPU a run), for either family."""
    import pandas as pd

    from trainables.trial.families import family_of

    texts = pd.read_csv(ROOT / "data" / "train.csv", dtype=str)["dialogue"].head(20).tolist()
    archs = ["bart", "llama"]  # one per family
    built = [str(family_of(a).build_standin(a, texts, tmp_path, warm_start=False)) for a in archs]
    out = subprocess.run([sys.executable, "-c", REUSE, str(tmp_path), json.dumps(texts), json.dumps(archs)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [built, []]
