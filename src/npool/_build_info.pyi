# What CMakeLists.txt writes into npool/_build_info.py at build time.
openmp: bool
x86_64_v3_kernels: bool
x86_64_v4_kernels: bool
cuda_fatbin: bool
cuda_archs: str
compiler: str
cpu_report: str  # the kernel builds (ISA variants), compiler and OpenMP, in words
cuda_report: str  # the fatbin's architectures and nvcc, or why it was not built
