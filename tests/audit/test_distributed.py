"""`torchrun --nproc-per-node 2 -m blockfp8 audit PATH` (gloo on CPU) writes the same report as one process."""

import json
import os
import subprocess
import sys

import pytest

from blockfp8.audit.distributed import assign
from blockfp8.audit.report import comparable
from blockfp8.testing.synthetic import synthetic_weight, write_fp8_checkpoint


def test_assign_balances_by_size_and_is_deterministic():
    shares = assign([100, 10, 90, 20, 5], 2)
    assert shares == [[0, 1, 4], [2, 3]]  # loads 115 and 110
    assert sorted(i for s in shares for i in s) == list(range(5))
    assert assign([1, 1, 1], 4) == [[0], [1], [2], []]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    layers = [("up_proj", (384, 256), "gaussian"), ("down_proj", (256, 384), "outlier"),
              ("gate_proj", (384, 256), "pow2"), ("o_proj", (130, 250), "gaussian"), ("q_proj", (512, 256), "outlier")]
    weights = {f"model.layers.{i}.mlp.{p}": synthetic_weight(shape, kind, seed=i)
               for i, (p, shape, kind) in enumerate(layers)}
    ckpt = write_fp8_checkpoint(tmp_path / "ckpt", weights)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, "-m", "blockfp8", "audit", str(ckpt), "--json", str(one), "--no-progress"],
                   check=True, env=env, capture_output=True, timeout=120)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "blockfp8",
         "audit", str(ckpt), "--json", str(two), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["run"]["world_size"] == 2 and a["run"]["world_size"] == 1
    assert comparable(a) == comparable(b)
    assert proc.stdout.count("verdict for UE8M0 scales") == 1  # only rank 0 reports
