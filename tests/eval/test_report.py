"""Writing eval results: the compact JSON, the samples as JSON lines, the run environment."""

import json

from blockfp8.eval.report import dumps, write_json, write_samples
from blockfp8.eval.runner import _environment


def test_json_and_samples_are_written_whole(tmp_path):
    results = {"schema": 1, "variants": {"bf16": {"per_item": {"loglik": [-1.5, -0.25, None]}}}}
    write_json(results, tmp_path / "out" / "r.json")
    text = (tmp_path / "out" / "r.json").read_text(encoding="utf-8")
    assert text == dumps(results) + "\n" and '"loglik": [-1.5, -0.25, null]' in text
    write_samples({"bf16": [{"id": 1}], "fp8": [{"id": 1}, {"id": 2}]}, tmp_path / "out" / "s.jsonl")
    lines = (tmp_path / "out" / "s.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"variant": "bf16", "id": 1}, {"variant": "fp8", "id": 1},
                                                    {"variant": "fp8", "id": 2}]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r.json", "s.jsonl"]


def test_environment_names_the_device_and_load_time():
    env = _environment("cpu", 1.23456)
    assert env["device"] == "cpu" and env["device_name"] and env["model_load_s"] == 1.235
    assert {"blockfp8", "python", "torch", "transformers", "threads", "date"} <= set(env)
