"""The one tuned-table reader: keys from the Platform (GPU name, then SM family; none when planned), nearest bucket
at or below, dispatch only among the decision's candidates, Triton configs for every bucket, atomic merge."""

from __future__ import annotations

import dataclasses
import json

import pytest

from blockfp8.backends import tuned
from blockfp8.platform import detect

H100 = dataclasses.replace(detect("sm_90"), gpu_name="NVIDIA H100 80GB HBM3", simulated=False)
TABLE = {"GPU": {"2112,7168": {"1": {"backend": "triton"}, "4096": {"backend": "scaled_mm"}}}}


def test_platform_keys_name_then_family_and_none_when_planned():
    assert tuned.platform_keys(H100) == ("NVIDIA_H100_80GB_HBM3", "sm90")
    assert tuned.platform_keys(detect("sm_90")) == (), "a BLOCKFP8_ARCH plan has no measured table"
    assert tuned.platform_keys(dataclasses.replace(H100, capability=None)) == (), "a CPU has no table"


def test_dispatch_picks_only_among_candidates(tmp_path):
    pick = tuned.dispatch_backend
    assert pick(("GPU",), 1, 2112, 7168, ("scaled_mm", "triton"), table=TABLE) == "triton"
    assert pick(("GPU",), 3, 2112, 7168, ("scaled_mm", "triton"), table=TABLE) == "triton"  # bucket 16 -> 1
    assert pick(("GPU",), 8192, 2112, 7168, ("scaled_mm", "triton"), table=TABLE) == "scaled_mm"
    # the table's choice is not allowed by the decision: the policy's first candidate
    assert pick(("GPU",), 1, 2112, 7168, ("deepgemm", "scaled_mm"), table=TABLE) == "deepgemm"
    # unknown shape or GPU: the policy's first candidate
    assert pick(("GPU",), 1, 7, 7, ("scaled_mm", "triton"), table=TABLE) == "scaled_mm"
    assert pick(("other",), 1, 2112, 7168, ("triton",), table=TABLE) == "triton"
    # the SM-family entry serves a GPU nobody tuned for
    assert pick(("other", "GPU"), 1, 2112, 7168, ("scaled_mm", "triton"), table=TABLE) == "triton"
    with pytest.raises(ValueError, match="no candidate"):
        pick(("GPU",), 1, 2112, 7168, (), table=TABLE)


def test_dispatch_compares_only_backends_the_table_timed():
    cell = {"1": {"backend": "triton", "us": {"scaled_mm": 15.0, "triton": 10.0}},
            "512": {"backend": "deepgemm", "us": {"scaled_mm": 30.0, "triton": 60.0, "deepgemm": 20.0}},
            "4096": {"backend": "triton", "us": {"scaled_mm": 90.0, "triton": 80.0, "deepgemm": 85.0}}}
    table = {"GPU": {"2112,7168": cell}}
    pick = tuned.dispatch_backend
    # tuned without DeepGEMM: nothing says triton beats it, so the policy's pick stays
    assert pick(("GPU",), 1, 2112, 7168, ("deepgemm", "scaled_mm", "triton"), table=table) == "deepgemm"
    assert pick(("GPU",), 1, 2112, 7168, ("scaled_mm", "triton"), table=table) == "triton"
    assert pick(("GPU",), 512, 2112, 7168, ("deepgemm", "scaled_mm", "triton"), table=table) == "deepgemm"
    assert pick(("GPU",), 4096, 2112, 7168, ("deepgemm", "scaled_mm", "triton"), table=table) == "triton"
    assert pick(("GPU",), 4096, 2112, 7168, ("deepgemm", "scaled_mm"), table=table) == "deepgemm"


