// Global pools on the GPU: one block per (sample, channel) map of n cells, as on the CPU
// (src/cpu/_global_pools.pyx):
//   max     y = max x, first index among ties, the first NaN wins;  avg  y = mean x;
//   LSE     z = beta x, y = (M + log(S / n)) / beta with M = max z, S = sum exp(z - M);
//   select  y = (sum of the k largest) / k + alpha (sum of the kb smallest) / kb (k-max: kb = 0).
// Cells are read through element strides of x seen as (N, C, n). Every reduction runs in a fixed
// order (each thread strides over the map, then a tree in shared memory), so results are the
// same run after run. Selection is a radix select on 32-bit (half, float) or 64-bit (double)
// keys: byte histograms in shared memory (integer atomics: exact counts, whatever their order)
// give the k-th key T; the selected cells are those above T and the first ones equal to T in
// flat order - the CPU's rule, so both select the same cells.
#include "npool_cuda.cuh"

namespace npool {
namespace global_pools {

struct Args {
  const void* x;
  const void* grad_out;       // (maps,) gradients, with g_strides over (N, C)
  void* out;                  // y (maps,) or grad_x (N, C, n) with out_strides
  int64_t* index;             // selected flat indices (maps, k + kb), or the max's (maps,)
  int64_t maps;
  int64_t n;                  // cells per map
  int64_t channels;
  int64_t x_strides[3];       // element strides of x as (N, C, n)
  int64_t out_strides[3];     // of grad_x as (N, C, n)
  int64_t g_strides[2];       // of grad_out as (N, C)
  int64_t k;                  // cells from the top
  int64_t k_bottom;           // cells from the bottom
  double beta;                // LSE's temperature
  double alpha;               // the weight of the bottom term of a selection
  int64_t count;              // work items of the elementwise kernels
};

template <typename A> struct MaxIndex {
  A value;
  int64_t index;
};

// a ranks before b for the max: NaN first, then larger, then lower index.
template <typename A> NPOOL_FN bool before(const MaxIndex<A>& a, const MaxIndex<A>& b) {
  const bool an = a.value != a.value, bn = b.value != b.value;
  if (an != bn) return an;
  if (!an && a.value != b.value) return a.value > b.value;
  return a.index < b.index;
}

template <typename A> struct LogSum {
  A m, s;  // running maximum of z and sum of exp(z - m)
};

template <typename A> NPOOL_FN A weight(A z, A m) { return z == m ? A(1) : exp_acc(z - m); }

template <typename A> NPOOL_FN LogSum<A> merge(const LogSum<A>& a, const LogSum<A>& b) {
  LogSum<A> r;
  if (a.m != a.m || b.m != b.m) {
    r.m = r.s = quiet_nan<A>();
    return r;
  }
  r.m = a.m > b.m ? a.m : b.m;
  r.s = (a.s == A(0) ? A(0) : a.s * weight(a.m, r.m)) + (b.s == A(0) ? A(0) : b.s * weight(b.m, r.m));
  return r;
}

struct Map {
  int64_t x, out;  // offsets of the map's first cell in x and grad_x
};

NPOOL_FN Map map_offsets(const Args& a, int64_t map) {
  const int64_t n = map / a.channels, c = map % a.channels;
  return {n * a.x_strides[0] + c * a.x_strides[1], n * a.out_strides[0] + c * a.out_strides[1]};
}

template <typename T> NPOOL_FN typename Accumulator<T>::type cell(const Args& a, int64_t base,
                                                                 int64_t i) {
  return to_acc(static_cast<const T*>(a.x)[base + i * a.x_strides[2]]);
}

template <typename T> NPOOL_FN typename Accumulator<T>::type grad_out_of(const Args& a,
                                                                        int64_t map) {
  const int64_t n = map / a.channels, c = map % a.channels;
  return to_acc(static_cast<const T*>(a.grad_out)[n * a.g_strides[0] + c * a.g_strides[1]]);
}

// ------------------------------------------------------------------ reductions
template <typename T> NPOOL_FN void max_body(const Args& a) {
  using A = typename Accumulator<T>::type;
  auto* shared = shared_memory<MaxIndex<A>>();
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const Map m = map_offsets(a, map);
    MaxIndex<A> best = {-infinity<A>(), a.n};
    for (int64_t i = thread_index(); i < a.n; i += block_size()) {
      const MaxIndex<A> c = {cell<T>(a, m.x, i), i};
      if (before(c, best)) best = c;
    }
    best = block_reduce(best, shared, [](const MaxIndex<A>& p, const MaxIndex<A>& q) {
      return before(q, p) ? q : p;
    });
    if (thread_index() == 0) {
      static_cast<T*>(a.out)[map] = from_acc<T>(best.value);
      if (a.index) a.index[map] = best.index;
    }
  }
}

template <typename T> NPOOL_FN void avg_body(const Args& a) {
  using A = typename Accumulator<T>::type;
  auto* shared = shared_memory<A>();
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const Map m = map_offsets(a, map);
    A sum = 0;
    for (int64_t i = thread_index(); i < a.n; i += block_size()) sum += cell<T>(a, m.x, i);
    sum = block_reduce(sum, shared, [](A p, A q) { return p + q; });
    if (thread_index() == 0) static_cast<T*>(a.out)[map] = from_acc<T>(sum / A(a.n));
  }
}

