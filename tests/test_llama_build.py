"""The embedded model server is the portable llama.cpp build: no instruction set only some CPUs have."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from deepstep import llama_build

# What llama_print_system_info() printed for llama-cpp-python 0.3.36 on an Intel Xeon (AVX-512, AMX).
NATIVE_XEON = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | "
    "AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
PORTABLE = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "


def test_native_only_features_are_found_in_a_native_build_report():
    assert llama_build.native_only_features(NATIVE_XEON) == ["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8"]


def test_a_portable_build_report_has_none():
    assert llama_build.compiled_features(PORTABLE)[:3] == ["SSE3", "SSSE3", "AVX"]
    assert llama_build.native_only_features(PORTABLE) == []


def test_a_feature_reported_as_off_does_not_count():
    assert llama_build.native_only_features("CPU : AVX2 = 1 | AVX512 = 0 | AMX_INT8 = 0 | ") == []


def test_the_installed_build_is_portable():
    """Whatever CPU runs the tests: the wheel scripts/setup.sh installed reports no native-only set."""
    info = llama_build.installed_system_info()
    assert llama_build.compiled_features(info), f"unexpected system info: {info!r}"
    assert llama_build.native_only_features(info) == [], info


def test_setup_check_command_agrees():
    script = Path(llama_build.__file__)
    done = subprocess.run([sys.executable, str(script), "--check", llama_build.installed_version()], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "portable build" in done.stdout
    wrong = subprocess.run([sys.executable, str(script), "--check", "0.0.1"], capture_output=True, text=True)
    assert wrong.returncode == 1 and "0.0.1 expected" in wrong.stderr
