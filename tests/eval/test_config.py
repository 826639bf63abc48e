"""Config validation of the eval harness: every bad input names its field; the CLI exits 2."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from blockfp8.cli.main import main
from blockfp8.eval.config import DEFAULT_TOLERANCE, EvalConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("smollm2-*.yaml"))

GOOD = {
    "model": "smollm2",
    "task": "lambada",
    "num_questions": 30,
    "variants": [
        {"name": "bf16", "accuracy_threshold": 0.3},
        {"name": "fp8-ue8m0", "blockfp8": {"scale_fmt": "ue8m0"}, "accuracy_threshold": 0.3, "tolerance": 0.1},
    ],
}


def with_(path, value):
    """GOOD with one field replaced (value=KeyError deletes it); path like 'variants.1.tolerance'."""
    cfg = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    key = int(last) if isinstance(node, list) else last
    if value is KeyError:
        del node[key]
    else:
        node[key] = value
    return cfg


def test_good_config_and_defaults():
    cfg = parse_config(GOOD)
    assert cfg.task == "lambada" and cfg.num_questions == 30 and cfg.num_fewshot == 0
    assert cfg.baseline == "bf16" and cfg.batch_size == 32 and cfg.dtype == "bfloat16"
    assert cfg.variants[0].tolerance == DEFAULT_TOLERANCE and cfg.variants[0].blockfp8 is None
    assert cfg.variants[1].quant_config().scale_fmt == "ue8m0"
    assert cfg.variants[1].passes(0.2) and not cfg.variants[1].passes(0.199)
    gsm = parse_config({**GOOD, "task": "gsm8k", "num_questions": None} | {"num_questions": 1319})
    assert gsm.num_fewshot == 5 and gsm.max_new_tokens == 256


@pytest.mark.parametrize(
    "path,value,field,message",
    [
        ("colour", "red", "colour", "unknown field"),
        ("model", KeyError, "model", "required"),
        ("task", KeyError, "task", "required"),
        ("variants", KeyError, "variants", "required"),
        ("variants", [], "variants", "non-empty list"),
        ("task", "sciq", "task", "unknown task 'sciq'"),
        ("model", "llama-70b", "model", "unknown model 'llama-70b'"),
        ("num_questions", 0, "num_questions", r"\[1, 5153\]"),
        ("num_questions", 6000, "num_questions", r"\[1, 5153\]"),
        ("num_questions", "all", "num_questions", "integer"),
        ("num_fewshot", 3, "num_fewshot", r"\[0, 0\]"),
        ("batch_size", True, "batch_size", "integer"),
        ("dtype", "fp8", "dtype", "bfloat16"),
        ("baseline", "fp32", "baseline", "not one of the variants"),
        ("variants.0.accuracy_threshold", 1.5, "variants[0].accuracy_threshold", r"in \[0, 1\]"),
        ("variants.0.accuracy_threshold", -0.1, "variants[0].accuracy_threshold", r"in \[0, 1\]"),
        ("variants.0.accuracy_threshold", KeyError, "variants[0].accuracy_threshold", "required"),
        ("variants.1.tolerance", 2, "variants[1].tolerance", r"in \[0, 1\]"),
        ("variants.1.tolerance", "0.1", "variants[1].tolerance", "number"),
        ("variants.1.name", "bf16", "variants[1].name", "duplicate"),
        ("variants.1.name", KeyError, "variants[1].name", "required"),
        ("variants.1.name", "a b", "variants[1].name", "letters"),
        ("variants.1.speed", 1, "variants[1].speed", "unknown field"),
        ("variants.1.blockfp8", {"scale_format": "ue8m0"}, "variants[1].blockfp8.scale_format", "BlockFP8Config"),
        ("variants.1.blockfp8", {"scale_fmt": "e8m0"}, "variants[1].blockfp8", "scale_fmt"),
        ("variants.1.blockfp8", {"linear_backend": "cutlass"}, "variants[1].blockfp8", "linear_backend"),
        ("variants.1.blockfp8", "ue8m0", "variants[1].blockfp8", "mapping"),
        ("variants.1", "fp8", "variants[1]", "mapping"),
    ],
)
def test_bad_field_is_named(path, value, field, message):
    with pytest.raises(EvalConfigError, match=rf"field '{__import__('re').escape(field)}': .*{message}"):
        parse_config(with_(path, value), source="cfg.yaml")


def test_gsm8k_fewshot_range():
    base = {**GOOD, "task": "gsm8k", "num_questions": 10}
    assert parse_config({**base, "num_fewshot": 8}).num_fewshot == 8
    with pytest.raises(EvalConfigError, match=r"'num_fewshot': must be in \[0, 8\]"):
        parse_config({**base, "num_fewshot": 9})


def test_model_folder_is_accepted(tmp_path):
    with pytest.raises(EvalConfigError, match="is a folder without config.json, not a model folder"):
        parse_config({**GOOD, "model": str(tmp_path)})
    (tmp_path / "config.json").write_text("{}")
    assert parse_config({**GOOD, "model": str(tmp_path)}).model == str(tmp_path)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(EvalConfigError, match="mapping"):
        parse_config(["model", "smollm2"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(EvalConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(EvalConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.model == "smollm2" and cfg.variants
    names = [v.name for v in cfg.variants]
    assert names[0] == "bf16" and cfg.baseline == "bf16"


def test_cli_bad_config_exits_2_naming_the_field(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(with_("variants.1.tolerance", 1.5)))
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert "variants[1].tolerance" in err and "c.yaml" in err
    path.write_text(yaml.safe_dump(with_("task", "sciq")))
    assert main(["eval", str(path)]) == 2
    assert "unknown task 'sciq'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # a bad flag value: argparse's usage error
        main(["eval", str(tmp_path / "c.yaml"), "--limit", "0"])
    assert info.value.code == 2 and "--limit: '0' must be a positive integer" in capsys.readouterr().err


def test_cli_bad_config_exit_code_from_a_shell(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(with_("colour", "red")))
    res = subprocess.run([sys.executable, "-m", "blockfp8", "eval", str(path)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2, res.stderr
    assert "field 'colour': unknown field" in res.stderr


def test_model_folder_config_is_checked_before_loading(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 10000000}')
    with pytest.raises(EvalConfigError, match="field 'model'.*num_hidden_layers=10000000 is beyond any real model"):
        parse_config({**GOOD, "model": str(tmp_path)})
    (tmp_path / "config.json").write_text("[" * 100)
    with pytest.raises(EvalConfigError, match="config.json: not valid JSON"):
        parse_config({**GOOD, "model": str(tmp_path)})
