// The windowed-softmax pool on the GPU: SoftPool (lam = 1) and Max-Entropy pooling (any lam).
//
// For every sample n, channel c and output o, with R(o) the real (unpadded) cells of o's window:
//   z_i = lam x_i,  M = max_{R(o)} z,  e_i = exp(z_i - M),  S = sum e_i,
//   y_o = sum e_i x_i / S, computed as x* + sum e_i (x_i - x*) / S with x* the x of the (first)
//         cell where z is largest, so y stays inside the window's range after rounding;
//   dL/dx_i = sum_{o : i in R(o)} (g_o / S_o) e_{o,i} (1 + lam (x_i - y_o)).
// Windows whose M or y is not finite (NaN, +-inf, lam x or the weighted sum overflowing) are
// redone as the CPU kernel does: from x* (found by comparing x), so nothing overflows, with the
// limits NaN wins, +inf cells share the whole weight, -inf cells weigh nothing.
//
// Arrays are seen as 5-D (N, C, D, H, W) with arbitrary element strides (1-D and 2-D pools add
// size-1 axes). Work items are taken in memory order of a C-contiguous array, or, when
// args.channels_last is set, with the channel fastest, so neighbouring threads touch
// neighbouring addresses in both layouts. Kernels, each for f16/bf16/f32/f64 storage (the 16-bit
// types computed in float) and i32/i64 index arithmetic:
//   forward             one thread per output: y.
//   backward_disjoint   windows that do not overlap: one thread per output, which writes the
//                       gradient of every input cell it owns (its window, and the cells between
//                       it and the next window or the edge, which get 0); each cell is written
//                       by exactly one thread.
//   backward_stats      overlapping windows, pass 1: one thread per output stores x*, g/S and y.
//   backward_gather     pass 2: one thread per input cell adds the terms of the windows that
//                       cover it, in output order. No atomics: the gradient is deterministic.
#include "npool_cuda.cuh"

