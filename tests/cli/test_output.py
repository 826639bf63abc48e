"""One command-line grammar: `--json [FILE]` (stdout alone or with -, nothing else on stdout then) and `--quiet` on
every subcommand; files written with the umask's mode like any other output."""

import argparse
import json
import os
import stat

import pytest
import torch

from blockfp8.cli.main import SUBCOMMANDS, build_parser, main
from blockfp8.testing.synthetic import synthetic_weight, write_fp8_checkpoint


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_subcommand_has_quiet_and_one_json_rule(command):
    sub = _subparsers()[command]
    flags = {opt: a for a in sub._actions for opt in a.option_strings}
    assert flags["--quiet"].dest == "quiet" and flags["--no-progress"] is flags["--quiet"]
    if "--json" in flags:  # every command with JSON output: optional FILE, stdout by default
        assert flags["--json"].nargs == "?" and flags["--json"].const == "-"
    else:
        assert command == "tune", command  # tune writes its tables, nothing to print as JSON


@pytest.fixture
def ckpt(tmp_path):
    weights = {"model.layers.0.mlp.down_proj": synthetic_weight((256, 256), "gaussian", seed=0)}
    return write_fp8_checkpoint(tmp_path / "ckpt", weights, extra={"model.embed_tokens.weight": torch.randn(8, 4)})


@pytest.mark.parametrize("json_argv", [["--json"], ["--json", "-"]])
def test_json_on_stdout_is_the_only_stdout(ckpt, json_argv, capsys):
    assert main(["env", *json_argv]) == 0
    assert json.loads(capsys.readouterr().out)["blockfp8"]
    assert main(["explain", "--arch", "sm_90", *json_argv]) == 0
    assert "linear" in json.loads(capsys.readouterr().out)
    assert main(["audit", str(ckpt), *json_argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["summary"]["verdict"] in ("safe", "unsafe")
    assert "verdict for UE8M0 scales" in captured.err  # the human summary moved to stderr


def test_json_file_is_written_with_the_umask_mode(ckpt, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "r.json"
        assert main(["audit", str(ckpt), "--json", str(out), "--report", str(tmp_path / "rep"), "--quiet"]) == 0
        env_out = tmp_path / "env.json"
        assert main(["env", "--json", str(env_out)]) == 0
    finally:
        os.umask(old)
    assert f"wrote {out}" in capsys.readouterr().out
    assert json.loads(out.read_text())["summary"] and json.loads(env_out.read_text())["blockfp8"]
    for path in (out, env_out, tmp_path / "rep" / "report.json", tmp_path / "rep" / "report.md"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert not (tmp_path / "-").exists()


def test_quiet_silences_progress_and_loud_runs_print_lines_off_a_terminal(ckpt, capsys, monkeypatch):
    from blockfp8 import log

    monkeypatch.setattr(log, "PROGRESS_INTERVAL_S", 0.0)
    assert main(["audit", str(ckpt)]) == 0
    assert "blockfp8: auditing tensors: 1/1 tensor (100%)" in capsys.readouterr().err
    assert main(["audit", str(ckpt), "--quiet"]) == 0
    assert "auditing tensors" not in capsys.readouterr().err
