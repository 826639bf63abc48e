import json
import subprocess
import sys

import pytest

from blockfp8.cli.main import main


def run_cli(*args, env=None):
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "blockfp8", *args], capture_output=True, text=True, env=full_env,
                          timeout=300)


def test_env_json_reports_versions_and_arch_override(capsys):
    assert main(["env", "--json", "--arch", "sm_100a"]) == 0
    info = json.loads(capsys.readouterr().out)
    import torch

    assert info["torch"] == torch.__version__
    assert info["capability"] == [10, 0] and info["family"] == 100 and info["simulated"] is True
    assert set(info["libraries"]) >= {"triton", "deep_gemm", "transformers"}


def test_env_text_names_the_device(capsys):
    assert main(["env", "--arch", "9.0"]) == 0
    out = capsys.readouterr().out
    assert "sm_90 (Hopper)" in out and "torch" in out


def test_bad_arch_env_is_usage_error():
    res = run_cli("env", env={"BLOCKFP8_ARCH": "hopper"})
    assert res.returncode == 2
    assert "BLOCKFP8_ARCH" not in res.stdout and "sm_90" in res.stderr


def test_help_and_no_command():
    res = run_cli("--help")
    assert res.returncode == 0 and "env" in res.stdout and "audit" in res.stdout
    assert run_cli().returncode == 2


@pytest.mark.parametrize("argv", [["audit"], ["audit", "--model", "x", "--block", "0,128"]])
def test_audit_usage_errors(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