namespace npool {
namespace windowed_softmax {

// The one argument of every kernel below; the host packs the same fields (all 8 bytes wide).
struct Args {
  const void* x;         // input (N, C, D, H, W)
  const void* grad_out;  // gradient of the output, shaped like y
  void* out;             // y (forward) or grad_x (backward)
  void* stats;           // accumulators x*, g/S and y of every output, in output work-item order
  int64_t stats_stride;  // distance between the x*, g/S and y arrays of stats: the output count
  int64_t count;         // work items
  int64_t channels_last; // work-item order: channels fastest when non-zero
  double lam;            // temperature, when lam_values is null
  const void* lam_values;   // per-output temperatures (x's dtype), with lam_strides
  void* grad_lam;           // dL/dlam per output (accumulator dtype), with glam_strides
  int64_t lam_strides[5];   // element strides of lam_values over the output (0: broadcast)
  int64_t glam_strides[5];
  int64_t size[5];       // N, C, D, H, W of x
  int64_t out_size[3];   // OD, OH, OW
  int64_t kernel[3];
  int64_t stride[3];
  int64_t padding[3];
  int64_t x_strides[5];    // element strides of x
  int64_t out_strides[5];  // element strides of out
  int64_t g_strides[5];    // element strides of grad_out
  Divisor work[4];         // the four fastest axes of the work items, fastest first
  Divisor stride_div[3];   // the strides, as divisors
  // The general path (dilated windows): per spatial axis the step between a window's cells and
  // tables of each output's first real cell and count of real cells, and of each input cell's
  // candidate outputs [cover_lo, cover_hi) (those whose cells it may be one of). Null tables:
  // the regular windows [o s - padding, o s - padding + kernel), step 1.
  int64_t dilation[3];
  const int64_t* window_first[3];
  const int64_t* window_count[3];
  const int64_t* cover_lo[3];
  const int64_t* cover_hi[3];
};

template <typename I> struct Position {
  I n, c, s[3];  // sample, channel, (d, h, w) of an output or of an input cell
};

// Position of work item t: (n, c, d, h, w) with w fastest, or (n, d, h, w, c) with c fastest.
template <typename I> NPOOL_FN Position<I> work_position(const Args& a, int64_t t) {
  I q[4];
  I rest = static_cast<I>(t);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    I r;
    rest = div_mod<I>(rest, a.work[k], &r);
    q[k] = r;
  }
  Position<I> p;
  p.n = rest;
  if (a.channels_last) {
    p.c = q[0]; p.s[2] = q[1]; p.s[1] = q[2]; p.s[0] = q[3];
  } else {
    p.s[2] = q[0]; p.s[1] = q[1]; p.s[0] = q[2]; p.c = q[3];
  }
  return p;
}

template <typename I> NPOOL_FN I offset(const int64_t* strides, I n, I c, I d, I h, I w) {
  return n * static_cast<I>(strides[0]) + c * static_cast<I>(strides[1]) +
         d * static_cast<I>(strides[2]) + h * static_cast<I>(strides[3]) +
         w * static_cast<I>(strides[4]);
}

// Index of output (n, c, o) among the work items of the output kernels (stats layout).
template <typename I> NPOOL_FN int64_t output_item(const Args& a, I n, I c, I od, I oh, I ow) {
  const int64_t C = a.size[1], OD = a.out_size[0], OH = a.out_size[1], OW = a.out_size[2];
  if (a.channels_last) return (((n * OD + od) * OH + oh) * OW + ow) * C + c;
  return (((n * C + c) * OD + od) * OH + oh) * OW + ow;
}

// The real cells lo, lo + step, ... < hi of output o's window on each spatial axis.
template <typename I> struct Window {
  I lo[3], hi[3], step[3];
};

template <typename I> NPOOL_FN Window<I> window_of(const Args& a, const I* o) {
  Window<I> win;
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    if (a.window_first[k]) {  // the general path's tables
      win.step[k] = static_cast<I>(a.dilation[k]);
      win.lo[k] = static_cast<I>(a.window_first[k][o[k]]);
      win.hi[k] = win.lo[k] + (static_cast<I>(a.window_count[k][o[k]]) - 1) * win.step[k] + 1;
      continue;
    }
    win.step[k] = 1;
    const I start = o[k] * static_cast<I>(a.stride[k]) - static_cast<I>(a.padding[k]);
    const I stop = start + static_cast<I>(a.kernel[k]);
    const I length = static_cast<I>(a.size[2 + k]);
    win.lo[k] = start < 0 ? I(0) : start;
    win.hi[k] = stop < length ? stop : length;
  }
  return win;
}

// The temperature of output (n, c, od, oh, ow).
template <typename T, typename I>
NPOOL_FN typename Accumulator<T>::type temperature(const Args& a, I n, I c, I od, I oh, I ow) {
  using A = typename Accumulator<T>::type;
  if (!a.lam_values) return static_cast<A>(a.lam);
  const int64_t* s = a.lam_strides;
  return to_acc(static_cast<const T*>(a.lam_values)[
      n * s[0] + c * s[1] + od * s[2] + oh * s[3] + ow * s[4]]);
}

// exp(z - m) of the fast path (z <= m finite, or z = -inf); a cell at the maximum weighs 1.
template <typename A> NPOOL_FN A fast_weight(A z, A m) { return z == m ? A(1) : exp_acc(z - m); }

// exp(lam (v - x*)), with x* the window's reference cell (its largest lam x), for any cells:
// lam = 0 weighs every cell 1; NaN wins; the cells equal to an infinite x* share the weight and
// another infinite v weighs 0; when lam v or lam x* overflows for finite cells, lam (v - x*) is
// taken in float64 without overflow. While both products are finite it is the fast path's
// weight, bit for bit. As the CPU kernel's _weight.
template <typename A> NPOOL_FN A weight(A v, A xs, A lam) {
  if (lam == A(0)) return A(1);
  if (v != v || xs != xs) return v + xs;
  if (v == xs) return A(1);
  const A z = lam * v, m = lam * xs;
  if (is_finite(z) && is_finite(m)) return exp_acc(z - m);
  if (!is_finite(v) || !is_finite(xs)) return A(0);
  const double u = scaled_difference(static_cast<double>(lam), static_cast<double>(v),
                                     static_cast<double>(xs));
  return static_cast<A>(::exp(u < 0 ? u : 0.0));
}

