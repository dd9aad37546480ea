// Set pools (LOUPE's NetVLAD, NetRVLAD, NetFV, Soft-DBoW, Context Gating) on the GPU, in the
// working type W (float for float16 and float32 inputs, double for float64; npool._cuda
// converts float16 with npool_set_rows_* first):
//   batched_matmul    C[b] (+)= A[b] B[b] for any element strides (transposes are free), tiled
//                     in shared memory (PyCUDA has no cuBLAS); A's elements may be squared;
//   vlad_normalize    per set b: V[d,k] -= c[d,k] a_sum[k]; V[:,k] /= n_k; V /= n, in place,
//                     with a_sum[k] = sum_m a[b,m,k] and norms[b] = (n_0 .. n_{K-1}, n);
//   vlad_normalize_backward  dL/dy -> dL/dV in place, and cdot[b,k] = sum_d dV[d,k] c[d,k];
//   vlad_centers_gradient    grad_c[d,k] = -sum_b dV[b,d,k] a_sum[b,k];
//   l2n_rows(_backward)      l2n of the rows of a matrix, in place, and its backward;
//   fv_moments        NetFV's F1 and F2 from sum_m a x, sum_m a x^2 and a_sum, in place;
//   fv_backward_terms dL/dF1, dL/dF2 -> dL/d(sum a x), dL/d(sum a x^2) in place, and the terms
//                     that npool_sum_to_shape adds up into dL/da_sum, dL/dmu, dL/dcovar_weights;
//   gating(_backward) Context Gating's y = x sigmoid(z + b) from z = x W, and its backward;
//   set_rows          out[b,m,k] = scale (in[b,m,k] - sub[b,k]) mask[b,m] factor[b,m,k]: a
//                     strided copy that masks, converts float16 <-> float32, broadcasts.
// Every sum runs in a fixed order (no floating-point atomics): deterministic.
#include "npool_cuda.cuh"