template <typename T> NPOOL_FN LogSum<typename Accumulator<T>::type> lse_stats(
    const Args& a, int64_t base, LogSum<typename Accumulator<T>::type>* shared) {
  using A = typename Accumulator<T>::type;
  const A beta = static_cast<A>(a.beta);
  LogSum<A> acc = {-infinity<A>(), A(0)};
  for (int64_t i = thread_index(); i < a.n; i += block_size()) {
    const LogSum<A> one = {beta * cell<T>(a, base, i), A(1)};
    acc = merge(acc, one);
  }
  return block_reduce(acc, shared, [](const LogSum<A>& p, const LogSum<A>& q) {
    return merge(p, q);
  });
}

template <typename T> NPOOL_FN void lse_body(const Args& a) {
  using A = typename Accumulator<T>::type;
  auto* shared = shared_memory<LogSum<A>>();
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const LogSum<A> st = lse_stats<T>(a, map_offsets(a, map).x, shared);
    if (thread_index() == 0) {
      const A y = is_finite(st.m) ? st.m + log_acc(st.s / A(a.n)) : st.m;
      static_cast<T*>(a.out)[map] = from_acc<T>(y / static_cast<A>(a.beta));
    }
  }
}

template <typename T> NPOOL_FN void lse_backward_body(const Args& a) {
  using A = typename Accumulator<T>::type;
  auto* shared = shared_memory<LogSum<A>>();
  const A beta = static_cast<A>(a.beta);
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const Map m = map_offsets(a, map);
    const LogSum<A> st = lse_stats<T>(a, m.x, shared);
    const A coef = grad_out_of<T>(a, map) / st.s;
    for (int64_t i = thread_index(); i < a.n; i += block_size())
      static_cast<T*>(a.out)[m.out + i * a.out_strides[2]] =
          from_acc<T>(coef * weight(beta * cell<T>(a, m.x, i), st.m));
  }
}

template <typename T> NPOOL_FN void avg_backward_item(const Args& a, int64_t t) {
  using A = typename Accumulator<T>::type;
  const int64_t map = t / a.n, i = t % a.n;
  static_cast<T*>(a.out)[map_offsets(a, map).out + i * a.out_strides[2]] =
      from_acc<T>(grad_out_of<T>(a, map) / A(a.n));
}