// a e (1 + lam (x - y)) for any cells (see weight); lam (x - y) overflowing for finite cells
// is taken in float64. Out of line: the rare path of gradient_term.
template <typename A> NPOOL_COLD_FN A careful_gradient_term(A v, A xs, A a, A y, A lam) {
  const A e = weight(v, xs, lam);
  if (e == A(0)) return A(0);
  if (lam == A(0) || v == y) return a * e;  // v == y: also the infinite cells
  const A r = lam * (v - y);
  if (is_finite(r) || !is_finite(v) || !is_finite(y)) return a * e * (A(1) + r);
  return static_cast<A>(static_cast<double>(a) * e *
                        (1 + scaled_difference(static_cast<double>(lam), static_cast<double>(v),
                                               static_cast<double>(y))));
}

// a e (1 + lam (x - y)): one window's share of dL/dx for one cell, with a = g / S. The fast
// path's arithmetic when everything is finite, else careful_gradient_term.
template <typename A> NPOOL_FN A gradient_term(A v, A xs, A a, A y, A lam) {
  const A z = lam * v, m = lam * xs;
  if (is_finite(z) && is_finite(m) && is_finite(y)) {
    const A e = fast_weight(z, m);
    if (e == A(0)) return A(0);
    if (lam == A(0) || v == y) return a * e;
    const A r = lam * (v - y);
    if (is_finite(r)) return a * e * (A(1) + r);
  }
  return careful_gradient_term(v, xs, a, y, lam);
}

template <typename A> struct Stats {
  A xs, s, y;  // the reference cell x*, S and y
};

// S = sum e_i and y = x* + sum e_i (x_i - x*) / S of one window whose fast maximum of z is
// finite (x* = xs, e_i = exp(lam x_i - lam x*)).
template <typename T, typename I>
NPOOL_FN void window_sums(const Args& a, const T* x, const Window<I>& win,
                          Stats<typename Accumulator<T>::type>* st,
                          typename Accumulator<T>::type xs, typename Accumulator<T>::type lam) {
  using A = typename Accumulator<T>::type;
  const I s2 = static_cast<I>(a.x_strides[2]), s3 = static_cast<I>(a.x_strides[3]),
          s4 = static_cast<I>(a.x_strides[4]);
  const A m = lam * xs;
  A s = 0, t = 0;
  for (I d = win.lo[0]; d < win.hi[0]; d += win.step[0])
    for (I h = win.lo[1]; h < win.hi[1]; h += win.step[1])
      for (I w = win.lo[2]; w < win.hi[2]; w += win.step[2]) {
        const A v = to_acc(x[d * s2 + h * s3 + w * s4]);
        const A e = lam != A(0) ? fast_weight(lam * v, m) : A(1);
        s += e;
        t += e * (v - xs);  // a -inf cell adds 0 * -inf = NaN: the window is redone carefully
      }
  st->xs = xs;
  st->s = s;
  st->y = xs + t / s;
}

