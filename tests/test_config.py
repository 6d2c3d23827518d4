"""Config loading and validation: every shipped YAML, and the errors a user can make."""

from pathlib import Path

import pytest
import yaml

from trainables.config import (
    ConfigError, apply_mode, load_experiment, load_search_space, static_problems,
)
from trainables.trial.families import family_of

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))


def test_the_default_grid_is_the_seeds_seven_experiments():
    """A test of the shipped YAMLs: the default grid is the seed's run_7_experiments.sh, one file each."""
    seed = {"01_baseline_kobart_rtx3090", "01_mt5_xlsum_korean_adapted", "01_mt5_xlsum_optimized_v2",
            "01_mt5_xlsum_ultimate", "02_eenzeenee_t5_rtx3090", "03_high_learning_rate_rtx3090",
            "04_batch_optimization_rtx3090"}
    assert {p.stem for p in SHIPPED} == seed


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_each_shipped_yaml_is_valid_and_has_no_errors(path):
    cfg = load_experiment(path)
    errors, _ = static_problems(cfg)
    assert errors == []
    assert cfg.name == path.stem
    assert set(cfg.qlora.target_modules) <= family_of(cfg.model.architecture).lora_target_names(cfg.model.architecture)


def test_seed_values_are_kept():
    cfgs = {c.name: c for c in load_search_space(ROOT / "search_spaces")}
    c7 = cfgs["04_batch_optimization_rtx3090"]
    assert (c7.training.per_device_train_batch_size, c7.training.gradient_accumulation_steps) == (4, 8)
    assert (c7.generation.num_beams, c7.qlora.lora_rank, c7.tokenizer.encoder_max_len) == (12, 128, 1024)
    c4 = cfgs["02_eenzeenee_t5_rtx3090"]
    assert c4.qlora.use_qlora and not c4.qlora.load_in_4bit  # LoRA on an unquantized base, as the seed wrote
    assert cfgs["01_mt5_xlsum_optimized_v2"].training.fp16  # kept, corrected at run time


def test_fp16_on_t5_family_is_a_warning():
    cfgs = {c.name: c for c in load_search_space(ROOT / "search_spaces")}
    _, warnings = static_problems(cfgs["02_eenzeenee_t5_rtx3090"])
    assert any("fp16" in w for w in warnings)
    _, warnings = static_problems(cfgs["01_baseline_kobart_rtx3090"])
    assert warnings == []


def _write(tmp_path, name, data) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _base() -> dict:
    return yaml.safe_load((ROOT / "search_spaces" / "01_baseline_kobart_rtx3090.yaml").read_text(encoding="utf-8"))


def test_unknown_key_names_file_and_key(tmp_path):
    data = _base()
    data["training"]["learning_rat"] = 1e-4
    path = _write(tmp_path, "bad", data)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert str(path) in str(err.value) and "training.learning_rat" in str(err.value) and "unknown key" in str(err.value)


@pytest.mark.parametrize("section,key,value,needle", [
    ("training", "learning_rate", -1e-4, "training.learning_rate"),
    ("training", "per_device_train_batch_size", 0, "training.per_device_train_batch_size"),
    ("training", "lr_scheduler_type", "warp_speed", "unknown scheduler"),
    ("model", "architecture", "gpt2", "model.architecture"),
    ("training", "num_train_epochs", "four", "training.num_train_epochs"),
])
def test_bad_values_are_errors(tmp_path, section, key, value, needle):
    data = _base()
    data[section][key] = value
    with pytest.raises(ConfigError, match=needle):
        load_experiment(_write(tmp_path, "bad", data))


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  checkpoint: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken.yaml: YAML syntax error at line"):
        load_experiment(path)


def test_duplicate_names_and_empty_folder(tmp_path):
    with pytest.raises(ConfigError, match="no \\*.yaml"):
        load_search_space(tmp_path)
    data = _base()
    _write(tmp_path, "a", {**data, "name": "same"})
    _write(tmp_path, "b", {**data, "name": "same"})
    with pytest.raises(ConfigError, match="already used"):
        load_search_space(tmp_path)