// ------------------------------------------------------------------ selection
// Keys in the order of the values (NaN above +inf, -0 equal to +0); complemented for the
// smallest values. 32 bits for half and float, 64 for double.
NPOOL_FN uint64_t key_of(float v) {
  if (v != v) return 0xFFFFFFFFull;
  uint32_t u;
  const float w = v == 0.0f ? 0.0f : v;
  memcpy(&u, &w, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
NPOOL_FN uint64_t key_of(double v) {
  if (v != v) return ~0ull;
  uint64_t u;
  const double w = v == 0.0 ? 0.0 : v;
  memcpy(&u, &w, 8);
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}
NPOOL_FN float value_of(uint64_t key, float) {
  if (key == 0xFFFFFFFFull) return quiet_nan<float>();
  const uint32_t k = static_cast<uint32_t>(key);
  const uint32_t u = (k & 0x80000000u) ? (k ^ 0x80000000u) : ~k;
  float v;
  memcpy(&v, &u, 4);
  return v;
}
NPOOL_FN double value_of(uint64_t key, double) {
  if (key == ~0ull) return quiet_nan<double>();
  const uint64_t u = (key & 0x8000000000000000ull) ? (key ^ 0x8000000000000000ull) : ~key;
  double v;
  memcpy(&v, &u, 8);
  return v;
}

template <typename A> struct KeyWidth { static constexpr int bits = 32; };
template <> struct KeyWidth<double> { static constexpr int bits = 64; };

template <typename T> NPOOL_FN uint64_t selection_key(const Args& a, int64_t base, int64_t i,
                                                     bool bottom) {
  using A = typename Accumulator<T>::type;
  const uint64_t flip = bottom ? (KeyWidth<A>::bits == 64 ? ~0ull : 0xFFFFFFFFull) : 0;
  return key_of(cell<T>(a, base, i)) ^ flip;
}

// Shared memory of the selection kernels, after the reduction slots.
struct SelectShared {
  uint32_t hist[256];
  uint64_t prefix;
  int64_t remaining;
  int64_t scan[2][256];  // double-buffered block scan
};

struct Threshold {
  uint64_t key;  // T
  int64_t need;  // cells equal to T that are taken, the first ones in flat order
};

template <typename T> NPOOL_FN Threshold block_threshold(const Args& a, int64_t base, int64_t k,
                                                        bool bottom, SelectShared* sh) {
  using A = typename Accumulator<T>::type;
  const int t = thread_index();
  uint64_t prefix = 0, mask = 0;
  int64_t remaining = k;
  for (int shift = KeyWidth<A>::bits - 8; shift >= 0; shift -= 8) {
    for (int b = t; b < 256; b += block_size()) sh->hist[b] = 0;
    sync_block();
    for (int64_t i = t; i < a.n; i += block_size()) {
      const uint64_t key = selection_key<T>(a, base, i, bottom);
      if ((key & mask) == prefix) atomic_add(&sh->hist[(key >> shift) & 255], 1u);
    }
    sync_block();
    if (t == 0) {
      int b = 255;
      while (remaining > static_cast<int64_t>(sh->hist[b])) remaining -= sh->hist[b--];
      sh->prefix = prefix | (static_cast<uint64_t>(b) << shift);
      sh->remaining = remaining;
    }
    sync_block();
    prefix = sh->prefix;
    remaining = sh->remaining;
    mask |= uint64_t(255) << shift;
    sync_block();
  }
  return {prefix, remaining};
}

// grad_x = 0 on one map, then a barrier.
template <typename T> NPOOL_FN void zero_map(const Args& a, T* gx) {
  for (int64_t i = thread_index(); i < a.n; i += block_size())
    gx[i * a.out_strides[2]] = from_acc<T>(typename Accumulator<T>::type(0));
  sync_block();
}

// Exclusive block scan of a count per thread; returns this thread's offset, and the total.
NPOOL_FN int64_t block_scan(int64_t value, SelectShared* sh, int64_t* total) {
  const int t = thread_index(), size = block_size();
  int in = 0;
  sh->scan[0][t] = value;
  sync_block();
  for (int offset = 1; offset < size; offset *= 2) {
    const int64_t v = sh->scan[in][t] + (t >= offset ? sh->scan[in][t - offset] : 0);
    sh->scan[1 - in][t] = v;
    in = 1 - in;
    sync_block();
  }
  const int64_t inclusive = sh->scan[in][t];
  *total = sh->scan[in][size - 1];
  sync_block();
  return inclusive - value;
}

// Visits the selected cells of one map in flat order: f(i, position among the selected).
template <typename T, typename F>
NPOOL_FN void for_selected(const Args& a, int64_t base, const Threshold& th, bool bottom,
                           SelectShared* sh, F f) {
  int64_t equal_before = 0, selected_before = 0;
  for (int64_t start = 0; start < a.n; start += block_size()) {
    const int64_t i = start + thread_index();
    const uint64_t key = i < a.n ? selection_key<T>(a, base, i, bottom) : 0;
    const bool equal = i < a.n && key == th.key;
    int64_t equal_total, selected_total;
    const int64_t equal_rank = equal_before + block_scan(equal, sh, &equal_total);
    const bool chosen = i < a.n && (key > th.key || (equal && equal_rank < th.need));
    const int64_t position = selected_before + block_scan(chosen, sh, &selected_total);
    if (chosen) f(i, position);
    equal_before += equal_total;
    selected_before += selected_total;
  }
}

template <typename T> NPOOL_FN typename Accumulator<T>::type selected_sum(
    const Args& a, int64_t base, const Threshold& th, bool bottom,
    typename Accumulator<T>::type* shared) {
  using A = typename Accumulator<T>::type;
  A sum = 0;
  for (int64_t i = thread_index(); i < a.n; i += block_size())
    if (selection_key<T>(a, base, i, bottom) > th.key) sum += cell<T>(a, base, i);
  sum = block_reduce(sum, shared, [](A p, A q) { return p + q; });
  if (th.need == 0) return sum;
  const uint64_t flip = bottom ? (KeyWidth<A>::bits == 64 ? ~0ull : 0xFFFFFFFFull) : 0;
  return sum + A(th.need) * static_cast<A>(value_of(th.key ^ flip, A(0)));
}

template <typename T> NPOOL_FN SelectShared* select_shared() {
  using A = typename Accumulator<T>::type;
  // The reduction slots first (block_size() accumulators), then the selection state.
  unsigned char* base = shared_memory<unsigned char>();
  const int64_t slots = (static_cast<int64_t>(block_size()) * sizeof(A) + 15) / 16 * 16;
  return reinterpret_cast<SelectShared*>(base + slots);
}

template <typename T> NPOOL_FN void select_body(const Args& a) {
  using A = typename Accumulator<T>::type;
  A* sums = shared_memory<A>();
  SelectShared* sh = select_shared<T>();
  const int64_t width = a.k + a.k_bottom;
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const int64_t base = map_offsets(a, map).x;
    A y = 0;
    for (int part = 0; part < 2; ++part) {
      const bool bottom = part == 1;
      const int64_t k = bottom ? a.k_bottom : a.k;
      if (k == 0) continue;
      const Threshold th = block_threshold<T>(a, base, k, bottom, sh);
      const A sum = selected_sum<T>(a, base, th, bottom, sums);
      y += (bottom ? static_cast<A>(a.alpha) : A(1)) * (sum / A(k));
      if (a.index) {
        int64_t* out = a.index + map * width + (bottom ? a.k : 0);
        for_selected<T>(a, base, th, bottom, sh, [&](int64_t i, int64_t p) { out[p] = i; });
      }
    }
    if (thread_index() == 0) static_cast<T*>(a.out)[map] = from_acc<T>(y);
    sync_block();
  }
}

template <typename T> NPOOL_FN void select_backward_body(const Args& a) {
  using A = typename Accumulator<T>::type;
  SelectShared* sh = select_shared<T>();
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const Map m = map_offsets(a, map);
    T* gx = static_cast<T*>(a.out) + m.out;
    const A g = grad_out_of<T>(a, map);
    zero_map(a, gx);
    for (int part = 0; part < 2; ++part) {
      const bool bottom = part == 1;
      const int64_t k = bottom ? a.k_bottom : a.k;
      if (k == 0) continue;
      const A share = (bottom ? static_cast<A>(a.alpha) : A(1)) * g / A(k);
      const Threshold th = block_threshold<T>(a, m.x, k, bottom, sh);
      for_selected<T>(a, m.x, th, bottom, sh, [&](int64_t i, int64_t) {
        T* cell_gx = gx + i * a.out_strides[2];
        *cell_gx = from_acc<T>(to_acc(*cell_gx) + share);
      });
      sync_block();
    }
  }
}

