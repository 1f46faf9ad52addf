"""Process-wide run-time settings (icface_video/runtime.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from icface_video.runtime import AllocatorConfig


def _run(code: str, **env: str) -> str:
    import os

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env},
                         check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_allocator_tuning_applies_on_glibc_and_can_be_switched_off() -> None:
    code = ("from icface_video.runtime import tune_allocator; import numpy as np; ok = tune_allocator(); "
            "a = [np.ones(4 << 20) for _ in range(3)]; del a; print(ok, tune_allocator())")
    assert _run(code) == "True True"
    assert _run(code, ICFACE_MALLOC="default") == "False False"


def test_allocator_config_checks_its_values() -> None:
    with pytest.raises(ValueError, match="mmap_threshold_mib"):
        AllocatorConfig(mmap_threshold_mib=0)
    with pytest.raises(ValueError, match="trim_threshold_mib"):
        AllocatorConfig(trim_threshold_mib=4096)
