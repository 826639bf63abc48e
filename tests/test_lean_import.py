"""Importing blockfp8 and `blockfp8 --help` must not import Triton, DeepGEMM or transformers, nor touch CUDA."""

import subprocess
import sys

HEAVY = ("triton", "deep_gemm", "transformers")

PROBE = """
import sys
{body}
heavy = [m for m in {heavy!r} if m in sys.modules]
cuda = 'torch' in sys.modules and sys.modules['torch'].cuda.is_initialized()
print(heavy, cuda)
"""


def probe(body: str) -> str:
    code = PROBE.format(body=body, heavy=HEAVY)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip()


def test_import_blockfp8_is_lean():
    assert probe("import blockfp8; import blockfp8.quant") == "[] False"


def test_cli_help_is_lean():
    body = "from blockfp8.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert probe(body).endswith("[] False")
