// Global pools on the GPU: one block per (sample, channel) map of n cells, as on the CPU
// (src/cpu/_global_pools.pyx):
//   max     y = max x, first index among ties, the first NaN wins;  avg  y = mean x;
//   LSE     y = (1/beta) log(mean exp(beta x)), accurate for every finite beta (see lse_body);
//   select  y = (sum of the k largest) / k + alpha (sum of the kb smallest) / kb (k-max: kb = 0).
//   GeM     y = (mean max(x, eps)^p)^(1/p), relative to the map's largest clamped cell.
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
  double* stats;              // LSE's (maps, 2) x* and S: the forward writes them, when not
                              // null, and the backward reads them instead of computing them
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
  const void* p;              // GeM's exponents (of type p_type), broadcast to (N, C) by
                              // p_strides; null: the number p_value
  void* grad_p;               // GeM's backward: dL/dp per map (maps,), double when p is,
                              // else float (summed to p's shape and type afterwards)
  int64_t p_strides[2];
  int64_t p_type;             // 0: float, 1: double, 2: x's type (half or bfloat16)
  double p_value;
  double eps;                 // GeM's clamp floor
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

// 2^e with e = ceil(log2 count) + 1: sums of count cells scaled by 1/2^e never overflow.
NPOOL_FN int sum_scale_exponent(int64_t count) {
  int e = 1;
  while ((int64_t(1) << (e - 1)) < count && e < 62) ++e;
  return e;
}

// The block's sum of its map's cells scaled by 2^-exponent, in float64 (every thread gets it).
template <typename T> NPOOL_FN double block_sum(const Args& a, int64_t base, int exponent) {
  double sum = 0;
  for (int64_t i = thread_index(); i < a.n; i += block_size())
    sum += ::ldexp(static_cast<double>(cell<T>(a, base, i)), -exponent);
  return block_reduce(sum, shared_memory<double>(), [](double p, double q) { return p + q; });
}

// The mean in float64; when the sum overflows although the cells are finite (float64 cells
// near the maximum) it is taken again with the cells scaled by a power of two.
template <typename T> NPOOL_FN void avg_body(const Args& a) {
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const int64_t base = map_offsets(a, map).x;
    double mean = block_sum<T>(a, base, 0) / static_cast<double>(a.n);
    if (!is_finite(mean)) {  // the same in every thread: the branch is uniform
      const int e = sum_scale_exponent(a.n);
      const double scaled = block_sum<T>(a, base, e);
      if (is_finite(scaled)) mean = ::ldexp(scaled / static_cast<double>(a.n), e);
    }
    if (thread_index() == 0) static_cast<T*>(a.out)[map] = from_acc<T>(
        static_cast<typename Accumulator<T>::type>(mean));
  }
}

// LogSumExp, accurate for every finite beta, in float64 (as the CPU core): x* = the map's max
// (beta > 0) or min (beta < 0), d = x - x* and u = beta d <= 0 (halved where d overflows);
//   y = x* + log(S / n) / beta          with S = sum exp(u), when S / n < 1/2,
//   y = x* + log1p(S' / n) / beta       with S' = sum expm1(u) (no cancellation near 1),
//   y = mean + beta var / 2             when |beta| max|d| < 1e-8 (the limit's series).
struct LseSums {
  double xs;          // x*; NaN if a cell is NaN
  double s, s1;       // sum exp(u), sum expm1(u)
  double d1, d2, r;   // sum d, sum d^2, max |d|
};

// x* of one map (every thread gets it): NaN when a cell is NaN.
template <typename T> NPOOL_FN double lse_reference(const Args& a, int64_t base) {
  const bool largest = a.beta > 0;
  double xs = largest ? -HUGE_VAL : HUGE_VAL, nan = 0;
  for (int64_t i = thread_index(); i < a.n; i += block_size()) {
    const double v = cell<T>(a, base, i);
    if (v != v) nan = 1;
    else xs = largest ? (v > xs ? v : xs) : (v < xs ? v : xs);
  }
  double* shared = shared_memory<double>();
  nan = block_reduce(nan, shared, [](double p, double q) { return p > q ? p : q; });
  xs = block_reduce(xs, shared, [largest](double p, double q) {
    return largest ? (p > q ? p : q) : (p < q ? p : q);
  });
  return nan != 0 ? NAN : xs;
}

