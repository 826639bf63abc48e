"""`blockfp8 quantize` killed at random points of its write (SIGTERM, SIGKILL), then run again, and two writers
racing for one DST: SRC is never touched, DST is at every moment absent, the old folder or the complete new one,
and no partial folder outlives its run (SIGTERM cleans up at once; after SIGKILL the next run reclaims it)."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

from blockfp8 import atomic
from blockfp8.cli.main import main
from blockfp8.formats import writer
from blockfp8.nn import load

transformers.logging.set_verbosity_error()
SRC_ROOT = Path(__file__).resolve().parents[2] / "src"
# ~60M parameters, so the write phase lasts long enough to be hit at a random point
BIG = LlamaConfig(vocab_size=4096, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4)
SMALL = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1)


def _model(folder, cfg):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    return folder


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _partials(parent):
    return sorted(p.name for p in parent.iterdir() if atomic.PARTIAL in p.name)


def _start(*argv):
    env = {**os.environ, "PYTHONPATH": str(SRC_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "blockfp8", "quantize", *map(str, argv), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _kill_while_writing(proc, parent, sig, delay):
    """Send ``sig`` ``delay`` seconds after the run's partial folder appears (or when it exits first)."""
    deadline = time.monotonic() + 600
    while not _partials(parent) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.slow
def test_killed_runs_lose_nothing_and_leave_nothing(tmp_path, monkeypatch):
    src = _model(tmp_path / "src", BIG)
    before = _digest(src)
    ref, old = tmp_path / "ref", tmp_path / "old"
    timings = []
    write_folder = writer._write_folder

    def timed(*args, **kwargs):
        start = time.monotonic()
        write_folder(*args, **kwargs)
        timings.append(time.monotonic() - start)

    monkeypatch.setattr(writer, "_write_folder", timed)
    assert main(["quantize", str(src), str(ref), "--no-progress"]) == 0
    monkeypatch.undo()
    write_time = timings[0]
    old.mkdir()
    (old / "config.json").write_text("{}")  # a previous DST, to be replaced
    want_new, want_old = _digest(ref), _digest(old)
    rng = random.Random()  # a fresh point each run; a failure names the delay it used
    out = tmp_path / "out"
    out_parent = out.parent

    # SIGTERM anywhere in the write: the run stops at once (exit 143), its partial folder removed, DST absent
    delay = rng.uniform(0, write_time)
    rc, err = _kill_while_writing(_start(src, out), out_parent, signal.SIGTERM, delay)
    case = f"SIGTERM {delay:.3f}s into the write (of ~{write_time:.2f}s): rc={rc} stderr={err[-500:]}"
    if rc == 0:  # it finished first: then DST is the complete result
        assert _digest(out) == want_new, case
        os.rename(out, tmp_path / "done")
    else:
        assert rc == 128 + signal.SIGTERM and "stopped by SIGTERM" in err and "Traceback" not in err, case
        assert not os.path.lexists(out), case
    assert _partials(out_parent) == [], case

    # SIGKILL over an existing DST with --overwrite: DST stays the old folder (or the new one, never neither)
    os.rename(old, out)
    delay = rng.uniform(0, write_time)
    rc, err = _kill_while_writing(_start(src, out, "--overwrite"), out_parent, signal.SIGKILL, delay)
    case = f"SIGKILL {delay:.3f}s into the write (of ~{write_time:.2f}s): rc={rc}"
    assert _digest(out) in (want_old, want_new), case
    if rc == -signal.SIGKILL:
        assert len(_partials(out_parent)) == 1, case  # what the next run must reclaim

    # the next run reclaims the killed run's partial folder and publishes the complete result
    assert main(["quantize", str(src), str(out), "--overwrite", "--no-progress"]) == 0
    assert _digest(out) == want_new and _partials(out_parent) == []
    assert _digest(src) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_writers_to_one_dst(tmp_path, monkeypatch, overwrite):
    """Both runs pass the start checks while DST is absent and both finish writing; then they publish. Without
    --overwrite exactly one wins and the other says DST appeared; with it, both publish, one after the other."""
    src = _model(tmp_path / "src", SMALL)
    dst = tmp_path / "out"
    both_written = threading.Barrier(2, timeout=120)
    publish = atomic.publish_folder

    def publish_together(tmp, target, *, overwrite):
        both_written.wait()
        publish(tmp, target, overwrite=overwrite)

    monkeypatch.setattr(atomic, "publish_folder", publish_together)
    # transformers sets and restores torch's process-wide default dtype while it builds a model: two threads
    # building at once would leave it changed for every later test, so the builds take turns
    one_build = threading.Lock()
    meta_model = load._meta_model

    def build_in_turn(*args, **kwargs):
        with one_build:
            return meta_model(*args, **kwargs)

    monkeypatch.setattr(load, "_meta_model", build_in_turn)
    flag = ["--overwrite"] if overwrite else []
    codes = []

    def run():
        codes.append(main(["quantize", str(src), str(dst), "--no-progress", *flag]))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(codes) == ([0, 0] if overwrite else [0, 1])
    assert _partials(tmp_path) == [] and (dst / "config.json").is_file()
    monkeypatch.undo()
    ref = tmp_path / "ref"
    assert main(["quantize", str(src), str(ref), "--no-progress"]) == 0
    assert _digest(dst) == _digest(ref)
    assert torch.get_default_dtype() == torch.float32