// A window the fast path could not do (NaN or an infinity in lam x, or an overflow): x* found
// by comparing x itself in lam's direction, the weights of weight(), and y accumulated halved in
// float64, 2 (x*/2 + sum_i w_i (x_i/2 - x*/2)), so that nothing overflows. As the CPU kernel's
// _careful_window.
template <typename T, typename I>
NPOOL_COLD_FN void careful_window(const Args& a, const T* x, const Window<I>& win,
                             Stats<typename Accumulator<T>::type>* st,
                             typename Accumulator<T>::type lam) {
  using A = typename Accumulator<T>::type;
  const I s2 = static_cast<I>(a.x_strides[2]), s3 = static_cast<I>(a.x_strides[3]),
          s4 = static_cast<I>(a.x_strides[4]);
  A xs = to_acc(x[win.lo[0] * s2 + win.lo[1] * s3 + win.lo[2] * s4]);
  bool nan = false;
  for (I d = win.lo[0]; d < win.hi[0]; d += win.step[0])
    for (I h = win.lo[1]; h < win.hi[1]; h += win.step[1])
      for (I w = win.lo[2]; w < win.hi[2]; w += win.step[2]) {
        const A v = to_acc(x[d * s2 + h * s3 + w * s4]);
        if (nan) continue;
        if (v != v) { xs = v; nan = true; }
        else if ((lam > A(0) && v > xs) || (lam < A(0) && v < xs)) xs = v;
      }
  double s = 0;
  for (I d = win.lo[0]; d < win.hi[0]; d += win.step[0])
    for (I h = win.lo[1]; h < win.hi[1]; h += win.step[1])
      for (I w = win.lo[2]; w < win.hi[2]; w += win.step[2])
        s += weight(to_acc(x[d * s2 + h * s3 + w * s4]), xs, lam);
  st->xs = xs;
  st->s = static_cast<A>(s);
  if (xs != xs || (!is_finite(xs) && lam != A(0))) {  // NaN wins; an infinite x* takes it all
    st->y = xs;
    return;
  }
  double half = 0;
  for (I d = win.lo[0]; d < win.hi[0]; d += win.step[0])
    for (I h = win.lo[1]; h < win.hi[1]; h += win.step[1])
      for (I w = win.lo[2]; w < win.hi[2]; w += win.step[2]) {
        const A v = to_acc(x[d * s2 + h * s3 + w * s4]);
        const double e = weight(v, xs, lam);
        if (e != 0 && v != xs) half += (e / s) * (0.5 * static_cast<double>(v) -
                                                  0.5 * static_cast<double>(xs));
      }
  double y = 2 * (0.5 * static_cast<double>(xs) + half);
  if (y - y != 0) {  // infinite cells averaged (lam = 0): the plain weighted mean, halved
    half = 0;
    for (I d = win.lo[0]; d < win.hi[0]; d += win.step[0])
      for (I h = win.lo[1]; h < win.hi[1]; h += win.step[1])
        for (I w = win.lo[2]; w < win.hi[2]; w += win.step[2]) {
          const A v = to_acc(x[d * s2 + h * s3 + w * s4]);
          half += (weight(v, xs, lam) / s) * (0.5 * static_cast<double>(v));
        }
    y = 2 * half;
  }
  st->y = static_cast<A>(y);
}

// x*, S and y of one window; x points at (n, c, 0, 0, 0).
template <typename T, typename I>
NPOOL_FN Stats<typename Accumulator<T>::type> window_stats(const Args& a, const T* x,
                                                         const Window<I>& win,
                                                         typename Accumulator<T>::type lam) {
  using A = typename Accumulator<T>::type;
  const I s2 = static_cast<I>(a.x_strides[2]), s3 = static_cast<I>(a.x_strides[3]),
          s4 = static_cast<I>(a.x_strides[4]);
  A m = -infinity<A>(), xm = 0;
  bool any_nan = false;
  for (I d = win.lo[0]; d < win.hi[0]; d += win.step[0])
    for (I h = win.lo[1]; h < win.hi[1]; h += win.step[1])
      for (I w = win.lo[2]; w < win.hi[2]; w += win.step[2]) {
        const A v = to_acc(x[d * s2 + h * s3 + w * s4]);
        const A z = lam != A(0) ? lam * v : A(0);  // lam = 0: average, infinite cells included
        any_nan |= z != z;
        if (z > m) { m = z; xm = v; }
      }
  Stats<A> st;
  if (!any_nan && is_finite(m)) {
    window_sums<T, I>(a, x, win, &st, xm, lam);  // relative to x*: y stays in the window's range
    if (is_finite(st.y)) return st;
  }
  careful_window<T, I>(a, x, win, &st, lam);
  return st;
}