template <typename T> NPOOL_FN LseSums lse_sums(const Args& a, int64_t base, bool moments) {
  LseSums st = {lse_reference<T>(a, base), 0, 0, 0, 0, 0};
  double* shared = shared_memory<double>();
  auto plus = [](double p, double q) { return p + q; };
  if (st.xs != st.xs) return st;  // uniform: every thread has the same x*
  if (!is_finite(st.xs)) {  // S = the number of cells at the infinite extreme
    double count = 0;
    for (int64_t i = thread_index(); i < a.n; i += block_size())
      count += static_cast<double>(cell<T>(a, base, i)) == st.xs;
    st.s = block_reduce(count, shared, plus);
    return st;
  }
  double s = 0, s1 = 0, d1 = 0, d2 = 0, r = 0;
  for (int64_t i = thread_index(); i < a.n; i += block_size()) {
    const double v = cell<T>(a, base, i);
    const double u = scaled_difference(a.beta, v, st.xs);
    s += ::exp(u);
    if (moments) {
      const double d = v - st.xs;
      s1 += ::expm1(u);
      d1 += d;
      d2 += d * d;
      r = r > ::fabs(d) ? r : ::fabs(d);
    }
  }
  st.s = block_reduce(s, shared, plus);
  if (moments) {
    st.s1 = block_reduce(s1, shared, plus);
    st.d1 = block_reduce(d1, shared, plus);
    st.d2 = block_reduce(d2, shared, plus);
    st.r = block_reduce(r, shared, [](double p, double q) { return p > q ? p : q; });
  }
  return st;
}

template <typename T> NPOOL_FN void lse_body(const Args& a) {
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const LseSums st = lse_sums<T>(a, map_offsets(a, map).x, true);
    if (thread_index() == 0) {
      const double n = static_cast<double>(a.n), beta = a.beta;
      double y;
      if (!is_finite(st.xs)) {
        y = st.xs;  // NaN, or every cell at the infinite extreme
      } else if (::fabs(beta) * st.r < 1e-8) {
        const double mean = st.d1 / n;
        y = st.xs + mean + beta * (st.d2 / n - mean * mean) / 2;
      } else if (st.s / n < 0.5) {
        y = st.xs + ::log(st.s / n) / beta;
      } else {
        y = st.xs + ::log1p(st.s1 / n) / beta;
      }
      static_cast<T*>(a.out)[map] = from_acc<T>(static_cast<typename Accumulator<T>::type>(y));
      if (a.stats != nullptr) {
        a.stats[2 * map] = st.xs;
        a.stats[2 * map + 1] = st.s;
      }
    }
    sync_block();
  }
}

// dy/dx_i = exp(u_i) / S (the softmax of beta x), with the limits at an infinite x*.
template <typename T> NPOOL_FN void lse_backward_body(const Args& a) {
  using A = typename Accumulator<T>::type;
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const Map m = map_offsets(a, map);
    LseSums st = {};
    if (a.stats != nullptr) {  // the forward's: the same sums, in the same order
      st.xs = a.stats[2 * map];
      st.s = a.stats[2 * map + 1];
    } else {
      st = lse_sums<T>(a, m.x, false);
    }
    const double g = grad_out_of<T>(a, map);
    for (int64_t i = thread_index(); i < a.n; i += block_size()) {
      const double v = cell<T>(a, m.x, i);
      double w;
      if (st.xs != st.xs) {
        w = NAN;
      } else if (!is_finite(st.xs)) {  // the cells at the infinite extreme share the weight
        w = v == st.xs ? 1.0 / st.s : 0.0;
      } else {
        w = ::exp(scaled_difference(a.beta, v, st.xs)) / st.s;
      }
      static_cast<T*>(a.out)[m.out + i * a.out_strides[2]] = from_acc<T>(static_cast<A>(g * w));
    }
    sync_block();
  }
}

template <typename T> NPOOL_FN void avg_backward_item(const Args& a, int64_t t) {
  using A = typename Accumulator<T>::type;
  const int64_t map = t / a.n, i = t % a.n;
  static_cast<T*>(a.out)[map_offsets(a, map).out + i * a.out_strides[2]] =
      from_acc<T>(grad_out_of<T>(a, map) / A(a.n));
}

