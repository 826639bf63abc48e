"""Progress lines (blockfp8.log.Progress / progress): a line every interval off a terminal, one line redrawn on a
terminal, nothing for a short step or after set_quiet."""

import io

import pytest

from blockfp8 import log


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def _not_quiet():
    log.set_quiet(False)
    yield
    log.set_quiet(False)


def test_lines_off_a_terminal_every_interval():
    out = io.StringIO()
    with log.Progress("calibrating", 4, "batches", stream=out, interval=0) as bar:
        for _ in range(4):
            bar.update()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("blockfp8: calibrating: 1/4 batches (25%), ")
    assert lines[3].startswith("blockfp8: calibrating: 4/4 batches (100%)") and len(lines) == 5  # + the final line
    assert "\r" not in out.getvalue()


def test_a_short_step_prints_nothing_off_a_terminal():
    out = io.StringIO()
    with log.Progress("quantizing", 3, stream=out, interval=3600) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_terminal_redraws_one_line():
    out = _Tty()
    with log.Progress("quantizing", 2 * 2**20, "MiB", stream=out, scale=2**20, interval=0) as bar:
        bar.update(2**20)
        bar.update(2**20)
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and "2.0/2.0 MiB (100%)" in text


def test_quiet_silences_progress_and_steps(capsys):
    log.set_quiet(True)
    out = io.StringIO()
    with log.Progress("x", 2, stream=out, interval=0) as bar:
        bar.update(2)
    assert list(log.progress(range(3), "y")) == [0, 1, 2]
    log.step("loading")
    assert out.getvalue() == "" and capsys.readouterr().err == ""


def test_progress_wraps_an_iterable(capsys, monkeypatch):
    monkeypatch.setattr(log, "PROGRESS_INTERVAL_S", 0.0)
    assert list(log.progress(["a", "b"], "scoring", "batches")) == ["a", "b"]
    err = capsys.readouterr().err
    assert "blockfp8: scoring: 2/2 batches (100%)" in err
    log.step("loading smollm2")
    assert capsys.readouterr().err == "blockfp8: loading smollm2\n"


def test_a_timer_prints_while_one_long_item_runs():
    import time

    out = io.StringIO()
    with log.Progress("loading smollm2", stream=out, interval=0.02):
        time.sleep(0.15)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("blockfp8: loading smollm2: ") for line in lines)
    assert lines[0].endswith(" s") and "/" not in lines[0]
