/* Vectorised lines of the windowed-softmax pool (SoftPool, Max-Entropy pooling): the fast path
 * of _windowed_softmax.pyx for windows of a few cells.
 *
 * A line is ``n`` outputs whose windows have the same cells (``offsets`` from the window's
 * first cell) and start ``step`` elements apart in x: a channels-last line runs over channels
 * (step 1), a row over output columns (step = stride). The generic kernel stages the cells of
 * a block of outputs in a buffer and keeps its sums in arrays; here each vector of LANES
 * outputs (16 float32 with AVX-512) loads its K cells straight from x into registers - stride-2
 * rows through even/odd shuffles - and does the whole window there: for each output,
 *
 *     z_i = lam x_i,  M = max z_i,  x* = x of the first cell with z = M,  e_i = exp(z_i - M),
 *     S = sum e_i,  y = x* + sum e_i (x_i - x*) / S                          (forward)
 *     dL/dx_i = (g / S) e_i (1 + lam (x_i - y)),  dL/dlam = g sum e_i (x_i - y)^2 / S  (backward)
 *
 * with the generic kernel's operations in its order (cells in window order, no contraction,
 * the exp of _fastexp.h), so both give the same bits. SoftPool (lam = 1) skips the multiply.
 *
 * A line kernel returns how many outputs it did, from the first; the generic kernel does the
 * rest: lines it does not serve (other window sizes, steps of lam), and the outputs from a
 * vector with a non-finite window on (NaN, +-inf, overflow: the generic
 * kernel redoes them with the exact limits). A line ends with a vector that overlaps the one
 * before it: a forward or disjoint backward writes the overlapped outputs again, unchanged; an
 * adding line adds only the new outputs' terms (the other lanes keep their cells' values). A
 * line shorter than a vector (an edge output, a short row, a few channels) is one vector read
 * and written lane by lane, its spare lanes copies of its last output.
 *
 * Adding lines add each vector's terms so that a cell that overlapping windows share receives
 * their terms in output order, as the generic kernel and the gather pass add them: the later
 * window holds it at an earlier column of the window, so the columns go from the last. Rows of
 * 2 or 3 cells of stride-1 lines and of 3 cells of stride-2 lines, whose windows overlap
 * along the row, are added a row segment at a time in registers (the terms of each column
 * moved to their cells' lanes): a read-modify-write per cell would read what the one before
 * it is still storing.
 */
#ifndef NPOOL_SOFTMAX_LINES_H
#define NPOOL_SOFTMAX_LINES_H

#include <math.h>
#include <stddef.h>
#include "_fastexp.h"
#include "_simd.h"

/* The line modes, as _windowed_softmax.pyx numbers them. */
#define NPOOL_LINE_FORWARD 0   /* write y */
#define NPOOL_LINE_DISJOINT 1  /* write dL/dx: every cell lies in one window */
#define NPOOL_LINE_STATS 2     /* the gather pass's statistics: not served here */
#define NPOOL_LINE_ADD 3       /* add to dL/dx: the windows of the line do not overlap */
#define NPOOL_LINE_ADD_ORDERED 4  /* add to dL/dx, windows overlapping: terms in output order */
#define NPOOL_LINE_MAX_CELLS 9

/* Off: every line goes to the generic kernel (the tests compare the two paths). */
static int npool_vector_lines_on = 1;

#if NPOOL_SIMD

#define R float
#define V npool_vf32
#define LANES NPOOL_LANES_F32
#define SFX f32
#include "_softmax_lines.inc"  /* which undefines its parameters */

#define R double
#define V npool_vf64
#define LANES NPOOL_LANES_F64
#define SFX f64
#include "_softmax_lines.inc"  /* which undefines its parameters */

#else  /* no vector extensions: every line is the generic kernel's */

static ptrdiff_t npool_softmax_line_f32(int mode, const float* x, ptrdiff_t step,
        const ptrdiff_t* offsets, ptrdiff_t ncell, ptrdiff_t n, const float* lam,
        ptrdiff_t lam_step, float* y, ptrdiff_t ystep, const float* g, ptrdiff_t gstep,
        float* gx, float* glam, ptrdiff_t glam_step) { return 0; }
static ptrdiff_t npool_softmax_line_f64(int mode, const double* x, ptrdiff_t step,
        const ptrdiff_t* offsets, ptrdiff_t ncell, ptrdiff_t n, const double* lam,
        ptrdiff_t lam_step, double* y, ptrdiff_t ystep, const double* g, ptrdiff_t gstep,
        double* gx, double* glam, ptrdiff_t glam_step) { return 0; }

#endif
#endif
