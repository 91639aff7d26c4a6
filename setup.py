"""Build fastmtl: the Python package plus the compiled extension fastmtl._C.

* CPU build (CppExtension) by default.
* CUDA build (CUDAExtension) when torch is a CUDA build and a CUDA toolkit is found; no GPU is
  needed to build. Architectures default to sm_80 and sm_90 plus PTX (TORCH_CUDA_ARCH_LIST
  overrides).
* FASTMTL_SKIP_EXT=1 builds no extension: the package then runs on its pure-PyTorch path.

Install with `pip install --no-build-isolation -e .` (build isolation would fetch torch again).
"""

import glob
import os

from setuptools import setup

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))


def extension_modules():
    if os.environ.get("FASTMTL_SKIP_EXT", "0") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("pyext/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    with_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None and bool(cuda_sources)
    defines = [f'-DFASTMTL_VERSION="{VERSION}"', f'-DFASTMTL_TORCH_VERSION="{torch.__version__}"']
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    # -fopenmp: at::parallel_for is a header template; without it the pragma is ignored and
    # every kernel runs on one thread.
    extra = {"cxx": ["-O3", "-fopenmp", "-Wno-psabi", *defines]}
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        # The CUDA build of torch ships the CUDA library headers (cusparse.h, ...) in its nvidia wheels.
        include_dirs += glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "include"))
        extra["cxx"].append("-DFASTMTL_WITH_CUDA")
        extra["nvcc"] = ["-O3", "-DFASTMTL_WITH_CUDA", *defines]
        ext = cpp_extension.CUDAExtension(
            "fastmtl._C", cpp_sources + cuda_sources, include_dirs=include_dirs, extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "fastmtl._C", cpp_sources, include_dirs=include_dirs, extra_compile_args=extra, extra_link_args=["-fopenmp"]
        )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = extension_modules()

setup(
    name="fastmtl",
    version=VERSION,
    description="Fast, exact multi-task gradient surgery (PCGrad, GradDrop, ...) for PyTorch",
    package_dir={"": "python"},
    packages=["fastmtl", "fastmtl.methods"],
    python_requires=">=3.10",
    install_requires=["torch"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "numpy", "scipy", "torchjd"],
        "demo": ["scikit-learn", "matplotlib"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