namespace npool {
namespace set_pools {

constexpr double EPS = 1e-12;  // the squared-norm floor of l2n, as TensorFlow's l2_normalize

template <typename A> NPOOL_FN A floored_norm(A squared) {
  return sqrt(squared > A(EPS) ? squared : A(EPS));
}

// ------------------------------------------------------------------ batched matmul
constexpr int TILE = 16;
constexpr int MAX_ITEMS = TILE * TILE / 32;  // outputs per thread with the smallest block, 32

struct MatmulArgs {
  const void* a;
  const void* b;
  void* c;
  int64_t batch, rows, cols, inner;  // C[b] (rows, cols) = A[b] (rows, inner) B[b] (inner, cols)
  int64_t a_strides[3], b_strides[3], c_strides[3];  // element strides (batch, row, column)
  int64_t tiles_r, tiles_c;
  int64_t accumulate;  // 1: C += A B
  int64_t square_a;    // 1: A's elements squared
  int64_t count;
};

// One block per TILE x TILE tile of C; thread t owns the tile's elements t, t + size, ...
template <typename T> NPOOL_FN void matmul_body(const MatmulArgs& g) {
  T* tile_a = shared_memory<T>();
  T* tile_b = tile_a + TILE * TILE;
  const T* pa = static_cast<const T*>(g.a);
  const T* pb = static_cast<const T*>(g.b);
  T* pc = static_cast<T*>(g.c);
  const int t = thread_index(), size = block_size();
  const int64_t per_matrix = g.tiles_r * g.tiles_c;
  for (int64_t tile = block_index(); tile < g.batch * per_matrix; tile += grid_size()) {
    const int64_t b = tile / per_matrix, rest = tile % per_matrix;
    const int64_t r0 = (rest / g.tiles_c) * TILE, c0 = (rest % g.tiles_c) * TILE;
    T acc[MAX_ITEMS];
#pragma unroll
    for (int item = 0; item < MAX_ITEMS; ++item) acc[item] = 0;
    for (int64_t k0 = 0; k0 < g.inner; k0 += TILE) {
      for (int e = t; e < TILE * TILE; e += size) {
        const int i = e / TILE, j = e % TILE;
        const int64_t ra = r0 + i, ka = k0 + j, kb = k0 + i, cb = c0 + j;
        T a = ra < g.rows && ka < g.inner
                  ? pa[b * g.a_strides[0] + ra * g.a_strides[1] + ka * g.a_strides[2]]
                  : T(0);
        tile_a[e] = g.square_a ? a * a : a;
        tile_b[e] = kb < g.inner && cb < g.cols
                        ? pb[b * g.b_strides[0] + kb * g.b_strides[1] + cb * g.b_strides[2]]
                        : T(0);
      }
      sync_block();
#pragma unroll
      for (int item = 0; item < MAX_ITEMS; ++item) {
        const int e = t + item * size;
        if (e >= TILE * TILE) break;
        const int i = e / TILE, j = e % TILE;
        T sum = acc[item];
#pragma unroll
        for (int k = 0; k < TILE; ++k) sum += tile_a[i * TILE + k] * tile_b[k * TILE + j];
        acc[item] = sum;
      }
      sync_block();
    }
#pragma unroll
    for (int item = 0; item < MAX_ITEMS; ++item) {
      const int e = t + item * size;
      if (e >= TILE * TILE) break;
      const int64_t r = r0 + e / TILE, c = c0 + e % TILE;
      if (r < g.rows && c < g.cols) {
        T* out = pc + b * g.c_strides[0] + r * g.c_strides[1] + c * g.c_strides[2];
        *out = g.accumulate ? *out + acc[item] : acc[item];
      }
    }
  }
}

// ------------------------------------------------------------------ NetVLAD / NetRVLAD
struct VladArgs {
  void* v;                 // (B, D, K), sets set_stride apart: V in, y out (forward);
                           // dL/dy in, dL/dV out (backward)
  const void* y;           // backward: the forward's output, as v
  const void* centers;     // (D, K) contiguous, or null (NetRVLAD)
  const void* assign;      // (B, M, K) contiguous, masked
  void* a_sum;             // (B, K)
  void* norms;             // (B, K + 1)
  void* cdot;              // backward: (B, K), or null
  void* grad_centers;      // (D, K)
  int64_t sets, samples, features, clusters;  // B, M, D, K
  int64_t set_stride;      // elements between the sets of v and y
  int64_t count;
};

// One block per set: a thread per column k for the column passes, all threads for the scaling.
// The floored norm of a column (count values, stride apart) from its float64 sum of squares;
// when that overflowed (float64 values beyond 1e154), from the values scaled by their largest
// magnitude before squaring. As the CPU kernel's _column_norm.
template <typename T> NPOOL_FN double column_norm(const T* v, int64_t count, int64_t stride,
                                                  double squared) {
  if (is_finite(squared)) return floored_norm(squared);
  double top = 0;
  for (int64_t i = 0; i < count; ++i) {
    const double a = ::fabs(static_cast<double>(v[i * stride]));
    top = a > top ? a : top;
  }
  if (!is_finite(top)) return squared;  // an infinity or a NaN in the column: its own limit
  double total = 0;
  for (int64_t i = 0; i < count; ++i) {
    const double r = static_cast<double>(v[i * stride]) / top;
    total += r * r;
  }
  return top * ::sqrt(total);
}

template <typename T> NPOOL_FN void normalize_body(const VladArgs& g) {
  double* shared = shared_memory<double>();
  const int64_t D = g.features, K = g.clusters, M = g.samples;
  for (int64_t b = block_index(); b < g.sets; b += grid_size()) {
    T* v = static_cast<T*>(g.v) + b * g.set_stride;
    T* norms = static_cast<T*>(g.norms) + b * (K + 1);
    double part = 0;
    for (int64_t k = thread_index(); k < K; k += block_size()) {
      const T* a = static_cast<const T*>(g.assign) + b * M * K + k;
      T a_sum = 0;
      for (int64_t m = 0; m < M; ++m) a_sum += a[m * K];
      static_cast<T*>(g.a_sum)[b * K + k] = a_sum;
      double squared = 0;  // float64: float32 values never overflow it
      for (int64_t d = 0; d < D; ++d) {
        T value = v[d * K + k];
        if (g.centers) value -= static_cast<const T*>(g.centers)[d * K + k] * a_sum;
        v[d * K + k] = value;
        squared += static_cast<double>(value) * value;
      }
      const double norm = column_norm(v + k, D, K, squared);
      part += norm > floored_norm(0.0) ? 1.0 : squared / EPS;
      norms[k] = static_cast<T>(norm);
    }
    const T n = static_cast<T>(
        floored_norm(block_reduce(part, shared, [](double p, double q) { return p + q; })));
    if (thread_index() == 0) norms[K] = n;
    sync_block();  // every column norm written
    for (int64_t e = thread_index(); e < D * K; e += block_size())
      v[e] = v[e] / (norms[e % K] * n);
    sync_block();
  }
}

template <typename T> NPOOL_FN void normalize_backward_body(const VladArgs& g) {
  T* shared = shared_memory<T>();
  const int64_t D = g.features, K = g.clusters;
  const T floor = floored_norm(T(0));
  for (int64_t b = block_index(); b < g.sets; b += grid_size()) {
    T* grad = static_cast<T*>(g.v) + b * g.set_stride;
    const T* y = static_cast<const T*>(g.y) + b * g.set_stride;
    const T* norms = static_cast<const T*>(g.norms) + b * (K + 1);
    T part = 0;
    for (int64_t e = thread_index(); e < D * K; e += block_size()) part += y[e] * grad[e];
    const T dot = block_reduce(part, shared, [](T p, T q) { return p + q; });
    const T n = norms[K];
    const T global_dot = n > floor ? dot : T(0);
    for (int64_t k = thread_index(); k < K; k += block_size()) {
      T column_dot = 0;
      for (int64_t d = 0; d < D; ++d) {  // through the global l2n
        const T g1 = (grad[d * K + k] - y[d * K + k] * global_dot) / n;
        grad[d * K + k] = g1;
        column_dot += y[d * K + k] * n * g1;
      }
      const T norm = norms[k];
      column_dot = norm > floor ? column_dot * n : T(0);
      T cdot = 0;
      for (int64_t d = 0; d < D; ++d) {  // through the intra-normalisation of column k
        const T dv = (grad[d * K + k] - y[d * K + k] * column_dot) / norm;
        grad[d * K + k] = dv;
        if (g.centers) cdot += dv * static_cast<const T*>(g.centers)[d * K + k];
      }
      if (g.cdot) static_cast<T*>(g.cdot)[b * K + k] = cdot;
    }
    sync_block();
  }
}

// grad_c[d,k] = -sum_b dV[b,d,k] a_sum[b,k]: one work item per (d, k).
template <typename T> NPOOL_FN void centers_gradient_item(const VladArgs& g, int64_t e) {
  const int64_t k = e % g.clusters;
  T sum = 0;
  for (int64_t b = 0; b < g.sets; ++b)
    sum += static_cast<const T*>(g.v)[b * g.set_stride + e] *
           static_cast<const T*>(g.a_sum)[b * g.clusters + k];
  static_cast<T*>(g.grad_centers)[e] = -sum;
}

// ------------------------------------------------------------------ l2n of rows
struct L2nArgs {
  void* v;            // rows, row_stride apart: in place (forward: v -> l2n(v); backward:
                      // dL/dy -> dL/dv)
  const void* y;      // backward: l2n(v), as v
  void* norms;        // (rows,): forward out, backward in
  int64_t rows, length, row_stride;
  int64_t count;
};

// l2n of each row; the sum of squares in float64, and for a row whose sum still overflows
// (float64 values beyond 1e154) from the values scaled by their largest magnitude.
template <typename T> NPOOL_FN void l2n_rows_body(const L2nArgs& g) {
  double* shared = shared_memory<double>();
  auto plus = [](double p, double q) { return p + q; };
  for (int64_t r = block_index(); r < g.rows; r += grid_size()) {
    T* v = static_cast<T*>(g.v) + r * g.row_stride;
    double part = 0;
    for (int64_t e = thread_index(); e < g.length; e += block_size())
      part += static_cast<double>(v[e]) * v[e];
    const double squared = block_reduce(part, shared, plus);
    double norm = floored_norm(squared);
    if (!is_finite(squared)) {  // the same in every thread: the branch is uniform
      double top = 0;
      for (int64_t e = thread_index(); e < g.length; e += block_size()) {
        const double a = ::fabs(static_cast<double>(v[e]));
        top = a > top ? a : top;
      }
      top = block_reduce(top, shared, [](double p, double q) { return p > q ? p : q; });
      if (is_finite(top)) {
        part = 0;
        for (int64_t e = thread_index(); e < g.length; e += block_size()) {
          const double q = static_cast<double>(v[e]) / top;
          part += q * q;
        }
        norm = top * ::sqrt(block_reduce(part, shared, plus));
      }
    }
    const T n = static_cast<T>(norm);
    for (int64_t e = thread_index(); e < g.length; e += block_size()) v[e] /= n;
    if (thread_index() == 0) static_cast<T*>(g.norms)[r] = n;
  }
}

template <typename T> NPOOL_FN void l2n_rows_backward_body(const L2nArgs& g) {
  T* shared = shared_memory<T>();
  const T floor = floored_norm(T(0));
  for (int64_t r = block_index(); r < g.rows; r += grid_size()) {
    T* grad = static_cast<T*>(g.v) + r * g.row_stride;
    const T* y = static_cast<const T*>(g.y) + r * g.row_stride;
    T part = 0;
    for (int64_t e = thread_index(); e < g.length; e += block_size()) part += y[e] * grad[e];
    const T n = static_cast<const T*>(g.norms)[r];
    const T dot = block_reduce(part, shared, [](T p, T q) { return p + q; });
    const T active_dot = n > floor ? dot : T(0);
    for (int64_t e = thread_index(); e < g.length; e += block_size())
      grad[e] = (grad[e] - y[e] * active_dot) / n;
  }
}

// ------------------------------------------------------------------ NetFV
struct FvArgs {
  void* s;                  // (B, 2, D, K): (sum a x, sum a x^2) -> (F1, F2) in place;
                            // backward: (dL/dF1, dL/dF2) -> (dL/d(sum a x), dL/d(sum a x^2))
  const void* f;            // backward: (B, 2, D, K) the forward's F1, F2
  const void* s1;           // backward: (B, D, K) sum a x, set_stride apart
  const void* a_sum;        // (B, K)
  const void* mu;           // (D, K) contiguous
  const void* covar;        // (D, K) contiguous: sigma = covar^2 + 1e-6
  void* terms;              // backward: (3, B, D, K): -dL/da_sum, dL/dmu, dL/dcovar terms
  int64_t sets, features, clusters;
  int64_t set_stride;       // elements between the sets of s1
  int64_t count;            // B * D * K
};

constexpr double SIGMA_EPS = 1e-6;

template <typename T> NPOOL_FN void fv_moments_item(const FvArgs& g, int64_t e) {
  const int64_t DK = g.features * g.clusters, b = e / DK, dk = e % DK, k = dk % g.clusters;
  T* first = static_cast<T*>(g.s) + b * 2 * DK + dk;
  T* second = first + DK;
  const T mu = static_cast<const T*>(g.mu)[dk], w = static_cast<const T*>(g.covar)[dk];
  const T sigma = w * w + T(SIGMA_EPS), a_sum = static_cast<const T*>(g.a_sum)[b * g.clusters + k];
  const T s1 = *first, s2 = *second;
  *first = (s1 - a_sum * mu) / sigma;
  *second = (s2 - T(2) * mu * s1 + mu * mu * a_sum) / (sigma * sigma) - a_sum;
}

template <typename T> NPOOL_FN void fv_backward_terms_item(const FvArgs& g, int64_t e) {
  const int64_t DK = g.features * g.clusters, BDK = g.sets * DK;
  const int64_t b = e / DK, dk = e % DK, k = dk % g.clusters;
  T* first = static_cast<T*>(g.s) + b * 2 * DK + dk;
  T* second = first + DK;
  const T* f = static_cast<const T*>(g.f) + b * 2 * DK + dk;
  const T mu = static_cast<const T*>(g.mu)[dk], w = static_cast<const T*>(g.covar)[dk];
  const T sigma = w * w + T(SIGMA_EPS), a_sum = static_cast<const T*>(g.a_sum)[b * g.clusters + k];
  const T s1 = static_cast<const T*>(g.s1)[b * g.set_stride + dk];
  const T g_f1 = *first, g_f2 = *second;
  const T p = g_f1 / sigma, q = g_f2 / (sigma * sigma);
  *first = p - T(2) * mu * q;
  *second = q;
  T* terms = static_cast<T*>(g.terms);
  terms[e] = p * mu - q * mu * mu + g_f2;  // minus the a_sum term
  terms[BDK + e] = -p * a_sum - T(2) * q * s1 + T(2) * q * mu * a_sum;
  terms[2 * BDK + e] = (-g_f1 * f[0] / sigma - T(2) * g_f2 * (f[DK] + a_sum) / sigma) * T(2) * w;
}

// ------------------------------------------------------------------ Context Gating
struct GatingArgs {
  const void* x;          // (N, n), element strides x_strides
  const void* z;          // (N, n) contiguous: x W
  const void* biases;     // (n,) contiguous
  const void* grad_out;   // backward: (N, n), element strides g_strides
  void* out;              // (N, n) contiguous: y (forward), the g sigmoid part of dL/dx
  void* grad_z;           // backward: (N, n) contiguous
  int64_t features;       // n
  int64_t x_strides[2], g_strides[2];
  int64_t count;          // N * n
};

template <typename T> NPOOL_FN T sigmoid(T z) { return T(1) / (T(1) + exp_acc(-z)); }

template <typename T> NPOOL_FN void gating_item(const GatingArgs& g, int64_t e) {
  const int64_t i = e / g.features, j = e % g.features;
  const T x = static_cast<const T*>(g.x)[i * g.x_strides[0] + j * g.x_strides[1]];
  const T gate = sigmoid(static_cast<const T*>(g.z)[e] + static_cast<const T*>(g.biases)[j]);
  static_cast<T*>(g.out)[e] = x * gate;
}

template <typename T> NPOOL_FN void gating_backward_item(const GatingArgs& g, int64_t e) {
  const int64_t i = e / g.features, j = e % g.features;
  const T x = static_cast<const T*>(g.x)[i * g.x_strides[0] + j * g.x_strides[1]];
  const T up = static_cast<const T*>(g.grad_out)[i * g.g_strides[0] + j * g.g_strides[1]];
  const T gate = sigmoid(static_cast<const T*>(g.z)[e] + static_cast<const T*>(g.biases)[j]);
  static_cast<T*>(g.grad_z)[e] = up * x * gate * (T(1) - gate);
  static_cast<T*>(g.out)[e] = up * gate;
}

// ------------------------------------------------------------------ strided rows
struct RowsArgs {
  const void* in;          // (B, M, K) of type In, element strides in_strides
  void* out;               // (B, M, K) of type Out, contiguous
  const void* sub;         // (B, K) contiguous, or null
  const uint8_t* mask;     // (B, M) bools with mask_strides, or null
  const void* factor;      // (B, M, K) with factor_strides, or null
  int64_t samples, clusters;
  int64_t in_strides[3];
  int64_t mask_strides[2];
  int64_t factor_strides[3];
  double scale;
  int64_t count;           // B * M * K
};

// sub and factor have the working type W of In and Out (float or double).
template <typename In, typename Out, typename W>
NPOOL_FN void rows_item(const RowsArgs& g, int64_t e) {
  const int64_t k = e % g.clusters, bm = e / g.clusters, m = bm % g.samples, b = bm / g.samples;
  W value = W(to_acc(static_cast<const In*>(g.in)[b * g.in_strides[0] + m * g.in_strides[1] +
                                                   k * g.in_strides[2]]));
  if (g.sub) value -= static_cast<const W*>(g.sub)[b * g.clusters + k];
  if (g.factor)
    value *= static_cast<const W*>(g.factor)[b * g.factor_strides[0] + m * g.factor_strides[1] +
                                              k * g.factor_strides[2]];
  value *= W(g.scale);
  if (g.mask && !g.mask[b * g.mask_strides[0] + m * g.mask_strides[1]]) value = W(0);
  static_cast<Out*>(g.out)[e] = from_acc<Out>(value);
}

}  // namespace set_pools
}  // namespace npool