// q = sum_i e_i (x_i - y)^2 of one window (dL/dlam = g q / S); cells of zero weight or equal
// to y (the infinite ones that take the weight) add nothing.
template <typename T, typename I>
NPOOL_FN typename Accumulator<T>::type window_spread(
    const Args& a, const T* x, const Window<I>& win, typename Accumulator<T>::type lam,
    const Stats<typename Accumulator<T>::type>& st) {
  using A = typename Accumulator<T>::type;
  const I s2 = static_cast<I>(a.x_strides[2]), s3 = static_cast<I>(a.x_strides[3]),
          s4 = static_cast<I>(a.x_strides[4]);
  A q = 0;
  for (I d = win.lo[0]; d < win.hi[0]; d += win.step[0])
    for (I h = win.lo[1]; h < win.hi[1]; h += win.step[1])
      for (I w = win.lo[2]; w < win.hi[2]; w += win.step[2]) {
        const A v = to_acc(x[d * s2 + h * s3 + w * s4]);
        const A e = weight(v, st.xs, lam);
        if (e != A(0) && v != st.y) {
          const double d = static_cast<double>(v) - static_cast<double>(st.y);
          q += static_cast<A>(e * d * d);
        }
      }
  return q;
}

template <typename T, typename I>
NPOOL_FN void store_grad_lam(const Args& a, const Position<I>& p, typename Accumulator<T>::type value) {
  if (!a.grad_lam) return;
  const int64_t* s = a.glam_strides;
  static_cast<typename Accumulator<T>::type*>(a.grad_lam)[
      p.n * s[0] + p.c * s[1] + p.s[0] * s[2] + p.s[1] * s[3] + p.s[2] * s[4]] = value;
}

template <typename T, typename I> NPOOL_FN void forward_item(const Args& a, int64_t t) {
  const Position<I> p = work_position<I>(a, t);
  const T* x = static_cast<const T*>(a.x) + offset<I>(a.x_strides, p.n, p.c, 0, 0, 0);
  const auto lam = temperature<T, I>(a, p.n, p.c, p.s[0], p.s[1], p.s[2]);
  const auto st = window_stats<T, I>(a, x, window_of<I>(a, p.s), lam);
  static_cast<T*>(a.out)[offset<I>(a.out_strides, p.n, p.c, p.s[0], p.s[1], p.s[2])] =
      from_acc<T>(st.y);
}

template <typename T, typename I> NPOOL_FN void backward_disjoint_item(const Args& a, int64_t t) {
  using A = typename Accumulator<T>::type;
  const Position<I> p = work_position<I>(a, t);
  const T* x = static_cast<const T*>(a.x) + offset<I>(a.x_strides, p.n, p.c, 0, 0, 0);
  T* gx = static_cast<T*>(a.out) + offset<I>(a.out_strides, p.n, p.c, 0, 0, 0);
  const Window<I> win = window_of<I>(a, p.s);
  const A lam = temperature<T, I>(a, p.n, p.c, p.s[0], p.s[1], p.s[2]);
  const auto st = window_stats<T, I>(a, x, win, lam);
  const A g = to_acc(static_cast<const T*>(a.grad_out)[
      offset<I>(a.g_strides, p.n, p.c, p.s[0], p.s[1], p.s[2])]);
  const A coef = g / st.s;
  if (a.grad_lam) store_grad_lam<T, I>(a, p, g * window_spread<T, I>(a, x, win, lam, st) / st.s);
  // The cells this output owns: from its window's start (0 for the first) to the next window's
  // start (the edge for the last). They partition each axis.
  I own_lo[3], own_hi[3];
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    const I start = p.s[k] * static_cast<I>(a.stride[k]) - static_cast<I>(a.padding[k]);
    own_lo[k] = p.s[k] == 0 ? I(0) : start;
    own_hi[k] = p.s[k] == static_cast<I>(a.out_size[k]) - 1 ? static_cast<I>(a.size[2 + k])
                                                             : start + static_cast<I>(a.stride[k]);
  }
  const I xs2 = static_cast<I>(a.x_strides[2]), xs3 = static_cast<I>(a.x_strides[3]),
          xs4 = static_cast<I>(a.x_strides[4]);
  const I gs2 = static_cast<I>(a.out_strides[2]), gs3 = static_cast<I>(a.out_strides[3]),
          gs4 = static_cast<I>(a.out_strides[4]);
  for (I d = own_lo[0]; d < own_hi[0]; ++d)
    for (I h = own_lo[1]; h < own_hi[1]; ++h)
      for (I w = own_lo[2]; w < own_hi[2]; ++w) {
        const bool inside = d >= win.lo[0] && d < win.hi[0] && h >= win.lo[1] &&
                            h < win.hi[1] && w >= win.lo[2] && w < win.hi[2];
        A term = 0;
        if (inside) {
          const A v = to_acc(x[d * xs2 + h * xs3 + w * xs4]);
          term = gradient_term(v, st.xs, coef, st.y, lam);
        }
        gx[d * gs2 + h * gs3 + w * gs4] = from_acc<T>(term);
      }
}

