// The windowed-softmax pool (SoftPool: lam = 1; Max-Entropy pooling: any lam) on the GPU.
//
// Forward, one thread per output, on 5-D (N, C, D, H, W) arrays with arbitrary element strides
// (1-D and 2-D pools insert size-1 axes), exactly the math of the CPU kernel:
//   z_i = lam x_i,  M = max z over the real cells of the window,
//   y = sum_i exp(z_i - M) x_i / sum_i exp(z_i - M), computed as x* + sum_i e_i (x_i - x*) / S
//   with x* the x of the cell where z is largest, which keeps y inside the window's range.
// Padded cells are left out of the window. Accumulation is in float for float (and, later,
// half) inputs and in double for double inputs.
#include "npool_cuda.cuh"

namespace {

template <typename T>
__device__ void softmax_pool_forward_one(const T* __restrict__ x, T* __restrict__ y,
                                         const npool::PoolGeometry& g, float lam_f,
                                         int64_t index) {
  using Acc = typename npool::Accumulator<T>::type;
  const Acc lam = static_cast<Acc>(lam_f);
  // Output index (n, c, od, oh, ow), C order.
  int64_t rest = index;
  const int64_t ow = rest % g.out_size[2]; rest /= g.out_size[2];
  const int64_t oh = rest % g.out_size[1]; rest /= g.out_size[1];
  const int64_t od = rest % g.out_size[0]; rest /= g.out_size[0];
  const int64_t c = rest % g.size[1];
  const int64_t n = rest / g.size[1];

  int64_t lo[3], hi[3];
  const int64_t o[3] = {od, oh, ow};
  for (int a = 0; a < 3; ++a) {
    const int64_t start = o[a] * g.stride[a] - g.padding[a];
    lo[a] = start < 0 ? 0 : start;
    hi[a] = start + g.kernel[a] < g.size[2 + a] ? start + g.kernel[a] : g.size[2 + a];
  }
  const T* base = x + n * g.x_strides[0] + c * g.x_strides[1];

  Acc m = -npool::infinity<Acc>();
  Acc xm = 0;  // x of the first cell where z is largest: y is taken relative to it
  bool any_nan = false;
  for (int64_t d = lo[0]; d < hi[0]; ++d)
    for (int64_t h = lo[1]; h < hi[1]; ++h)
      for (int64_t w = lo[2]; w < hi[2]; ++w) {
        const Acc v = static_cast<Acc>(base[d * g.x_strides[2] + h * g.x_strides[3] + w * g.x_strides[4]]);
        const Acc z = lam != Acc(0) ? lam * v : Acc(0);
        any_nan |= (z != z);
        if (z > m) { m = z; xm = v; }
      }
  Acc s = 0, t = 0;
  for (int64_t d = lo[0]; d < hi[0]; ++d)
    for (int64_t h = lo[1]; h < hi[1]; ++h)
      for (int64_t w = lo[2]; w < hi[2]; ++w) {
        const Acc v = static_cast<Acc>(base[d * g.x_strides[2] + h * g.x_strides[3] + w * g.x_strides[4]]);
        const Acc z = lam != Acc(0) ? lam * v : Acc(0);
        const Acc e = z == m ? Acc(1) : npool::exp(z - m);  // a cell at the maximum weighs 1
        s += e;
        if (e != Acc(0)) t += e * (v == xm ? Acc(0) : v - xm);
      }
  const Acc out = any_nan ? npool::quiet_nan<Acc>() : xm + t / s;
  y[n * g.y_strides[0] + c * g.y_strides[1] + od * g.y_strides[2] + oh * g.y_strides[3] +
    ow * g.y_strides[4]] = static_cast<T>(out);
}

template <typename T>
__device__ void softmax_pool_forward(const T* __restrict__ x, T* __restrict__ y,
                                     npool::PoolGeometry g, float lam) {
  const int64_t total = g.size[0] * g.size[1] * g.out_size[0] * g.out_size[1] * g.out_size[2];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x)
    softmax_pool_forward_one(x, y, g, lam, i);
}

}  // namespace

extern "C" {

__global__ void npool_softmax_pool_forward_f32(const float* x, float* y, npool::PoolGeometry g,
                                               float lam) {
  softmax_pool_forward(x, y, g, lam);
}

__global__ void npool_softmax_pool_forward_f64(const double* x, double* y,
                                               npool::PoolGeometry g, float lam) {
  softmax_pool_forward(x, y, g, lam);
}

}  // extern "C"
