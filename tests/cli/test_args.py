"""The shared flag groups and value parsers of blockfp8.cli.args."""

import argparse
from dataclasses import fields

import pytest
import torch

from blockfp8 import platform
from blockfp8.audit.scale_plan import RANKINGS, PlanTolerance
from blockfp8.audit.verdict import Thresholds
from blockfp8.cli.args import (
    UsageError,
    add_config_arguments,
    add_model_arguments,
    add_plan_arguments,
    add_threshold_arguments,
    block_size,
    config_from_args,
    plan_from_args,
    positive_int,
    resolve_device,
    thresholds_from_args,
)
from blockfp8.config import BlockFP8Config


def test_cli_threshold_defaults_are_the_documented_ones():
    p = argparse.ArgumentParser()
    add_threshold_arguments(p)
    names = {f.name for f in fields(Thresholds)}
    helps = {a.dest: a.help for a in p._actions if a.dest in names}
    assert set(helps) == names
    for name, value in Thresholds().as_dict().items():
        assert f"(default {value:g})" in helps[name], name


def test_plan_rank_flag(capsys):
    p = argparse.ArgumentParser()
    add_plan_arguments(p)
    assert plan_from_args(p.parse_args([]))[0] == PlanTolerance()
    assert PlanTolerance().rank == "fisher_per_flop" and "(default fisher_per_flop)" in p.format_help()
    for rank in RANKINGS:
        assert plan_from_args(p.parse_args(["--plan-rank", rank]))[0].rank == rank
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--plan-rank", "flops"])
    assert exc.value.code == 2 and "--plan-rank: invalid choice: 'flops'" in capsys.readouterr().err


def test_thresholds_from_flags():
    p = argparse.ArgumentParser()
    add_threshold_arguments(p)
    assert thresholds_from_args(p.parse_args([])) == Thresholds()
    got = thresholds_from_args(p.parse_args(["--layer-bits-lost", "5", "--kl-increase", "0.5"]))
    assert got == Thresholds(layer_bits_lost=5, kl_increase=0.5)
    with pytest.raises(UsageError, match="unsafe_layer_share"):
        thresholds_from_args(p.parse_args(["--unsafe-layer-share", "2"]))


@pytest.mark.parametrize("text,want", [("128", (128, 128)), ("128x64", (128, 64)), ("64,128", (64, 128)),
                                       ("32X128", (32, 128)), ("16", (16, 16))])
def test_block_size_grammar(text, want):
    assert block_size(text) == want


@pytest.mark.parametrize("text", ["", "0", "128,0", "a,b", "1,2,3", "-128", "100", "128,96", "8", "512"])
def test_bad_block_sizes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="block size"):
        block_size(text)


def test_positive_int_and_model_flags():
    assert positive_int("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="positive"):
        positive_int("0")
    p = argparse.ArgumentParser()
    add_model_arguments(p)
    args = p.parse_args([])
    assert (args.seq_len, args.device, args.dtype, args.batch_tokens, args.bootstrap) == (128, "auto", "auto", 2048,
                                                                                          2000)


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(UsageError, match=r"^--device cuda:0: no CUDA GPU is available$"):
        resolve_device("cuda:0")
    with pytest.raises(UsageError, match=r"^--device 'gpu': expected auto, cpu, cuda or cuda:N$"):
        resolve_device("gpu")
    with pytest.raises(platform.DeviceError, match="--where 'cudax'"):  # the library error is a ValueError
        platform.resolve_device("cudax", flag="--where")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    assert issubclass(platform.DeviceError, ValueError)


def test_cli_flags_only_override_what_was_given():
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    base = BlockFP8Config(model_type="deepseek_v3", scale_fmt="ue8m0", ignored_layers=("lm_head",))
    assert config_from_args(p.parse_args([]), base) == base
    args = p.parse_args(["--use-deep-gemm", "off", "--moe-use-deep-gemm", "on", "--linear-backend", "triton",
                         "--scale-fmt", "float32", "--model-type", "llama"])
    c = config_from_args(args, base)
    assert (c.use_deep_gemm, c.moe_use_deep_gemm, c.linear_backend, c.moe_backend, c.scale_fmt, c.model_type,
            c.ignored_layers) == (False, True, "triton", "auto", "float32", "llama", ("lm_head",))
    with pytest.raises(SystemExit):
        p.parse_args(["--use-deep-gemm", "maybe"])
