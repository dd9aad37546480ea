// Shared definitions of npool's CUDA kernels: numeric helpers, fast index division and the
// macro that turns a per-work-item function into a kernel.
//
// Every kernel of npool has one argument, a struct of 8-byte fields passed by value, and runs a
// per-work-item function `f(args, t)` for t in [0, args.count) in a grid-stride loop. Compiled
// with -DNPOOL_HOST_EMULATION, the same sources give plain host functions that run every work
// item in a loop: the test suite compiles them with nvcc and checks the kernels' arithmetic and
// indexing on a machine without a GPU.
#pragma once
#include <cstdint>
#include <cstring>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifdef NPOOL_HOST_EMULATION
#include <ucontext.h>

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>
// For the tests (tests/test_cuda_layouts.py): an argument struct's size, then its fields'
// offsets in declaration order (and, from name##_fields, their names), which npool._cuda's
// numpy mirror of the struct must match field by field.
#define NPOOL_OFFSET(T, field) static_cast<int64_t>(offsetof(T, field))
#define NPOOL_EXPORT_LAYOUT(name, T, ...)                                                     \
  extern "C" __attribute__((visibility("default"))) int64_t name(int64_t* out) {              \
    using A = T; /* the offsets name their struct A */                                        \
    const int64_t layout[] = {static_cast<int64_t>(sizeof(A)), __VA_ARGS__};                   \
    const int64_t count = sizeof(layout) / sizeof(layout[0]);                                 \
    for (int64_t i = 0; i < count; ++i) out[i] = layout[i];                                   \
    return count;                                                                             \
  }                                                                                           \
  extern "C" __attribute__((visibility("default"))) const char* name##_fields() {             \
    return #__VA_ARGS__; /* the offsets' text: the fields' names, in order */                 \
  }
#define NPOOL_FN inline
#define NPOOL_COLD_FN __attribute__((noinline))
#else
#define NPOOL_FN __device__ __forceinline__
// A rarely taken path (the careful redo of an overflowing window), kept out of line so that
// its float64 arithmetic costs the hot path no registers.
#define NPOOL_COLD_FN __device__ __noinline__
#endif

