# cython: language_level=3
"""OpenMP and CPU queries for npool's thread and kernel selection (built without -march)."""
cdef extern from *:
    """
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static int npool_cpu_has_x86_64_v3(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2")
            && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("movbe");
    }
    static int npool_cpu_has_x86_64_v4(void) {
        __builtin_cpu_init();
        return npool_cpu_has_x86_64_v3() && __builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512cd")
            && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    }
    #else
    static int npool_cpu_has_x86_64_v3(void) { return 0; }
    static int npool_cpu_has_x86_64_v4(void) { return 0; }
    #endif
    #ifdef _OPENMP
    #include <omp.h>
    #define NPOOL_OPENMP_BUILT 1
    #define npool_omp_max_threads() omp_get_max_threads()
    #else
    #define NPOOL_OPENMP_BUILT 0
    #define npool_omp_max_threads() 1
    #endif
    """
    int npool_cpu_has_x86_64_v3() nogil
    int npool_cpu_has_x86_64_v4() nogil
    int NPOOL_OPENMP_BUILT
    int npool_omp_max_threads() nogil


def openmp_enabled():
    """Whether this module was compiled with OpenMP."""
    return bool(NPOOL_OPENMP_BUILT)


def openmp_max_threads():
    """omp_get_max_threads(): honours OMP_NUM_THREADS and threadpoolctl's limits (1 if serial)."""
    return npool_omp_max_threads()


def cpu_has_x86_64_v3():
    """Whether the CPU runs x86-64-v3 code (AVX2, FMA, BMI1/2, F16C, MOVBE)."""
    return bool(npool_cpu_has_x86_64_v3())


def cpu_has_x86_64_v4():
    """Whether the CPU (and the OS) runs x86-64-v4 code (x86-64-v3 and AVX-512 F, BW, CD, DQ,
    VL)."""
    return bool(npool_cpu_has_x86_64_v4())