def test_seed_wi_target_is_caught(tmp_path):
    data = yaml.safe_load((ROOT / "search_spaces" / "01_mt5_xlsum_optimized_v2.yaml").read_text(encoding="utf-8"))
    data["qlora"]["target_modules"] = ["q", "k", "v", "o", "wi", "wo"]
    cfg = load_experiment(_write(tmp_path, "seed_mt5", data))
    errors, _ = static_problems(cfg)
    assert errors and "wi_0 and wi_1" in errors[0]


def test_modes_change_only_what_they_say():
    cfg = load_experiment(ROOT / "search_spaces" / "01_mt5_xlsum_ultimate.yaml")
    full, changes = apply_mode(cfg, "full")
    assert changes == [] and full == cfg and full is not cfg
    quick, changes = apply_mode(cfg, "quick")
    assert quick.training.num_train_epochs == 1 and changes == ["training.num_train_epochs: 8 -> 1"]
    assert cfg.training.num_train_epochs == 8  # the loaded config is left as it was
    smoke, changes = apply_mode(cfg, "smoke")
    assert smoke.generation.num_beams <= 2 and smoke.tokenizer.encoder_max_len <= 192
    assert smoke.qlora.use_qlora and smoke.qlora.load_in_4bit  # QLoRA path kept in smoke
    # every change is recorded, and nothing else differs
    changed = {c.split(":")[0] for c in changes}
    for section in ("training", "tokenizer", "generation", "qlora", "metric", "speed"):
        for key, value in getattr(smoke, section).model_dump().items():
            if f"{section}.{key}" not in changed:
                assert value == getattr(getattr(cfg, section), key), f"{section}.{key}"
    assert any(c.startswith("generation.num_beams") for c in changes)
    with pytest.raises(ConfigError, match="unknown mode"):
        apply_mode(cfg, "turbo")


def test_tokenization_override_and_missing_analyzer(monkeypatch):
    import argparse
    import importlib.util

    from trainables.driver import launch

    args = argparse.Namespace(search_space=str(ROOT / "search_spaces"), only=["01_baseline_kobart_rtx3090"],
                              mode="smoke", data_dir=str(ROOT / "data"), tokenization="morpheme")
    experiments, _, changes = launch.check_inputs(args)
    assert experiments[0].metric.tokenization == "morpheme"
    assert any("--tokenization" in c for c in changes["01_baseline_kobart_rtx3090"])

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kiwipiepy" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="kiwipiepy"):
        launch.check_inputs(args)


def test_smoke_keeps_accumulation_step_evaluation_and_early_stopping():
    """Smoke shrinks sizes, lengths, beams and epochs only: every shipped config keeps its accumulation, early
    stopping and step-based evaluation, the interval scaled to the sample so that each epoch has >= 2 evaluations."""
    import math

    rows = 300  # data/train.csv
    for cfg in load_search_space(ROOT / "search_spaces"):
        smoke, changes = apply_mode(cfg, "smoke", train_rows=rows)
        t, full = smoke.training, cfg.training
        assert t.gradient_accumulation_steps == full.gradient_accumulation_steps > 1, cfg.name
        assert t.early_stopping_patience == full.early_stopping_patience, cfg.name
        assert t.logging_steps == full.logging_steps, cfg.name
        steps_per_epoch = math.ceil(math.ceil(rows / t.per_device_train_batch_size) / t.gradient_accumulation_steps)
        assert t.eval_steps is not None and 1 <= t.eval_steps <= full.eval_steps, cfg.name
        assert steps_per_epoch // t.eval_steps >= 2 or t.eval_steps < steps_per_epoch, cfg.name
        touched = {c.split(":")[0] for c in changes}
        assert touched <= {"training.num_train_epochs", "training.per_device_train_batch_size",
                           "training.per_device_eval_batch_size", "training.eval_steps", "training.learning_rate",
                           "training.warmup_ratio", "tokenizer.encoder_max_len", "tokenizer.decoder_max_len",
                           "generation.num_beams", "generation.max_length", "generation.min_length",
                           "qlora.lora_rank", "qlora.lora_alpha"}, touched


