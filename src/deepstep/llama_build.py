"""Is the installed llama.cpp (``llama-cpp-python``) the portable build ``scripts/setup.sh`` makes?

A default llama.cpp build is ``-march=native``: built on a machine that advertises AVX-512 or
AMX, it uses them, and crashes on a CPU without them or in a VM that advertises AMX but faults
on it. The build reports what it was compiled with in ``llama_print_system_info()``
(``AVX512 = 1 | AMX_INT8 = 1 | ...``); the portable build has none of the native-only sets.

Imports nothing from deepstep, so ``scripts/setup.sh`` runs it before deepstep is installed:
``python src/deepstep/llama_build.py --check [VERSION]`` exits 0 for a portable build.
"""

from __future__ import annotations

import re
import sys

# Instruction sets only recent server CPUs have (Intel Skylake-SP and later, AMD Zen 4), which a
# portable build must not assume. A feature the build reports as "NAME = 1" was compiled in.
NATIVE_ONLY_FEATURES = ("AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI", "AMX_INT8", "AMX_BF16", "AMX_TILE")

_FEATURE = re.compile(r"\b([A-Z][A-Z0-9_]*) = 1\b")


def compiled_features(system_info: str) -> list[str]:
    """The features a ``llama_print_system_info()`` line reports as compiled in, in order."""
    return _FEATURE.findall(system_info)


def native_only_features(system_info: str) -> list[str]:
    """The features of ``system_info`` that a portable build must not have."""
    return [feature for feature in compiled_features(system_info) if feature in NATIVE_ONLY_FEATURES]


def installed_system_info() -> str:
    """``llama_print_system_info()`` of the installed ``llama_cpp`` (loading the library runs no kernel)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)


def installed_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "--check":
        print("usage: python -m deepstep.llama_build --check [VERSION]", file=sys.stderr)
        return 2
    try:
        version = installed_version()
        info = installed_system_info()
    except Exception as error:  # noqa: BLE001 - any failure to load means "not usable"
        print(f"llama-cpp-python is not installed or does not load: {error}", file=sys.stderr)
        return 1
    if len(argv) > 1 and version != argv[1]:
        print(f"llama-cpp-python {version} is installed, {argv[1]} expected", file=sys.stderr)
        return 1
    native = native_only_features(info)
    if native:
        print(f"llama-cpp-python {version} was built for a specific CPU ({', '.join(native)}): {info.strip()}", file=sys.stderr)
        return 1
    print(f"llama-cpp-python {version}, portable build: {info.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
