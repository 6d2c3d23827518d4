"""What a command leaves of the process as it found it: signal handlers, the environment, the parsed arguments."""

from __future__ import annotations

import os
import signal

import pytest

from trainables.driver.launch import STOP_SIGNALS, handled_signals


@pytest.fixture
def own_handlers():
    """Handlers of this test's own on every stop signal and SIGUSR1 (Tune's stop), put back afterwards."""
    before = {s: signal.getsignal(s) for s in (*STOP_SIGNALS, signal.SIGUSR1)}
    mine = {s: (lambda signum, frame: None) for s in before}
    for s, h in mine.items():
        signal.signal(s, h)
    yield mine
    for s, h in before.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)


def test_handled_signals_route_to_tunes_stop_then_restore_what_was_there(own_handlers):
    stops = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: stops.append(signum))  # what Tune installs during fit()
    with handled_signals() as received:
        assert all(signal.getsignal(s) is not own_handlers[s] for s in STOP_SIGNALS)
        os.kill(os.getpid(), signal.SIGTERM)  # the first: Tune's graceful stop
        with pytest.raises(KeyboardInterrupt):  # the second: at once
            os.kill(os.getpid(), signal.SIGHUP)
    assert received == [signal.SIGTERM, signal.SIGHUP] and stops == [signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == {s: own_handlers[s] for s in STOP_SIGNALS}


def test_handled_signals_restore_after_an_error_too(own_handlers):
    with pytest.raises(RuntimeError), handled_signals():
        raise RuntimeError("fit() failed")
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == {s: own_handlers[s] for s in STOP_SIGNALS}


def test_dotenv_values_are_computed_not_written(tmp_path, monkeypatch):
    from trainables.secrets import dotenv_values_to_set

    first, second = tmp_path / "a.env", tmp_path / "b.env"
    first.write_text("TUNE_MAIN7_TEST_C=first\n")
    second.write_text("TUNE_MAIN7_TEST_C=second\nTUNE_MAIN7_TEST_D=second\nTUNE_MAIN7_TEST_E=file\n")
    monkeypatch.delenv("TUNE_MAIN7_TEST_C", raising=False)
    monkeypatch.delenv("TUNE_MAIN7_TEST_D", raising=False)
    monkeypatch.setenv("TUNE_MAIN7_TEST_E", "env")
    values, files = dotenv_values_to_set([first, second])
    assert values == {"TUNE_MAIN7_TEST_C": "first", "TUNE_MAIN7_TEST_D": "second"} and files == [first, second]
    assert "TUNE_MAIN7_TEST_C" not in os.environ and os.environ["TUNE_MAIN7_TEST_E"] == "env"


def test_hidden_variable_is_back_afterwards(monkeypatch):
    from trainables.process import hidden_variable

    monkeypatch.setenv("TUNE_MAIN7_TEST_KEY", "k")
    with pytest.raises(RuntimeError), hidden_variable("TUNE_MAIN7_TEST_KEY"):
        assert "TUNE_MAIN7_TEST_KEY" not in os.environ
        raise RuntimeError
    assert os.environ["TUNE_MAIN7_TEST_KEY"] == "k"
    monkeypatch.delenv("TUNE_MAIN7_TEST_KEY")
    with hidden_variable("TUNE_MAIN7_TEST_KEY"):
        pass
    assert "TUNE_MAIN7_TEST_KEY" not in os.environ


# --- the parsed arguments ---------------------------------------------------------------------------------------

def test_parsed_arguments_are_read_only_and_replaced_makes_a_copy():
    import tune_main7
    from trainables.arguments import replaced

    args = tune_main7.parse_args(["plan"])
    with pytest.raises(AttributeError, match=r"read-only \(args.mode\).*replaced\(args, mode=\.\.\.\)"):
        args.mode = "full"
    copy = replaced(args, mode="full")
    assert (args.mode, copy.mode, copy.command) == ("smoke", "full", "plan")
    with pytest.raises(AttributeError):
        copy.mode = "smoke"


def _dispatched(argv: list[str]):
    """tune_main7.dispatch on a plain (writable) copy of argv's parsed arguments: (its vars before, after, what it
    returned or raised). A plain namespace shows a change the read-only one would have refused."""
    import argparse

    import tune_main7

    args = argparse.Namespace(**vars(tune_main7.parse_args(argv)))
    before = dict(vars(args))
    try:
        outcome = tune_main7.dispatch(args)
    except Exception as err:  # noqa: BLE001 - the outcome is reported, the namespace is what is tested
        outcome = err
    return before, dict(vars(args)), outcome


def test_plan_works_on_a_copy_for_its_full_mode(capsys):
    before, after, outcome = _dispatched(["plan", "--only", "01_baseline_kobart_rtx3090", "--card", "h100"])
    assert outcome == 0 and "mode full" in capsys.readouterr().out
    assert after == before and before["mode"] == "smoke"


def test_predict_names_a_checkpoint_target_on_a_copy(tmp_path):
    from trainables.errors import UserError
    from trainables.layout import TRIAL_META

    (tmp_path / TRIAL_META).write_text("{not json")  # a checkpoint folder given as the target: read, then refused
    before, after, outcome = _dispatched(["predict", str(tmp_path), "--out", str(tmp_path / "sub.csv")])
    assert isinstance(outcome, UserError) and TRIAL_META in str(outcome)
    assert after == before and before["target"] == str(tmp_path) and before["checkpoint"] is None


def test_search_names_its_experiment_on_a_copy(monkeypatch):
    from tests.conftest import ROOT
    from trainables.driver import launch

    seen = {}

    def stop_here(args, **kwargs):  # the plan would start Ray: what it was handed is enough
        seen["name"] = args.name
        raise RuntimeError("stopped before the plan")

    monkeypatch.setattr(launch, "plan_run", stop_here)
    before, after, outcome = _dispatched(["search", str(ROOT / "search_spaces" / "search" / "kobart_baseline.yaml"),
                                          "--samples", "1"])
    assert str(outcome) == "stopped before the plan" and seen["name"]
    assert after == before and before["name"] is None