// npool_<kernel>_<f32|f64>; set_rows also converts: npool_set_rows_<in>_<out>.
#define NPOOL_SET_KERNELS(suffix, T)                                                        \
  NPOOL_BLOCK_KERNEL(npool_batched_matmul_##suffix, npool::set_pools::MatmulArgs,           \
                     npool::set_pools::matmul_body<T>)                                      \
  NPOOL_BLOCK_KERNEL(npool_vlad_normalize_##suffix, npool::set_pools::VladArgs,             \
                     npool::set_pools::normalize_body<T>)                                   \
  NPOOL_BLOCK_KERNEL(npool_vlad_normalize_backward_##suffix, npool::set_pools::VladArgs,    \
                     npool::set_pools::normalize_backward_body<T>)                          \
  NPOOL_KERNEL(npool_vlad_centers_gradient_##suffix, npool::set_pools::VladArgs,            \
               npool::set_pools::centers_gradient_item<T>)                                  \
  NPOOL_BLOCK_KERNEL(npool_l2n_rows_##suffix, npool::set_pools::L2nArgs,                    \
                     npool::set_pools::l2n_rows_body<T>)                                    \
  NPOOL_BLOCK_KERNEL(npool_l2n_rows_backward_##suffix, npool::set_pools::L2nArgs,           \
                     npool::set_pools::l2n_rows_backward_body<T>)                           \
  NPOOL_KERNEL(npool_fv_moments_##suffix, npool::set_pools::FvArgs,                         \
               npool::set_pools::fv_moments_item<T>)                                        \
  NPOOL_KERNEL(npool_fv_backward_terms_##suffix, npool::set_pools::FvArgs,                  \
               npool::set_pools::fv_backward_terms_item<T>)                                 \
  NPOOL_KERNEL(npool_gating_##suffix, npool::set_pools::GatingArgs,                         \
               npool::set_pools::gating_item<T>)                                            \
  NPOOL_KERNEL(npool_gating_backward_##suffix, npool::set_pools::GatingArgs,                \
               npool::set_pools::gating_backward_item<T>)                                   \
  NPOOL_KERNEL(npool_set_rows_##suffix##_##suffix, npool::set_pools::RowsArgs,              \
               (npool::set_pools::rows_item<T, T, T>))

