"""Fuzzing eval YAML configs: any text, bytes or structure either loads or raises EvalConfigError (exit 2) with a
short message, in bounded time: aliases, deep nesting, odd tags, huge numbers, bad encodings included."""

import time

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from blockfp8.eval.config import EvalConfigError, load_config

FUZZ = settings(max_examples=80, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
FIELDS = ["model", "task", "variants", "num_questions", "num_fewshot", "batch_size", "seed", "baseline", "dtype",
          "bootstrap_samples", "name", "blockfp8", "accuracy_threshold", "tolerance", "scale_fmt"]

# YAML's own syntax, so that random text exercises anchors, aliases, tags, flow collections and block scalars
tokens = st.sampled_from(["model: ", "task: ", "variants:", "\n", "  ", "- ", "&a ", "*a", "&b [", "*b, ", "]", "{",
                          "}", ": ", ", ", "!!python/object:os.system ", "!!binary ", "!!timestamp ", "|\n  ",
                          "'", '"', "smollm2", "lambada", "1e999", "9" * 5000, "null", "~", "\t", "#", "? ",
                          "---\n", "...\n", "\x00", "\ufeff", "%YAML 1.1\n"])
yaml_texts = st.lists(tokens, max_size=40).map("".join)

leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                   st.sampled_from(["smollm2", "lambada", "gsm8k", "bfloat16", "ue8m0"]))
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)),
                      max_leaves=15)
structures = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)


def _only_config_errors(path):
    start = time.monotonic()
    try:
        load_config(path)
    except EvalConfigError as exc:
        assert len(str(exc)) < 1500, str(exc)[:300]
    assert time.monotonic() - start < 2


@FUZZ
@given(text=yaml_texts)
@example(text="a: &a [x, x]\nb: &b [*a, *a]\nmodel: smollm2\nvariants: *b\n")
@example(text="model: " + "[" * 10_000 + "]" * 10_000)
@example(text="model: " + "{a: " * 2_000 + "}" * 2_000)
@example(text="seed: " + "9" * 5000)
@example(text="seed: !!timestamp 2001-13-45")
def test_yaml_text_fuzz(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _only_config_errors(path)


@FUZZ
@given(data=st.binary(max_size=200))
@example(data=b"model: caf\xe9\n")
@example(data=b"\xff\xfe m\x00o\x00")
def test_yaml_bytes_fuzz(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("yamlb") / "c.yaml"
    path.write_bytes(data)
    _only_config_errors(path)


@FUZZ
@given(config=structures)
def test_yaml_structure_fuzz(tmp_path_factory, config):
    path = tmp_path_factory.mktemp("yamls") / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    _only_config_errors(path)
