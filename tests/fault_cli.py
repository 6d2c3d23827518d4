"""`python tests/fault_cli.py '<fault JSON>' <tune_main7.py arguments>`: the real CLI with a test fault in each trial
(tests.fault_injection through tune_main7.main's trial_callbacks), e.g. '{"kill_after_epoch": 1, "marker": "k.txt"}'."""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Ray's trial workers inherit this process's environment: they import tests.fault_injection from the checkout too
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

from tests.fault_injection import callback_spec  # noqa: E402
from tune_main7 import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[2:], trial_callbacks=[callback_spec(**json.loads(sys.argv[1]))]))