def test_one_metric_per_run_from_the_configs_or_the_command_line(tmp_path):
    """metric.best_metric drives early stopping; Tune keeps checkpoints and ranks trials by the run's metric: they
    are one setting. Configs that disagree are refused before anything starts, unless --metric sets it for all."""
    import argparse

    from trainables.driver import launch

    for name, metric in (("a", "rouge1"), ("b", "eval_loss")):
        data = _base()
        data["name"], data["metric"] = name, {"best_metric": metric}
        _write(tmp_path, name, data)
    args = argparse.Namespace(search_space=str(tmp_path), only=None, mode="smoke", data_dir=str(ROOT / "data"),
                              tokenization=None, metric=None)
    experiments, _, _ = launch.check_inputs(args)
    with pytest.raises(ConfigError, match=r"disagree on metric.best_metric \(a: rouge1, b: eval_loss\)"):
        launch.run_metric(experiments, str(tmp_path))
    args.metric = "eval_loss"
    experiments, _, changes = launch.check_inputs(args)
    assert launch.run_metric(experiments, str(tmp_path)) == "eval_loss"
    assert changes["a"][-1] == "metric.best_metric: rouge1 -> eval_loss (--metric)"
    assert not any("best_metric" in c for c in changes["b"])  # already eval_loss: nothing changed, nothing recorded


@pytest.mark.parametrize("text,value", [
    ("1e-4", 1e-4), ("1.0e5", 1e5), ("-2E+3", -2e3), (".5e1", 5.0), ("3.0e-05", 3e-5), ("7", 7), ("0.1", 0.1),
    ("-e5", "-e5"), ("1.2.3", "1.2.3"), ("'1e-4'", "1e-4"), ("e5", "e5"), ("1e", "1e"),
])
def test_yaml_numbers_are_read_as_yaml_1_2_does(tmp_path, text, value):
    """`1e-4` without a dot is a number (PyYAML's YAML 1.1 reads it as text); quoted or malformed stays text."""
    from trainables.config import read_yaml

    path = tmp_path / "x.yaml"
    path.write_text(f"training:\n  v: {text}\n", encoding="utf-8")
    read = read_yaml(path)["training"]["v"]
    assert read == value and type(read) is type(value)


def test_duplicate_keys_are_found_in_nested_lists_and_named_by_path(tmp_path):
    from trainables.config import read_yaml

    path = tmp_path / "x.yaml"
    path.write_text("run:\n  callbacks:\n    - factory: a:b\n      kwargs: {}\n      factory: c:d\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"x.yaml: run.callbacks\[0\].factory is written twice \(lines 3 and 5\)"):
        read_yaml(path)
    path.write_text("a: {b: 1}\nc: {b: 1}\n", encoding="utf-8")  # the same key in two mappings is fine
    assert read_yaml(path)["c"] == {"b": 1}


def test_numbers_stay_strict_in_the_trial_config_and_accept_numpy():
    """Every section refuses true/false and text for numbers (the trial's config too), but not numpy's numbers,
    which a sampler may hand over."""
    import numpy as np
    from pydantic import ValidationError

    from trainables.config import ExperimentConfig, Placement

    assert Placement(gpu=np.float64(0.5), memory_cap_gib=np.int64(20)).memory_cap_gib == 20
    for bad in (True, "0.5"):
        with pytest.raises(ValidationError, match="expected a number"):
            Placement(gpu=bad)
    cfg = load_experiment(SHIPPED[0]).model_dump()
    cfg["training"]["num_train_epochs"] = np.int64(2)
    assert ExperimentConfig.model_validate(cfg).training.num_train_epochs == 2