NPOOL_SET_KERNELS(f32, float)
NPOOL_SET_KERNELS(f64, double)
NPOOL_KERNEL(npool_set_rows_f16_f32, npool::set_pools::RowsArgs,
             (npool::set_pools::rows_item<__half, float, float>))
NPOOL_KERNEL(npool_set_rows_f32_f16, npool::set_pools::RowsArgs,
             (npool::set_pools::rows_item<float, __half, float>))
NPOOL_KERNEL(npool_set_rows_bf16_f32, npool::set_pools::RowsArgs,
             (npool::set_pools::rows_item<__nv_bfloat16, float, float>))
NPOOL_KERNEL(npool_set_rows_f32_bf16, npool::set_pools::RowsArgs,
             (npool::set_pools::rows_item<float, __nv_bfloat16, float>))

#ifdef NPOOL_HOST_EMULATION
NPOOL_EXPORT_LAYOUT(npool_set_pools_matmul_args_layout, npool::set_pools::MatmulArgs,
                    NPOOL_OFFSET(A, a), NPOOL_OFFSET(A, b), NPOOL_OFFSET(A, c),
                    NPOOL_OFFSET(A, batch), NPOOL_OFFSET(A, rows), NPOOL_OFFSET(A, cols),
                    NPOOL_OFFSET(A, inner), NPOOL_OFFSET(A, a_strides), NPOOL_OFFSET(A, b_strides),
                    NPOOL_OFFSET(A, c_strides), NPOOL_OFFSET(A, tiles_r), NPOOL_OFFSET(A, tiles_c),
                    NPOOL_OFFSET(A, accumulate), NPOOL_OFFSET(A, square_a), NPOOL_OFFSET(A, count))