// ------------------------------------------------------------------ GeM
// In float64, as the CPU core: z = max(x, eps), M = max z, u = log(z / M) from mantissas and
// exponents (z / M may underflow), w = exp(p u) <= 1, S = sum w, T = sum w u, L = log(S / n) or,
// when |L| < 1/4 (the terms all near 1: p -> 0), log1p(sum expm1(p u) / n);
//   y = M exp(L / p),  dy/dx_i = y w_i / (S z_i) where x_i >= eps,  dy/dp = (y/p) (T/S - L/p)
// (= y KL(softmax(p u) || uniform) / p^2, summed from non-negative terms when |L| < 1/4).
// A NaN in the map gives NaN (y and gradients), a +inf y = +inf and NaN gradients; a p that is
// not positive and finite gives NaN (the CPU core refuses it; here that would cost a
// synchronisation).
struct GemSums {
  double m, s, s1, t, su;  // su: sum u
};

template <typename T> NPOOL_FN double gem_exponent(const Args& a, int64_t map) {
  if (a.p == nullptr) return a.p_value;
  const int64_t at = (map / a.channels) * a.p_strides[0] + (map % a.channels) * a.p_strides[1];
  if (a.p_type == 1) return static_cast<const double*>(a.p)[at];
  if (a.p_type == 2) return static_cast<double>(to_acc(static_cast<const T*>(a.p)[at]));
  return static_cast<double>(static_cast<const float*>(a.p)[at]);
}

// log(z / m) for positive normal z <= m, exact to about 1e-16 whatever their magnitudes.
NPOOL_FN double log_ratio(double z, double m) {
  int ez, em;
  double fz = ::frexp(z, &ez), fm = ::frexp(m, &em);
  if (fz < 0.70710678118654752440) { fz *= 2; --ez; }
  if (fm < 0.70710678118654752440) { fm *= 2; --em; }
  const double k = static_cast<double>(ez - em);
  return k * 6.93147180369123816490e-01 + ((::log(fz) - ::log(fm)) + k * 1.90821492927058770002e-10);
}

template <typename T> NPOOL_FN GemSums gem_sums(const Args& a, int64_t base, double p) {
  double m = a.eps, nan = 0;
  for (int64_t i = thread_index(); i < a.n; i += block_size()) {
    const double v = cell<T>(a, base, i);
    if (v != v) nan = 1;
    else if (v > m) m = v;
  }
  double* shared = shared_memory<double>();
  auto larger = [](double x, double y) { return x > y ? x : y; };
  nan = block_reduce(nan, shared, larger);
  m = block_reduce(m, shared, larger);
  GemSums st = {nan != 0 ? NAN : m, 0, 0, 0, 0};
  if (!is_finite(st.m)) return st;  // uniform: every thread has the same M
  double s = 0, s1 = 0, t = 0, su = 0;
  for (int64_t i = thread_index(); i < a.n; i += block_size()) {
    const double v = cell<T>(a, base, i);
    const double u = log_ratio(v > a.eps ? v : a.eps, m);
    const double w = ::exp(p * u);
    s += w;
    s1 += ::expm1(p * u);
    t += w * u;
    su += u;
  }
  auto plus = [](double x, double y) { return x + y; };
  st.s = block_reduce(s, shared, plus);
  st.s1 = block_reduce(s1, shared, plus);
  st.t = block_reduce(t, shared, plus);
  st.su = block_reduce(su, shared, plus);
  return st;
}

// (1 + e) log1p(e) - e >= 0 without cancellation: its series where |e| < 1/2; its limit 1
// where 1 + e rounds to 0 (a weight far below the others': (1 + e) log1p(e) -> 0, not 0 * -inf).
NPOOL_FN double log1p_excess(double e) {
  if (1 + e <= 0) return -e;
  if (::fabs(e) >= 0.5) return (1 + e) * ::log1p(e) - e;
  double total = 0, power = e * e;
  for (int k = 2; k < 42; ++k) {
    total += (k % 2 == 0 ? 1.0 : -1.0) * power / static_cast<double>(k * (k - 1));
    power *= e;
  }
  return total;
}

// KL(softmax(p u) || uniform) of a map whose terms are all near 1 (the CPU core's _gem_exact):
// the mean of (1 + e_i) log1p(e_i) - e_i, e_i = n q_i - 1 from expm1 of the centred p u, so
// nothing cancels as p -> 0. Every thread gets it.
template <typename T> NPOOL_FN double gem_divergence(const Args& a, int64_t base, double p,
                                                    const GemSums& st) {
  const double n = static_cast<double>(a.n), mean_a = p * st.su / n;
  double* shared = shared_memory<double>();
  auto plus = [](double x, double y) { return x + y; };
  double grown = 0;
  for (int64_t i = thread_index(); i < a.n; i += block_size()) {
    const double v = cell<T>(a, base, i);
    grown += ::expm1(p * log_ratio(v > a.eps ? v : a.eps, st.m) - mean_a);
  }
  const double mean_grown = block_reduce(grown, shared, plus) / n;
  double kl = 0;
  for (int64_t i = thread_index(); i < a.n; i += block_size()) {
    const double v = cell<T>(a, base, i);
    const double b = p * log_ratio(v > a.eps ? v : a.eps, st.m) - mean_a;
    kl += log1p_excess((::expm1(b) - mean_grown) / (1 + mean_grown));
  }
  return block_reduce(kl, shared, plus) / n;
}

