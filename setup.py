"""Build fastmtl's compiled extension fastmtl._C; the package's metadata (name, version,
dependencies, extras) is declared in pyproject.toml's [project] table.

* CPU build (CppExtension) by default.
* CUDA build (CUDAExtension) when torch is a CUDA build and a CUDA toolkit is found; no GPU is
  needed to build. Architectures default to sm_80 and sm_90 plus PTX (TORCH_CUDA_ARCH_LIST
  overrides).
* FASTMTL_SKIP_EXT=1 builds no extension: the package then runs on its pure-PyTorch path.

Install with `pip install --no-build-isolation -e .` (build isolation would fetch torch again).
What stays here is what must be code: the extension, and the package layout under python/ that
the extension's build needs in the same setup() call.
"""

import ast
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    """__version__ from python/fastmtl/_version.py, read without importing the package (which
    needs torch and, at build time, has no extension yet). pyproject.toml reads the same file."""
    path = os.path.join(ROOT, "python", "fastmtl", "_version.py")
    with open(path) as file:
        tree = ast.parse(file.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"no __version__ = '...' in {path}")


def extension_modules():
    if os.environ.get("FASTMTL_SKIP_EXT", "0") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("pyext/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    with_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None and bool(cuda_sources)
    defines = [f'-DFASTMTL_VERSION="{read_version()}"', f'-DFASTMTL_TORCH_VERSION="{torch.__version__}"']
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    # -fopenmp: at::parallel_for is a header template; without it the pragma is ignored and
    # every kernel runs on one thread.
    # -ffp-contract=off: no fused multiply-adds the source does not ask for (GCC fuses by default
    # where the target has FMA), so the clustering's linkage arithmetic rounds exactly as the torch
    # reference does and tied merges pick the same pair on every machine.
    extra = {"cxx": ["-O3", "-fopenmp", "-ffp-contract=off", "-Wno-psabi", *defines]}
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
    # Every package under python/ (fastmtl and its subpackages, found, not listed, so a new
    # subpackage ships without touching this file).
    package_dir={"": "python"},
    packages=find_packages("python"),
    package_data={"fastmtl": ["py.typed"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