namespace npool {

// ------------------------------------------------------------------ numbers
// Storage type T -> accumulation type: float for the 16-bit types (__half, __nv_bfloat16) and
// float, double for double.
template <typename T> struct Accumulator { using type = float; };
template <> struct Accumulator<double> { using type = double; };

NPOOL_FN float to_acc(__half v) { return __half2float(v); }
NPOOL_FN float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
NPOOL_FN float to_acc(float v) { return v; }
NPOOL_FN double to_acc(double v) { return v; }

template <typename T> NPOOL_FN T from_acc(typename Accumulator<T>::type v);
template <> NPOOL_FN __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> NPOOL_FN __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <> NPOOL_FN float from_acc<float>(float v) { return v; }
template <> NPOOL_FN double from_acc<double>(double v) { return v; }

#ifdef NPOOL_HOST_EMULATION
NPOOL_FN float exp_acc(float v) { return std::exp(v); }
NPOOL_FN double exp_acc(double v) { return std::exp(v); }
NPOOL_FN float log_acc(float v) { return std::log(v); }
NPOOL_FN double log_acc(double v) { return std::log(v); }
NPOOL_FN bool is_finite(float v) { return std::isfinite(v); }
NPOOL_FN bool is_finite(double v) { return std::isfinite(v); }
#else
NPOOL_FN float exp_acc(float v) { return expf(v); }
NPOOL_FN double exp_acc(double v) { return ::exp(v); }
NPOOL_FN float log_acc(float v) { return logf(v); }
NPOOL_FN double log_acc(double v) { return ::log(v); }
NPOOL_FN bool is_finite(float v) { return isfinite(v); }
NPOOL_FN bool is_finite(double v) { return isfinite(v); }
#endif

template <typename A> NPOOL_FN A infinity() { return A(HUGE_VAL); }
template <typename A> NPOOL_FN A quiet_nan() { return A(NAN); }

// s (v - w) for finite v and w in float64, without overflow in v - w (halved when that would
// overflow: only float64 values beyond 9e307 need it). Softmax-style weights relative to a
// window's or a map's extreme cell use it where s v itself overflows.
NPOOL_FN double scaled_difference(double s, double v, double w) {
  const double d = v - w;
  if (d - d == 0) return s * d;
  return 2 * (s * (0.5 * v - 0.5 * w));
}

// ------------------------------------------------------------------ index division
// A divisor with its magic numbers for 32-bit division by multiplication (Granlund-Montgomery,
// as PyTorch's IntDivider): for 0 <= n < 2^31, n / d == (mulhi(n, magic) + n) >> shift. The host
// computes magic and shift. Kernels whose every index fits in 31 bits divide this way; the
// others (arrays of 2^31 elements or more) use 64-bit division.
struct Divisor {
  int64_t value;
  int64_t magic;
  int64_t shift;
};

NPOOL_FN uint32_t mulhi32(uint32_t a, uint32_t b) {
#ifdef NPOOL_HOST_EMULATION
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#else
  return __umulhi(a, b);
#endif
}

NPOOL_FN int32_t divide(int32_t n, const Divisor& d) {
  const uint32_t u = static_cast<uint32_t>(n);
  return static_cast<int32_t>((mulhi32(u, static_cast<uint32_t>(d.magic)) + u) >> d.shift);
}
NPOOL_FN int64_t divide(int64_t n, const Divisor& d) { return n / d.value; }

// q = n / d, r = n % d with the division of the index type I.
template <typename I> NPOOL_FN I div_mod(I n, const Divisor& d, I* remainder) {
  const I q = divide(n, d);
  *remainder = n - q * static_cast<I>(d.value);
  return q;
}

// ------------------------------------------------------------------ blocks
// Block-level kernels see their coordinates, barrier and dynamic shared memory through these,
// so that the host emulation can run every CUDA thread of a block.
#ifdef NPOOL_HOST_EMULATION
namespace emulation {
// A block's CUDA threads run as fibers (ucontext) on the launching host thread, one at a time:
// sync_block() hands over to the next thread, and the last thread's hand-over resumes thread 0,
// so no thread passes a barrier before every thread of the block has reached it (as
// __syncthreads). One host thread per block instead of one per CUDA thread: cheap, and the same
// order every run.
struct Block {
  int64_t index, count;  // blockIdx.x, gridDim.x
  int size;              // blockDim.x
  unsigned char* shared;
  ucontext_t* fibers;     // one per CUDA thread
  ucontext_t* launcher;   // where the block returns when its last thread ends
  int64_t* arrivals;      // barriers reached, per thread
  const std::function<void()>* body;
};
inline thread_local Block block;
inline thread_local int thread;

inline void switch_to(int next) {
  const int t = thread;
  thread = next;
  swapcontext(&block.fibers[t], &block.fibers[next]);
  thread = t;
}

inline void run_fiber() {
  (*block.body)();
  // this thread has ended: the next one resumes (threads end in order, all after the same
  // barrier), and after the last the launcher
  const int t = thread;
  if (t + 1 < block.size) {
    thread = t + 1;
    setcontext(&block.fibers[t + 1]);
  }
  setcontext(block.launcher);
}

inline void run_blocks(int64_t grid, int size, int64_t shared_bytes,
                       const std::function<void()>& body) {
  constexpr size_t stack_bytes = 256 * 1024;  // pages never touched are never allocated
  std::vector<unsigned char> shared(shared_bytes > 0 ? shared_bytes : 1);
  std::unique_ptr<char[]> stacks(new char[stack_bytes * size]);
  std::vector<ucontext_t> fibers(size);
  std::vector<int64_t> arrivals(size);
  ucontext_t launcher;
  for (int64_t b = 0; b < grid; ++b) {
    block = {b, grid, size, shared.data(), fibers.data(), &launcher, arrivals.data(), &body};
    for (int t = 0; t < size; ++t) {
      getcontext(&fibers[t]);
      fibers[t].uc_stack.ss_sp = stacks.get() + t * stack_bytes;
      fibers[t].uc_stack.ss_size = stack_bytes;
      fibers[t].uc_link = nullptr;
      makecontext(&fibers[t], run_fiber, 0);
      arrivals[t] = 0;
    }
    thread = 0;
    swapcontext(&launcher, &fibers[0]);
    for (int t = 1; t < size; ++t) {
      if (arrivals[t] != arrivals[0]) {  // a barrier some threads skipped: a kernel bug
        std::fprintf(stderr, "npool emulation: thread %d of block %lld reached %lld barriers, "
                     "thread 0 %lld\n", t, static_cast<long long>(b),
                     static_cast<long long>(arrivals[t]), static_cast<long long>(arrivals[0]));
        std::abort();
      }
    }
  }
}
}  // namespace emulation
inline int thread_index() { return emulation::thread; }
inline int block_size() { return emulation::block.size; }
inline int64_t block_index() { return emulation::block.index; }
inline int64_t grid_size() { return emulation::block.count; }
inline void sync_block() {
  ++emulation::block.arrivals[emulation::thread];
  emulation::switch_to((emulation::thread + 1) % emulation::block.size);
}
inline void atomic_add(uint32_t* p, uint32_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
template <typename T> inline T* shared_memory() {
  return reinterpret_cast<T*>(emulation::block.shared);
}
#else
NPOOL_FN int thread_index() { return threadIdx.x; }
NPOOL_FN int block_size() { return blockDim.x; }
NPOOL_FN int64_t block_index() { return blockIdx.x; }
NPOOL_FN int64_t grid_size() { return gridDim.x; }
NPOOL_FN void sync_block() { __syncthreads(); }
NPOOL_FN void atomic_add(uint32_t* p, uint32_t v) { atomicAdd(p, v); }
template <typename T> NPOOL_FN T* shared_memory() {
  extern __shared__ __align__(16) unsigned char npool_shared[];
  return reinterpret_cast<T*>(npool_shared);
}
#endif

// A tree reduction over the block's values (shared: block_size() slots); every thread gets the
// result. Pairs are combined in a fixed order.
template <typename V, typename Combine>
NPOOL_FN V block_reduce(V value, V* shared, Combine combine) {
  const int t = thread_index(), size = block_size();
  shared[t] = value;
  sync_block();
  for (int half = size / 2; half > 0; half /= 2) {
    if (t < half) shared[t] = combine(shared[t], shared[t + half]);
    sync_block();
  }
  const V result = shared[0];
  sync_block();
  return result;
}

}  // namespace npool

// ------------------------------------------------------------------ kernels
// NPOOL_KERNEL(name, Args, item): an extern "C" kernel `name(Args args)` that calls
// `item(args, t)` for every work item t < args.count (an int64_t field of Args).
#ifdef NPOOL_HOST_EMULATION
#define NPOOL_KERNEL(name, Args, item)                                                    \
  extern "C" __attribute__((visibility("default"))) void name(const Args* args) {         \
    for (int64_t t = 0; t < args->count; ++t) item(*args, t);                             \
  }
#else
#define NPOOL_KERNEL(name, Args, item)                                                    \
  extern "C" __global__ void __launch_bounds__(256) name(const Args args) {                \
    const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;                    \
    for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;         \
         t < args.count; t += step)                                                       \
      item(args, t);                                                                      \
  }
#endif

// NPOOL_BLOCK_KERNEL(name, Args, body): an extern "C" kernel `name(Args args)` whose threads
// cooperate in blocks (npool::thread_index(), npool::sync_block(), npool::shared_memory()):
// `body(args)` runs in every thread. Emulated, each block's threads run as fibers (above).
#ifdef NPOOL_HOST_EMULATION
#define NPOOL_BLOCK_KERNEL(name, Args, body)                                              \
  extern "C" __attribute__((visibility("default"))) void name(                            \
      const Args* args, int64_t grid, int block, int64_t shared_bytes) {                  \
    npool::emulation::run_blocks(grid, block, shared_bytes, [args] { body(*args); });     \
  }
#else
#define NPOOL_BLOCK_KERNEL(name, Args, body)                                              \
  extern "C" __global__ void __launch_bounds__(256) name(const Args args) { body(args); }
#endif
