# What CMakeLists.txt writes into npool/_build_info.py at build time.
openmp: bool
x86_64_v3_kernels: bool
x86_64_v4_kernels: bool
cuda_fatbin: bool
cuda_archs: str
compiler: str