template <typename T, typename I> NPOOL_FN void backward_stats_item(const Args& a, int64_t t) {
  using A = typename Accumulator<T>::type;
  const Position<I> p = work_position<I>(a, t);
  const T* x = static_cast<const T*>(a.x) + offset<I>(a.x_strides, p.n, p.c, 0, 0, 0);
  const Window<I> win = window_of<I>(a, p.s);
  const A lam = temperature<T, I>(a, p.n, p.c, p.s[0], p.s[1], p.s[2]);
  const auto st = window_stats<T, I>(a, x, win, lam);
  const A g = to_acc(static_cast<const T*>(a.grad_out)[
      offset<I>(a.g_strides, p.n, p.c, p.s[0], p.s[1], p.s[2])]);
  if (a.grad_lam) store_grad_lam<T, I>(a, p, g * window_spread<T, I>(a, x, win, lam, st) / st.s);
  A* stats = static_cast<A*>(a.stats);
  stats[t] = st.xs;
  stats[a.stats_stride + t] = g / st.s;
  stats[2 * a.stats_stride + t] = st.y;
}

// Whether the general path's window o along axis k holds cell i (one of first + j step).
template <typename I> NPOOL_FN bool holds(const Args& a, int k, I o, I i) {
  if (!a.window_first[k]) return true;  // regular windows: every candidate holds i
  const I rel = i - static_cast<I>(a.window_first[k][o]);
  const I step = static_cast<I>(a.dilation[k]);
  return rel >= 0 && rel % step == 0 && rel / step < static_cast<I>(a.window_count[k][o]);
}

template <typename T, typename I> NPOOL_FN void backward_gather_item(const Args& a, int64_t t) {
  using A = typename Accumulator<T>::type;
  const Position<I> p = work_position<I>(a, t);  // an input cell
  // The outputs whose windows hold this cell, per axis: o*s - pad <= i < o*s - pad + k (the
  // general path: the candidates of its tables, each checked with holds()).
  I lo[3], hi[3];
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    if (a.cover_lo[k]) {
      lo[k] = static_cast<I>(a.cover_lo[k][p.s[k]]);
      hi[k] = static_cast<I>(a.cover_hi[k][p.s[k]]);
      continue;
    }
    const I i_pad = p.s[k] + static_cast<I>(a.padding[k]);
    const I first = i_pad - static_cast<I>(a.kernel[k]) + 1;
    lo[k] = first <= 0 ? I(0) : divide(first + static_cast<I>(a.stride[k]) - 1, a.stride_div[k]);
    const I last = divide(i_pad, a.stride_div[k]);
    hi[k] = last < static_cast<I>(a.out_size[k]) ? last + 1 : static_cast<I>(a.out_size[k]);
  }
  const A v = to_acc(static_cast<const T*>(a.x)[
      offset<I>(a.x_strides, p.n, p.c, p.s[0], p.s[1], p.s[2])]);
  const A* stats = static_cast<const A*>(a.stats);
  const int64_t outputs = a.stats_stride;
  A sum = 0;
  for (I od = lo[0]; od < hi[0]; ++od) {
    if (!holds<I>(a, 0, od, p.s[0])) continue;
    for (I oh = lo[1]; oh < hi[1]; ++oh) {
      if (!holds<I>(a, 1, oh, p.s[1])) continue;
      for (I ow = lo[2]; ow < hi[2]; ++ow) {
        if (!holds<I>(a, 2, ow, p.s[2])) continue;
        const int64_t o = output_item<I>(a, p.n, p.c, od, oh, ow);
        const A lam = temperature<T, I>(a, p.n, p.c, od, oh, ow);
        sum += gradient_term(v, stats[o], stats[outputs + o], stats[2 * outputs + o], lam);
      }
    }
  }
  static_cast<T*>(a.out)[offset<I>(a.out_strides, p.n, p.c, p.s[0], p.s[1], p.s[2])] =
      from_acc<T>(sum);
}

}  // namespace windowed_softmax
}  // namespace npool