NPOOL_FN double gem_log_mean(const GemSums& st, double n) {
  const double l = ::log(st.s / n);
  return ::fabs(l) < 0.25 ? ::log1p(st.s1 / n) : l;
}

NPOOL_FN bool gem_valid(double p) { return p > 0 && is_finite(p); }

template <typename T> NPOOL_FN void gem_body(const Args& a) {
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const double p = gem_exponent<T>(a, map);
    const GemSums st = gem_sums<T>(a, map_offsets(a, map).x, gem_valid(p) ? p : 1.0);
    if (thread_index() == 0) {
      double y = st.m;  // NaN, +inf
      if (!gem_valid(p)) y = NAN;
      else if (is_finite(st.m)) y = st.m * ::exp(gem_log_mean(st, static_cast<double>(a.n)) / p);
      static_cast<T*>(a.out)[map] = from_acc<T>(static_cast<typename Accumulator<T>::type>(y));
    }
    sync_block();
  }
}

template <typename T> NPOOL_FN void gem_backward_body(const Args& a) {
  using A = typename Accumulator<T>::type;
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const Map m = map_offsets(a, map);
    const double p = gem_exponent<T>(a, map);
    const bool valid = gem_valid(p);
    const GemSums st = gem_sums<T>(a, m.x, valid ? p : 1.0);
    const double g = grad_out_of<T>(a, map);
    const bool finite = valid && is_finite(st.m);
    const double l = finite ? gem_log_mean(st, static_cast<double>(a.n)) : NAN;
    const double y = finite ? st.m * ::exp(l / p) : NAN;
    // dy/dp = (y / p) D: D = T / S - L / p, or where the terms are all near 1 (uniform over
    // the block) KL / p without cancellation
    const bool near_one = finite && ::fabs(::log(st.s / static_cast<double>(a.n))) < 0.25;
    const double slope = near_one ? gem_divergence<T>(a, m.x, p, st) / p
                                  : st.t / st.s - l / p;
    const double coef = g * y / st.s;
    for (int64_t i = thread_index(); i < a.n; i += block_size()) {
      const double v = cell<T>(a, m.x, i);
      double d = NAN;
      if (finite) {
        const double z = v > a.eps ? v : a.eps;
        d = v >= a.eps ? coef * ::exp(p * log_ratio(z, st.m)) / z : 0.0;
      }
      static_cast<T*>(a.out)[m.out + i * a.out_strides[2]] = from_acc<T>(static_cast<A>(d));
    }
    if (thread_index() == 0) {
      const double dp = finite ? g * (y / p) * slope : NAN;
      if (a.p_type == 1) static_cast<double*>(a.grad_p)[map] = dp;
      else static_cast<float*>(a.grad_p)[map] = static_cast<float>(dp);
    }
    sync_block();
  }
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

// The sum of the selected cells of one map scaled by 2^-exponent, in float64.
template <typename T> NPOOL_FN double selected_sum(const Args& a, int64_t base,
                                                   const Threshold& th, bool bottom,
                                                   int exponent) {
  using A = typename Accumulator<T>::type;
  double sum = 0;
  for (int64_t i = thread_index(); i < a.n; i += block_size())
    if (selection_key<T>(a, base, i, bottom) > th.key)
      sum += ::ldexp(static_cast<double>(cell<T>(a, base, i)), -exponent);
  sum = block_reduce(sum, shared_memory<double>(), [](double p, double q) { return p + q; });
  if (th.need == 0) return sum;
  const uint64_t flip = bottom ? (KeyWidth<A>::bits == 64 ? ~0ull : 0xFFFFFFFFull) : 0;
  return sum + static_cast<double>(th.need) *
                   ::ldexp(static_cast<double>(value_of(th.key ^ flip, A(0))), -exponent);
}

