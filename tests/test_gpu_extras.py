"""pyproject's GPU extras: TensorRT and cuda-python must be built for the same CUDA major, the driver's.

A CUDA 13 build on a CUDA 12 driver fails only at the first CUDA call on a GPU machine (cudaErrorInsufficientDriver),
so the pins are checked here, where no GPU is needed.
"""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from export.tensorrt.build import MIN_TENSORRT
from export.trt_operators import TENSORRT_DISTRIBUTIONS
from runtime.backends.tensorrt_cuda import DRIVER_HINT, INSTALL_HINT

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
CUDA_MAJORS = (12, 13)


def requirements(extra: str) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, EXTRAS[extra])}


@pytest.mark.parametrize("major", CUDA_MAJORS)
def test_each_cuda_extra_pins_tensorrt_and_cuda_python_for_that_major_only(major):
    reqs = requirements(f"gpu-cu{major}")
    assert set(reqs) == {f"tensorrt-cu{major}", "cuda-python"}
    cuda = reqs["cuda-python"].specifier
    assert cuda.contains(f"{major}.9.10"), cuda
    assert not cuda.contains(f"{major - 1}.9.10") and not cuda.contains(f"{major + 1}.0.0"), cuda
    assert not cuda.contains("12.5.0")  # cuda.bindings.runtime, which the backend imports, arrived in 12.6


@pytest.mark.parametrize("major", CUDA_MAJORS)
def test_each_cuda_extra_allows_the_tensorrt_majors_the_backend_is_written_for(major):
    tensorrt = requirements(f"gpu-cu{major}")[f"tensorrt-cu{major}"].specifier
    assert tensorrt.contains("11.4.0.106"), tensorrt  # what PyPI resolved for both majors when this was written
    assert not tensorrt.contains("12.0.0"), tensorrt
    below_minimum = f"{MIN_TENSORRT[0]}.{MIN_TENSORRT[1] - 1}" if MIN_TENSORRT[1] else f"{MIN_TENSORRT[0] - 1}.99"
    assert not tensorrt.contains(below_minimum), tensorrt


@pytest.mark.parametrize("major", CUDA_MAJORS)
def test_the_installed_tensorrt_of_each_extra_is_recognised(major):
    # The operator check reads the installed TensorRT release from one of these distributions' metadata.
    assert f"tensorrt-cu{major}" in TENSORRT_DISTRIBUTIONS


def test_gpu_is_the_cuda13_extra():
    assert PYPROJECT["project"]["name"] == "panseg"
    assert EXTRAS["gpu"] == ["panseg[gpu-cu13]"]


def test_install_hints_name_the_extras():
    assert "panseg[gpu-cu13]" in INSTALL_HINT and "panseg[gpu-cu12]" in INSTALL_HINT
    assert "panseg[gpu-cu12]" in DRIVER_HINT