def test_dispatch_picks_cute_only_where_it_is_a_candidate():
    """A table measured with the optional CuTe DSL kernel still serves a machine without it: the fastest timed
    candidate wins, an uninstalled backend is never named."""
    cell = {"128": {"backend": "cute", "us": {"scaled_mm": 20.0, "cute": 15.0, "triton": 25.0}}}
    table = {"GPU": {"2112,7168": cell}}
    pick = tuned.dispatch_backend
    assert pick(("GPU",), 128, 2112, 7168, ("scaled_mm", "cute", "triton"), table=table) == "cute"
    assert pick(("GPU",), 128, 2112, 7168, ("scaled_mm", "triton"), table=table) == "scaled_mm"


def test_triton_configs_cover_every_bucket_with_the_nearest_below():
    table = {"sm90": {"576,7168": {"1": {"BLOCK_M": 16}, "64": {"BLOCK_M": 64}, "4096": {"BLOCK_M": 128}}}}
    configs = tuned.triton_configs(("NVIDIA_H200", "sm90"), 576, 7168, table=table)
    assert set(configs) == set(tuned.M_BUCKETS)
    assert [configs[b]["BLOCK_M"] for b in (1, 16, 32, 64, 128, 2048, 4096, 8192)] == [16, 16, 16, 64, 64, 64, 128,
                                                                                       128]
    assert tuned.triton_configs(("NVIDIA_H200",), 576, 7168, table=table) == {}
    assert tuned.nearest_bucket({16: 0, 64: 0}, 1) == 16, "below the smallest bucket: the smallest"


def test_merge_write_keeps_other_buckets(tmp_path):
    path = tmp_path / "d.json"
    tuned.merge_write(path, "GPU", {"576,7168": {"1": {"backend": "triton"}}})
    tuned.merge_write(path, "GPU", {"576,7168": {"16": {"backend": "scaled_mm"}}})
    assert set(json.loads(path.read_text())["GPU"]["576,7168"]) == {"1", "16"}
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"], "no temporary file left behind"


def test_shipped_tables_are_consistent():
    gemm_table = tuned.load(tuned.TRITON_GEMM_FILE)
    disp = tuned.load(tuned.DISPATCH_FILE)
    assert disp, "the shipped dispatch table is empty"
    for gpu, per in disp.items():
        for nk, buckets in per.items():
            for b, entry in buckets.items():
                assert entry["backend"] in ("triton", "scaled_mm", "cute", "deepgemm"), (gpu, nk, b)
                if entry["backend"] == "triton":  # the launch takes the nearest tuned bucket at or below M
                    n, k = map(int, nk.split(","))
                    assert tuned.triton_configs([gpu], n, k, gemm_table).get(int(b)), \
                        f"dispatch picks triton without a tuned config: {gpu} {nk} {b}"


def test_untuned_shape_borrows_the_nearest_tuned_shape_within_2x():
    table = {"sm90": {"4096,7168": {"1": {"backend": "triton", "us": {"triton": 1.0}}},
                      "8192,16384": {"1": {"backend": "scaled_mm", "us": {"scaled_mm": 1.0}}},
                      "bad,shape": {"1": {"backend": "triton"}}}}
    assert tuned.entry_for(table, ["sm90"], 4096, 12288)[1]["backend"] == "triton"  # K 1.7x off, N equal
    assert tuned.entry_for(table, ["sm90"], 8192, 14000)[1]["backend"] == "scaled_mm"
    assert tuned.entry_for(table, ["sm90"], 4096, 7168)[1]["backend"] == "triton"  # exact
    assert tuned.entry_for(table, ["sm90"], 1024, 7168) == {}  # N 4x off: nothing borrowed
    assert tuned.entry_for(table, ["sm90"], 0, 7168) == {}
    assert tuned.entry_for(table, ["NVIDIA_H200", "sm90"], 4096, 12288)[1]["backend"] == "triton"
    exact_elsewhere = {"NVIDIA_H200": {"4096,12288": {"1": {"backend": "scaled_mm"}}}, **table}
    assert tuned.entry_for(exact_elsewhere, ["NVIDIA_H200", "sm90"], 4096, 12288)[1]["backend"] == "scaled_mm"