template <typename T> NPOOL_FN SelectShared* select_shared() {
  // The reduction slots first (block_size() float64 accumulators), then the selection state.
  unsigned char* base = shared_memory<unsigned char>();
  const int64_t slots = (static_cast<int64_t>(block_size()) * sizeof(double) + 15) / 16 * 16;
  return reinterpret_cast<SelectShared*>(base + slots);
}

// mean of the k largest + alpha * mean of the kb smallest, with the cells scaled by 2^-exponent.
template <typename T> NPOOL_FN double selection_value(const Args& a, int64_t base,
                                                     const Threshold* th, int exponent) {
  double y = 0;
  for (int part = 0; part < 2; ++part) {
    const int64_t k = part ? a.k_bottom : a.k;
    if (k) y += (part ? a.alpha : 1.0) *
                (selected_sum<T>(a, base, th[part], part == 1, exponent) / static_cast<double>(k));
  }
  return y;
}

// y = mean of the k largest + alpha * mean of the kb smallest, in float64; when that overflows
// although the cells are finite (float64 cells near the maximum), again with the cells scaled
// by a power of two, as the CPU core does.
template <typename T> NPOOL_FN void select_body(const Args& a) {
  SelectShared* sh = select_shared<T>();
  const int64_t width = a.k + a.k_bottom;
  for (int64_t map = block_index(); map < a.maps; map += grid_size()) {
    const int64_t base = map_offsets(a, map).x;
    Threshold th[2] = {{0, 0}, {0, 0}};
    for (int part = 0; part < 2; ++part) {
      const bool bottom = part == 1;
      const int64_t k = bottom ? a.k_bottom : a.k;
      if (k == 0) continue;
      th[part] = block_threshold<T>(a, base, k, bottom, sh);
      if (a.index) {
        int64_t* out = a.index + map * width + (bottom ? a.k : 0);
        for_selected<T>(a, base, th[part], bottom, sh, [&](int64_t i, int64_t p) { out[p] = i; });
      }
    }
    double y = selection_value<T>(a, base, th, 0);
    if (!is_finite(y)) {  // the same in every thread: the branch is uniform
      const int e = sum_scale_exponent(a.k > a.k_bottom ? a.k : a.k_bottom);
      const double scaled = selection_value<T>(a, base, th, e);
      if (is_finite(scaled)) y = ::ldexp(scaled, e);
    }
    if (thread_index() == 0) static_cast<T*>(a.out)[map] = from_acc<T>(
        static_cast<typename Accumulator<T>::type>(y));
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
  NPOOL_BLOCK_KERNEL(npool_global_gem_##tname, npool::global_pools::Args,                      \
                     npool::global_pools::gem_body<T>)                                         \
  NPOOL_BLOCK_KERNEL(npool_global_gem_backward_##tname, npool::global_pools::Args,             \
                     npool::global_pools::gem_backward_body<T>)                                \
  NPOOL_KERNEL(npool_global_avg_backward_##tname, npool::global_pools::Args,                   \
               npool::global_pools::avg_backward_item<T>)

NPOOL_GLOBAL_POOL_KERNELS(__half, f16)
NPOOL_GLOBAL_POOL_KERNELS(__nv_bfloat16, bf16)
NPOOL_GLOBAL_POOL_KERNELS(float, f32)
NPOOL_GLOBAL_POOL_KERNELS(double, f64)

#ifdef NPOOL_HOST_EMULATION
NPOOL_EXPORT_LAYOUT(npool_global_pools_args_layout, npool::global_pools::Args,
                    NPOOL_OFFSET(A, x), NPOOL_OFFSET(A, grad_out), NPOOL_OFFSET(A, out),
                    NPOOL_OFFSET(A, index), NPOOL_OFFSET(A, stats), NPOOL_OFFSET(A, maps),
                    NPOOL_OFFSET(A, n), NPOOL_OFFSET(A, channels), NPOOL_OFFSET(A, x_strides),
                    NPOOL_OFFSET(A, out_strides), NPOOL_OFFSET(A, g_strides), NPOOL_OFFSET(A, k),
                    NPOOL_OFFSET(A, k_bottom), NPOOL_OFFSET(A, beta), NPOOL_OFFSET(A, alpha),
                    NPOOL_OFFSET(A, count), NPOOL_OFFSET(A, p), NPOOL_OFFSET(A, grad_p),
                    NPOOL_OFFSET(A, p_strides), NPOOL_OFFSET(A, p_type),
                    NPOOL_OFFSET(A, p_value), NPOOL_OFFSET(A, eps))
#endif
