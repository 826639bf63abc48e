"""What machine we are on: device, SM capability and family, versions, optional libraries.

BLOCKFP8_ARCH (or an explicit `arch=`) overrides the capability so that any GPU's decision can be
planned and tested on a CPU box; such a platform is marked `simulated`.
Optional libraries are probed with importlib.util.find_spec: nothing heavy is imported here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform as _pyplatform
from dataclasses import dataclass, field
from pathlib import Path

from blockfp8 import envs
from blockfp8.envs import EnvError, parse_arch  # noqa: F401  (parse_arch is re-exported)

OPTIONAL_LIBRARIES = ("triton", "deep_gemm", "transformers", "safetensors", "gguf", "accelerate", "matplotlib")
CUTE_DSL = "cute_dsl"  # the libraries entry for the CuTe DSL (nvidia-cutlass-dsl) with its TVM-FFI call path


def _has_cute_dsl() -> bool:
    """``cutlass.cute`` and ``tvm_ffi`` are importable, found without importing ``cutlass`` (slow, and another
    project's ``cutlass`` package has no ``cute``)."""
    spec = importlib.util.find_spec("cutlass")
    locations = list(spec.submodule_search_locations or []) if spec else []
    has_cute = any((Path(loc) / "cute").is_dir() for loc in locations)
    return has_cute and importlib.util.find_spec("tvm_ffi") is not None


def family_of(capability: tuple[int, int] | None) -> int | None:
    """SM family: 90 Hopper; 100 for SM100/SM103 (B200/B300); 120 for SM120/SM121; else major*10+minor."""
    if capability is None:
        return None
    major, minor = capability
    if major == 10:
        return 100
    if major == 12:
        return 120
    return major * 10 + minor


FAMILY_NAMES = {
    89: "Ada",
    90: "Hopper",
    100: "Blackwell datacenter (SM100/SM103)",
    120: "Blackwell consumer (SM120/SM121)",
}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Platform:
    device: str  # "cuda" or "cpu"
    gpu_name: str | None
    capability: tuple[int, int] | None
    simulated: bool  # capability comes from BLOCKFP8_ARCH / --arch, not from a GPU
    python_version: str
    torch_version: str
    cuda_version: str | None
    triton_version: str | None
    libraries: dict[str, bool] = field(default_factory=dict)  # importable (find_spec), not necessarily usable

    @property
    def family(self) -> int | None:
        return family_of(self.capability)

    @property
    def arch(self) -> str | None:
        return None if self.capability is None else f"sm_{self.capability[0]}{self.capability[1]}"

    @property
    def is_hopper(self) -> bool:
        return self.family == 90

    @property
    def ue8m0_only_deepgemm(self) -> bool:
        """DeepGEMM's block-scaled MMA on these parts takes only power-of-two (UE8M0) scales."""
        return self.family in (100, 120)

    @property
    def cute_dsl_version(self) -> str | None:
        return _version("nvidia-cutlass-dsl") if self.has(CUTE_DSL) else None

    def has(self, library: str) -> bool:
        return self.libraries.get(library, False)

    def describe(self) -> str:
        if self.capability is None:
            return "CPU (no CUDA GPU)"
        fam = FAMILY_NAMES.get(self.family or -1, f"SM{self.family}")
        what = self.gpu_name or "simulated GPU"
        return f"{what}, {self.arch} ({fam}){' [simulated]' if self.simulated else ''}"

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "gpu_name": self.gpu_name,
            "capability": list(self.capability) if self.capability else None,
            "arch": self.arch,
            "family": self.family,
            "simulated": self.simulated,
            "python": self.python_version,
            "torch": self.torch_version,
            "cuda": self.cuda_version,
            "triton": self.triton_version,
            "libraries": dict(self.libraries),
        }


def detect(arch: str | None = None) -> Platform:
    """The platform now. `arch` (else BLOCKFP8_ARCH) overrides the capability."""
    import torch

    override = arch if arch is not None else envs.get("BLOCKFP8_ARCH")
    has_cuda = torch.cuda.is_available()
    gpu_name, capability = None, None
    if has_cuda:
        gpu_name = torch.cuda.get_device_name()
        capability = tuple(torch.cuda.get_device_capability())
    simulated = False
    if override:
        capability, simulated = parse_arch(override), True
    libraries = {name: importlib.util.find_spec(name) is not None for name in OPTIONAL_LIBRARIES}
    libraries[CUTE_DSL] = _has_cute_dsl()
    return Platform(
        device="cuda" if has_cuda else "cpu",
        gpu_name=gpu_name,
        capability=capability,
        simulated=simulated,
        python_version=_pyplatform.python_version(),
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        triton_version=_version("triton") if libraries["triton"] else None,
        libraries=libraries,
    )


def source_commit() -> str:
    """``BLOCKFP8_COMMIT`` when set (a copy of the tree whose git metadata is missing or stale), else the git commit
    of this source tree (``+dirty`` with uncommitted changes), else "unknown"."""
    import subprocess
    from pathlib import Path

    if envs.get("BLOCKFP8_COMMIT"):
        return envs.get("BLOCKFP8_COMMIT")
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=root, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return (commit + ("+dirty" if dirty else "")) or "unknown"


def run_environment(device: str = "cpu", *, commit: bool = False) -> dict:
    """The one description of where a result was produced (audit reports, eval reports, benchmark CSVs): package
    and library versions, the device and GPU name, CPU threads, the UTC date, optionally the source commit."""
    import datetime

    import torch

    from blockfp8 import __version__

    on_gpu = str(device).startswith("cuda") and torch.cuda.is_available()
    env = {
        "blockfp8": __version__,
        "python": _pyplatform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "triton": _version("triton") or "",
        "cutlass_dsl": _version("nvidia-cutlass-dsl") or "",
        "transformers": _version("transformers") or "",
        "device": str(device),
        "gpu": torch.cuda.get_device_name(torch.device(device)) if on_gpu else None,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    }
    if commit:
        env["commit"] = source_commit()
    return env


class DeviceError(ValueError):
    """A device string that is not valid here; the message names the flag and the value."""


def resolve_device(text: str | None, flag: str = "--device") -> str:
    """``auto`` (or None) -> ``cuda`` when a GPU is there, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` as given.
    Anything else, or a CUDA device without a GPU, raises :class:`DeviceError` naming ``flag`` and the value."""
    import torch

    if text in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text != "cpu" and text != "cuda" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise DeviceError(f"{flag} {text!r}: expected auto, cpu, cuda or cuda:N")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"{flag} {text}: no CUDA GPU is available")
    return text