NPOOL_EXPORT_LAYOUT(npool_set_pools_vlad_args_layout, npool::set_pools::VladArgs,
                    NPOOL_OFFSET(A, v), NPOOL_OFFSET(A, y), NPOOL_OFFSET(A, centers),
                    NPOOL_OFFSET(A, assign), NPOOL_OFFSET(A, a_sum), NPOOL_OFFSET(A, norms),
                    NPOOL_OFFSET(A, cdot), NPOOL_OFFSET(A, grad_centers), NPOOL_OFFSET(A, sets),
                    NPOOL_OFFSET(A, samples), NPOOL_OFFSET(A, features), NPOOL_OFFSET(A, clusters),
                    NPOOL_OFFSET(A, set_stride), NPOOL_OFFSET(A, count))
NPOOL_EXPORT_LAYOUT(npool_set_pools_l2n_args_layout, npool::set_pools::L2nArgs,
                    NPOOL_OFFSET(A, v), NPOOL_OFFSET(A, y), NPOOL_OFFSET(A, norms),
                    NPOOL_OFFSET(A, rows), NPOOL_OFFSET(A, length), NPOOL_OFFSET(A, row_stride),
                    NPOOL_OFFSET(A, count))
NPOOL_EXPORT_LAYOUT(npool_set_pools_fv_args_layout, npool::set_pools::FvArgs,
                    NPOOL_OFFSET(A, s), NPOOL_OFFSET(A, f), NPOOL_OFFSET(A, s1),
                    NPOOL_OFFSET(A, a_sum), NPOOL_OFFSET(A, mu), NPOOL_OFFSET(A, covar),
                    NPOOL_OFFSET(A, terms), NPOOL_OFFSET(A, sets), NPOOL_OFFSET(A, features),
                    NPOOL_OFFSET(A, clusters), NPOOL_OFFSET(A, set_stride), NPOOL_OFFSET(A, count))