// Gradient from indices a forward returned: grad_x = 0, then share on index[map, :k] and
// alpha * share' on index[map, k:]. One thread per index; each part holds distinct cells.
template <typename T> NPOOL_FN void scatter_body(const Args& a) {
  using A = typename Accumulator<T>::type;
  const int64_t width = a.k + a.k_bottom;
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const Map m = map_offsets(a, map);
    T* gx = static_cast<T*>(a.out) + m.out;
    const A g = grad_out_of<T>(a, map);
    zero_map(a, gx);
    for (int part = 0; part < 2; ++part) {
      const int64_t k = part ? a.k_bottom : a.k;
      const A share = (part ? static_cast<A>(a.alpha) : A(1)) * g / A(k ? k : 1);
      for (int64_t j = thread_index(); j < k; j += block_size()) {
        const int64_t i = a.index[map * width + (part ? a.k : 0) + j];
        if (i < 0 || i >= a.n) {  // not an index of this map: never write outside it
          gx[0] = from_acc<T>(quiet_nan<A>());  // and make the wrong input visible
          continue;
        }
        T* cell_gx = gx + i * a.out_strides[2];
        *cell_gx = from_acc<T>(to_acc(*cell_gx) + share);
      }
      sync_block();
    }
  }
}

}  // namespace global_pools
}  // namespace npool

