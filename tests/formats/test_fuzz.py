"""Fuzzing what a checkpoint folder holds: safetensors headers, the index and config.json. Whatever the bytes, the
readers either succeed or raise CheckpointError naming the file, in bounded time, with a message of bounded
length; never another exception."""

import json
import struct
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from blockfp8.formats import CheckpointError, SafetensorsCheckpoint, parse_quant_config, read_config_json, read_header
from blockfp8.formats.hf_config import SIZE_LIMITS, check_model_sizes

FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
MAX_MESSAGE = 1200  # a path (pytest's tmp folders are long), a tensor name and a short quote

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                    st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)
dtypes = st.sampled_from(["F32", "BF16", "F8_E4M3", "U8", "I64", "F8_E5M2", "X9", ""])
shapes = st.lists(st.integers(-2, 2**40), max_size=4)


@st.composite
def header_entries(draw):
    """Mostly plausible tensor entries (right keys, sometimes wrong values) with some garbage in between."""
    entry = draw(st.one_of(
        st.fixed_dictionaries({"dtype": dtypes, "shape": shapes,
                               "data_offsets": st.lists(st.integers(-5, 2**40), min_size=0, max_size=3)}),
        json_values,
    ))
    return entry


@st.composite
def safetensors_files(draw):
    entries = draw(st.dictionaries(st.text(max_size=12), header_entries(), max_size=5))
    if draw(st.booleans()):
        entries["__metadata__"] = draw(json_values)
    raw = json.dumps(entries).encode()
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]  # truncated JSON
    claimed = draw(st.one_of(st.just(len(raw)), st.integers(0, 2**64 - 1)))
    data = draw(st.binary(max_size=64))
    return struct.pack("<Q", claimed) + raw + data


def _file(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


def _only_checkpoint_errors(fn, *args):
    start = time.monotonic()
    try:
        fn(*args)
    except CheckpointError as exc:
        assert len(str(exc)) < MAX_MESSAGE, str(exc)[:300]
    assert time.monotonic() - start < 2


@FUZZ
@given(blob=st.one_of(safetensors_files(), st.binary(max_size=200)))
@example(blob=_file(b'{"a": {"dtype": [[[[]]]], "shape": [1]}}'))  # an unhashable dtype
@example(blob=_file(b'{"__metadata__": {"a": [' * 2000 + b"]}" * 2000))  # metadata nested deeply
@example(blob=_file(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
def test_safetensors_header_fuzz(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    path.write_bytes(blob)
    _only_checkpoint_errors(read_header, path)
    _only_checkpoint_errors(SafetensorsCheckpoint, path.parent)


@FUZZ
@given(index=json_values, text=st.one_of(st.none(), st.text(max_size=50)))
def test_index_fuzz(tmp_path_factory, index, text):
    folder = tmp_path_factory.mktemp("idx")
    (folder / "model.safetensors.index.json").write_text(text if text is not None else json.dumps(index))
    _only_checkpoint_errors(SafetensorsCheckpoint, folder)


config_fields = st.sampled_from(sorted(SIZE_LIMITS) + ["model_type", "text_config", "quantization_config"])


@st.composite
def quant_configs(draw):
    """A quantization_config that is sometimes close to valid: known keys, values of any type."""
    method = draw(st.sampled_from(["fp8", "compressed-tensors", "gptq", None]))
    keys = st.sampled_from(["fmt", "activation_scheme", "weight_block_size", "scale_fmt", "modules_to_not_convert",
                            "ignored_layers", "config_groups", "format", "ignore"])
    qc = draw(st.dictionaries(keys, json_values, max_size=5))
    if draw(st.booleans()):
        group = draw(st.dictionaries(st.sampled_from(["format", "weights", "input_activations", "targets"]),
                                     json_values, max_size=4))
        qc["config_groups"] = {"g": group}
    qc["quant_method"] = method
    return qc


@FUZZ
@given(config=st.dictionaries(config_fields, st.one_of(json_values, quant_configs()), max_size=6))
@example(config={"num_hidden_layers": 10_000_000})
@example(config={"hidden_size": "abc", "text_config": {"num_experts": True}})
def test_config_json_fuzz(tmp_path_factory, config):
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "config.json").write_text(json.dumps(config))

    def read_and_check(f):
        data = read_config_json(f)
        check_model_sizes(data, f / "config.json")
        if data.get("quantization_config") is not None:
            parse_quant_config(data["quantization_config"], str(f / "config.json"))

    _only_checkpoint_errors(read_and_check, folder)


@FUZZ
@given(text=st.text(max_size=100))
@example(text='{"a": ' + "[" * 5000 + "]" * 5000 + "}")
@example(text='{"hidden_size": ' + "9" * 5000 + "}")
def test_config_json_text_fuzz(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("cfgtext")
    (folder / "config.json").write_text(text)
    _only_checkpoint_errors(read_config_json, folder)


@pytest.mark.parametrize("value,message", [(1025, "beyond any real model"), (0, "positive integer"),
                                           (True, "positive integer"), (2.0, "positive integer")])
def test_size_limits(value, message):
    with pytest.raises(CheckpointError, match=message):
        check_model_sizes({"num_hidden_layers": value}, "config.json")
    check_model_sizes({"num_hidden_layers": 1024, "hidden_size": 7168, "n_routed_experts": 256}, "config.json")