NPOOL_EXPORT_LAYOUT(npool_set_pools_gating_args_layout, npool::set_pools::GatingArgs,
                    NPOOL_OFFSET(A, x), NPOOL_OFFSET(A, z), NPOOL_OFFSET(A, biases),
                    NPOOL_OFFSET(A, grad_out), NPOOL_OFFSET(A, out), NPOOL_OFFSET(A, grad_z),
                    NPOOL_OFFSET(A, features), NPOOL_OFFSET(A, x_strides),
                    NPOOL_OFFSET(A, g_strides), NPOOL_OFFSET(A, count))
NPOOL_EXPORT_LAYOUT(npool_set_pools_rows_args_layout, npool::set_pools::RowsArgs,
                    NPOOL_OFFSET(A, in), NPOOL_OFFSET(A, out), NPOOL_OFFSET(A, sub),
                    NPOOL_OFFSET(A, mask), NPOOL_OFFSET(A, factor), NPOOL_OFFSET(A, samples),
                    NPOOL_OFFSET(A, clusters), NPOOL_OFFSET(A, in_strides),
                    NPOOL_OFFSET(A, mask_strides), NPOOL_OFFSET(A, factor_strides),
                    NPOOL_OFFSET(A, scale), NPOOL_OFFSET(A, count))
#endif