// npool_windowed_softmax_<pass>_<f16|bf16|f32|f64>_<i32|i64>
#define NPOOL_WINDOWED_SOFTMAX_KERNELS(T, tname, I, iname)                                   \
  NPOOL_KERNEL(npool_windowed_softmax_forward_##tname##_##iname,                             \
               npool::windowed_softmax::Args, (npool::windowed_softmax::forward_item<T, I>)) \
  NPOOL_KERNEL(npool_windowed_softmax_backward_disjoint_##tname##_##iname,                   \
               npool::windowed_softmax::Args,                                                \
               (npool::windowed_softmax::backward_disjoint_item<T, I>))                      \
  NPOOL_KERNEL(npool_windowed_softmax_backward_stats_##tname##_##iname,                      \
               npool::windowed_softmax::Args,                                                \
               (npool::windowed_softmax::backward_stats_item<T, I>))                         \
  NPOOL_KERNEL(npool_windowed_softmax_backward_gather_##tname##_##iname,                     \
               npool::windowed_softmax::Args,                                                \
               (npool::windowed_softmax::backward_gather_item<T, I>))

NPOOL_WINDOWED_SOFTMAX_KERNELS(__half, f16, int32_t, i32)
NPOOL_WINDOWED_SOFTMAX_KERNELS(__half, f16, int64_t, i64)
NPOOL_WINDOWED_SOFTMAX_KERNELS(__nv_bfloat16, bf16, int32_t, i32)
NPOOL_WINDOWED_SOFTMAX_KERNELS(__nv_bfloat16, bf16, int64_t, i64)
NPOOL_WINDOWED_SOFTMAX_KERNELS(float, f32, int32_t, i32)
NPOOL_WINDOWED_SOFTMAX_KERNELS(float, f32, int64_t, i64)
NPOOL_WINDOWED_SOFTMAX_KERNELS(double, f64, int32_t, i32)
NPOOL_WINDOWED_SOFTMAX_KERNELS(double, f64, int64_t, i64)

#ifdef NPOOL_HOST_EMULATION
NPOOL_EXPORT_LAYOUT(npool_windowed_softmax_args_layout, npool::windowed_softmax::Args,
                    NPOOL_OFFSET(A, x), NPOOL_OFFSET(A, grad_out), NPOOL_OFFSET(A, out),
                    NPOOL_OFFSET(A, stats), NPOOL_OFFSET(A, stats_stride), NPOOL_OFFSET(A, count),
                    NPOOL_OFFSET(A, channels_last), NPOOL_OFFSET(A, lam),
                    NPOOL_OFFSET(A, lam_values), NPOOL_OFFSET(A, grad_lam),
                    NPOOL_OFFSET(A, lam_strides), NPOOL_OFFSET(A, glam_strides),
                    NPOOL_OFFSET(A, size), NPOOL_OFFSET(A, out_size), NPOOL_OFFSET(A, kernel),
                    NPOOL_OFFSET(A, stride), NPOOL_OFFSET(A, padding), NPOOL_OFFSET(A, x_strides),
                    NPOOL_OFFSET(A, out_strides), NPOOL_OFFSET(A, g_strides),
                    NPOOL_OFFSET(A, work), NPOOL_OFFSET(A, stride_div),
                    NPOOL_OFFSET(A, dilation), NPOOL_OFFSET(A, window_first),
                    NPOOL_OFFSET(A, window_count), NPOOL_OFFSET(A, cover_lo),
                    NPOOL_OFFSET(A, cover_hi))
#endif
