// Sums of npool's per-output gradients down to a broadcast parameter's shape (the inverse of
// broadcasting), e.g. dL/dlam of Max-Entropy pooling for a per-channel lam. One block per
// element of the result; its threads stride over the positions that broadcast onto it and
// add them in a fixed tree order: deterministic.
#include "npool_cuda.cuh"

namespace npool {
namespace reductions {

struct Args {
  const void* full;        // contiguous (N, C, D, H, W) accumulators
  void* out;               // contiguous result, out_shape
  int64_t full_shape[5];
  int64_t out_shape[5];    // each axis 1 (summed) or the full size (kept)
  int64_t count;           // elements of the result
};

template <typename T> NPOOL_FN void sum_to_shape_body(const Args& a) {
  using A = typename Accumulator<T>::type;
  A* shared = shared_memory<A>();
  int64_t inner = 1;
  for (int k = 0; k < 5; ++k)
    if (a.out_shape[k] == 1) inner *= a.full_shape[k];
  for (int64_t e = block_index(); e < a.count; e += grid_size()) {
    int64_t coord[5], rest = e;
    for (int k = 4; k >= 0; --k) {
      coord[k] = rest % a.out_shape[k];
      rest /= a.out_shape[k];
    }
    A sum = 0;
    for (int64_t i = thread_index(); i < inner; i += block_size()) {
      int64_t r = i, offset = 0, step = 1;
      int64_t full[5];
      for (int k = 4; k >= 0; --k) {
        if (a.out_shape[k] == 1) {
          full[k] = r % a.full_shape[k];
          r /= a.full_shape[k];
        } else {
          full[k] = coord[k];
        }
      }
      for (int k = 4; k >= 0; --k) {
        offset += full[k] * step;
        step *= a.full_shape[k];
      }
      sum += static_cast<const A*>(a.full)[offset];
    }
    sum = block_reduce(sum, shared, [](A p, A q) { return p + q; });
    if (thread_index() == 0) static_cast<T*>(a.out)[e] = from_acc<T>(sum);
  }
}

}  // namespace reductions
}  // namespace npool

NPOOL_BLOCK_KERNEL(npool_sum_to_shape_f16, npool::reductions::Args,
                   npool::reductions::sum_to_shape_body<__half>)
NPOOL_BLOCK_KERNEL(npool_sum_to_shape_bf16, npool::reductions::Args,
                   npool::reductions::sum_to_shape_body<__nv_bfloat16>)
NPOOL_BLOCK_KERNEL(npool_sum_to_shape_f32, npool::reductions::Args,
                   npool::reductions::sum_to_shape_body<float>)
NPOOL_BLOCK_KERNEL(npool_sum_to_shape_f64, npool::reductions::Args,
                   npool::reductions::sum_to_shape_body<double>)