#define NPOOL_GLOBAL_POOL_KERNELS(T, tname)                                                    \
  NPOOL_BLOCK_KERNEL(npool_global_max_##tname, npool::global_pools::Args,                      \
                     npool::global_pools::max_body<T>)                                         \
  NPOOL_BLOCK_KERNEL(npool_global_avg_##tname, npool::global_pools::Args,                      \
                     npool::global_pools::avg_body<T>)                                         \
  NPOOL_BLOCK_KERNEL(npool_global_lse_##tname, npool::global_pools::Args,                      \
                     npool::global_pools::lse_body<T>)                                         \
  NPOOL_BLOCK_KERNEL(npool_global_lse_backward_##tname, npool::global_pools::Args,             \
                     npool::global_pools::lse_backward_body<T>)                                \
  NPOOL_BLOCK_KERNEL(npool_global_select_##tname, npool::global_pools::Args,                   \
                     npool::global_pools::select_body<T>)                                      \
  NPOOL_BLOCK_KERNEL(npool_global_select_backward_##tname, npool::global_pools::Args,          \
                     npool::global_pools::select_backward_body<T>)                             \
  NPOOL_BLOCK_KERNEL(npool_global_scatter_backward_##tname, npool::global_pools::Args,         \
                     npool::global_pools::scatter_body<T>)                                     \
  NPOOL_KERNEL(npool_global_avg_backward_##tname, npool::global_pools::Args,                   \
               npool::global_pools::avg_backward_item<T>)

NPOOL_GLOBAL_POOL_KERNELS(__half, f16)
NPOOL_GLOBAL_POOL_KERNELS(float, f32)
NPOOL_GLOBAL_POOL_KERNELS(double, f64)

#ifdef NPOOL_HOST_EMULATION
extern "C" __attribute__((visibility("default"))) int64_t npool_global_pools_args_size() {
  return sizeof(npool::global_pools::Args);
}
#endif
