# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The windowed-softmax pooling kernel: SoftPool (lam = 1) and Max-Entropy pooling.

For every sample and channel, output ``o`` pools the real (unpadded) cells ``R(o)`` of its window::

    z_i = lam * x_i,   M_o = max_{i in R(o)} z_i,   e_{o,i} = exp(z_i - M_o),   S_o = sum_i e_{o,i}
    y_o = sum_i e_{o,i} x_i / S_o  (computed as x* + sum_i e_{o,i} (x_i - x*) / S_o, with x* the
                                    x of the cell where z is largest, so y_o never leaves
                                    [min x, max x] through rounding)
    dL/dx_i = sum_{o : i in R(o)} (g_o / S_o) e_{o,i} (1 + lam (x_i - y_o))

Arrays are seen as 5-D ``(N, C, D, H, W)`` with arbitrary element strides (1-D and 2-D pools
insert size-1 axes). Work is cut into *lines*: runs of outputs whose windows have the same shape
and sit a constant stride apart, so the innermost loops run over the outputs of a line and
vectorise. A C-contiguous array is cut along W (one line per output row), a channels-last one
along C (one line per output position, channels innermost). Lines are independent, so the
parallel loop runs over units of a few lines of one plane and every value is computed by one
thread in a fixed order: the results do not depend on the thread count, and both layouts give
the same bits.

Each line goes first to the vector lines of ``_softmax_lines.h`` (windows of 2 to 9 cells: a
vector of outputs at a time in registers), which return how many outputs they did; the generic
``_pool_line`` here does the rest (other window sizes, a lam that varies along a line other
than one per channel, the windows with non-finite values). Both do the same operations in the
same order: the same bits, whichever path and whichever build (baseline, x86-64-v3,
x86-64-v4) runs.

Windows whose ``z`` holds NaN or an infinity (seen as a non-finite M or y: NaN or infinite
cells, ``lam * x`` overflowing, or a weighted sum overflowing near the float maximum) are redone
by ``_careful_window``, which works from x* (the cell of the largest ``lam * x``, found by
comparing x) so that nothing overflows, and gives the mathematical limits: NaN wins; +inf cells
share the whole weight; -inf cells weigh nothing; a window of only -inf gives -inf.

The backward has three forms, all deterministic without atomics. Disjoint windows (stride >=
kernel on every axis) write each gradient cell once, straight from the window that owns it.
Overlapping windows either add their terms into the gradient, one thread per plane running its
lines in output order, or — when there are too few planes to keep the threads busy — store
per-output statistics (x*, g/S, y), then gather, for each input cell, the terms of every window
that covers it in output order. The two give the same bits.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY, exp

from _fastexp cimport double_bits, exp_nonpositive, float_bits
from _kernel_checks cimport dims, require, same_strides

cdef enum:
    BLOCK = 64  # outputs per vectorised block: the scratch arrays of a block stay in L1
LINE_BLOCK = BLOCK  # for the Python side, which counts the channel blocks of a plane


# The distance between the windows of a line, as a type: unit and step-2 lines get their own
# compiled copy of the line kernel with a constant step, which the compiler turns into vector
# loads and shuffles; other steps use the generic copy, with the step carried in the value.
ctypedef fused LineStep:
    signed char   # step 1 (channels-last lines, stride-1 rows)
    short         # step 2 (stride-2 rows)
    Py_ssize_t    # any other step


# Whether the temperature is the same for every output of a line (SoftPool, and lam per channel
# or per sample on rows) or varies along it: the uniform copy multiplies by a scalar.
ctypedef fused LamKind:
    char    # uniform along the line
    int     # one per output


cdef inline floating _lam_at(LamKind kind, const floating* lv, floating lam0,
                             Py_ssize_t j) noexcept nogil:
    if LamKind is char:
        return lam0
    else:
        return lv[j]


cdef inline Py_ssize_t _step_of(LineStep step) noexcept nogil:
    if LineStep is "signed char":
        return 1
    elif LineStep is short:
        return 2
    else:
        return step


cdef enum Mode:
    FORWARD = 0            # write y
    BACKWARD_DISJOINT = 1  # write grad_x directly: every input cell lies in at most one window
    BACKWARD_STATS = 2     # write x*, g/S and y of every output for the gather pass
    BACKWARD_ADD = 3       # add to grad_x; the windows of one line do not overlap each other
    BACKWARD_ADD_ORDERED = 4  # add to grad_x output after output: windows of a line overlap


cdef struct Geometry:
    Py_ssize_t size[5]        # N, C, D, H, W of x (and grad_x)
    Py_ssize_t out_size[3]    # OD, OH, OW
    Py_ssize_t kernel[3]
    Py_ssize_t stride[3]
    Py_ssize_t padding[3]
    Py_ssize_t x_strides[5]   # element strides of x and grad_x
    Py_ssize_t y_strides[5]   # element strides of y (forward) or of each statistics array
    Py_ssize_t g_strides[5]   # element strides of grad_out
    Py_ssize_t lam_strides[5]   # element strides of lam, broadcast to the output (0: shared)
    Py_ssize_t glam_strides[5]  # element strides of dL/dlam per output
    Py_ssize_t stats_plane    # distance between the x*, g/S and y statistics arrays
    # The general path (dilated or adaptive windows): per spatial axis, the step between a
    # window's cells and tables of each output's first real cell and count of real cells
    # (NULL: the regular windows [o s - padding, o s - padding + kernel), step 1)
    Py_ssize_t dilation[3]
    const Py_ssize_t* window_first[3]
    const Py_ssize_t* window_count[3]


cdef inline bint _is_nonfinite(floating z) noexcept nogil:
    """Bit test for NaN and +-inf that holds whatever the floating-point flags."""
    cdef float_bits fb
    cdef double_bits db
    if floating is float:
        fb.f = z
        return (fb.i & 0x7F800000) == 0x7F800000
    else:
        db.f = z
        return (db.i & 0x7FF0000000000000LL) == 0x7FF0000000000000LL


cdef inline double _scaled_difference(double lam, double v, double w) noexcept nogil:
    """lam (v - w) for finite v and w, without overflow in v - w (halved when that would
    overflow: only float64 cells beyond 9e307 need it)."""
    cdef double d = v - w
    if d - d == 0:
        return lam * d
    return 2 * (lam * (0.5 * v - 0.5 * w))


cdef inline floating _weight(floating v, floating xstar, floating lam) noexcept nogil:
    """exp(lam (v - x*)), with x* the window's reference cell (its largest lam x).

    While lam v and lam x* are finite this is the fast path's exp(lam v - lam x*), bit for bit
    (the gather pass of the backward relies on it). Otherwise the limits: NaN wins; lam = 0
    weighs every cell 1; the cells equal to an infinite x* share the weight and the others get
    none; an infinite v that is not x* weighs 0; and when lam x overflows for finite cells,
    lam (v - x*) is taken without overflow.
    """
    cdef floating z, m
    if v != v or xstar != xstar:
        return v + xstar  # NaN
    if lam == 0 or v == xstar:
        return 1
    z = lam * v
    m = lam * xstar
    if not _is_nonfinite(z) and not _is_nonfinite(m):
        return exp_nonpositive(z - m)
    if _is_nonfinite(v) or _is_nonfinite(xstar):
        return 0
    return <floating>exp(min(_scaled_difference(lam, v, xstar), 0.0))


cdef inline floating _gradient_term(floating x, floating xstar, floating a, floating y,
                                    floating lam) noexcept nogil:
    """a * e * (1 + lam (x - y)): the share of dL/dx of one cell from one window (a = g / S,
    e its weight). The fast path's arithmetic while lam (x - y) is finite; otherwise (float32
    cells of opposite signs near the float32 maximum with a tiny lam) in float64 without
    overflow."""
    cdef floating e = _weight(x, xstar, lam)
    cdef floating r
    if e == 0:
        return 0
    if lam == 0 or x == y:  # x == y also covers the infinite cells that take the whole weight
        return a * e
    r = lam * (x - y)
    if not _is_nonfinite(r) or _is_nonfinite(x) or _is_nonfinite(y):
        return a * e * (<floating>1 + r)
    return <floating>(<double>a * e * (1 + _scaled_difference(lam, x, y)))


cdef void _careful_window(const floating* x, const Py_ssize_t* offsets, Py_ssize_t ncell,
                                 floating lam, floating* xstar_out, floating* s_out,
                                 floating* y_out) noexcept nogil:
    """x*, S and y of one window the fast path could not do: NaN or an infinity in lam x, or
    an overflow (lam x, or the weighted sum). Scalar, in float64, with exact limits.

    x* is found by comparing x itself (in lam's direction), so lam x may overflow; the weights
    are ``_weight``'s; y = x* + sum_i (e_i / S) (x_i - x*) is accumulated halved,
    ``2 (x*/2 + sum_i w_i (x_i/2 - x*/2))``, so that neither the differences nor their sum
    overflow (a window of equal values still gives exactly that value).
    """
    cdef Py_ssize_t c
    cdef floating v, xs = x[offsets[0]]
    cdef double s = 0, h = 0, e, y
    for c in range(ncell):
        v = x[offsets[c]]
        if v != v:
            xs = v
            break
        if (lam > 0 and v > xs) or (lam < 0 and v < xs):
            xs = v
    for c in range(ncell):
        s = s + _weight(x[offsets[c]], xs, lam)
    xstar_out[0] = xs
    s_out[0] = <floating>s
    if xs != xs or (_is_nonfinite(xs) and lam != 0):
        y_out[0] = xs  # NaN wins; an infinite x* takes the whole weight
        return
    for c in range(ncell):
        v = x[offsets[c]]
        e = _weight(v, xs, lam)
        if e != 0 and v != xs:
            h = h + (e / s) * (0.5 * <double>v - 0.5 * <double>xs)
    y = 2 * (0.5 * <double>xs + h)
    if y - y != 0:  # infinite cells averaged (lam = 0): the plain weighted mean, halved
        h = 0
        for c in range(ncell):
            v = x[offsets[c]]
            h = h + (_weight(v, xs, lam) / s) * (0.5 * <double>v)
        y = 2 * h
    y_out[0] = <floating>y


cdef inline void _temperature_gradient(
        const floating* xj, Py_ssize_t xstep, const Py_ssize_t* offsets, Py_ssize_t ncell,
        Py_ssize_t n, const floating* values, const floating* weights, const floating* lv,
        const floating* xstar, const floating* s, const floating* y, const bint* bad,
        bint any_bad, floating* q) noexcept nogil:
    """q_j = sum_i e_i (x_i - y_j)^2 of the n windows of a chunk (so dL/dlam_j = g_j q_j / S_j),
    from the cell values and weights in the buffer; windows with non-finite values are redone
    with the limits (cells of zero weight, or equal to y, add nothing)."""
    cdef Py_ssize_t c, j
    cdef floating d, v, e
    for j in range(n):
        q[j] = 0
    for c in range(ncell):
        for j in range(n):
            d = values[c * n + j] - y[j]
            q[j] = q[j] + weights[c * n + j] * d * d
    if any_bad:
        for j in range(n):
            if bad[j]:
                q[j] = 0
                for c in range(ncell):
                    v = xj[j * xstep + offsets[c]]
                    e = _weight(v, xstar[j], lv[j])
                    if e != 0 and v != y[j]:
                        q[j] = q[j] + <floating>(e * (<double>v - y[j]) * (<double>v - y[j]))


cdef inline void _pool_line(
        Mode mode, const floating* x, LineStep line_step, const Py_ssize_t* offsets,
        Py_ssize_t ncell, Py_ssize_t length, const floating* lam, Py_ssize_t lam_step,
        LamKind kind, floating* y, Py_ssize_t ystep, Py_ssize_t stats_plane,
        const floating* g, Py_ssize_t gstep, floating* gx, floating* glam,
        Py_ssize_t glam_step, floating* buffer, Py_ssize_t buffer_size) noexcept nogil:
    """Pool ``length`` (<= BLOCK) outputs whose windows start ``line_step`` apart in x.

    ``offsets[:ncell]`` are the offsets of the window's real cells from the window's first real
    cell, in (d, h, w) order; ``gx`` has the strides of ``x``. The cells of a chunk of outputs
    are first copied to the first half of ``buffer`` (cell-major, output-minor) and their
    weights exp(z - M) kept in the second half, so the arithmetic runs on unit-stride data
    whatever the step; each half holds at least ``ncell`` values. Output j has temperature
    ``lam[j * lam_step]``; when ``glam`` is given, the backward also writes dL/dlam of output j,
    g_j * sum_i w_i (x_i - y_j)^2, to ``glam[j * glam_step]``.
    """
    cdef floating lv[BLOCK]
    cdef floating q[BLOCK]
    cdef floating m[BLOCK]
    cdef floating s[BLOCK]
    cdef floating t[BLOCK]
    cdef floating xm[BLOCK]
    cdef bint bad[BLOCK]
    cdef bint any_bad
    cdef const floating* xj
    cdef const floating* xc
    cdef floating* bc
    cdef floating* wc
    cdef floating* gxc
    cdef floating z, v, e
    cdef Py_ssize_t j, c, j0, n
    cdef Py_ssize_t xstep = _step_of(line_step)
    cdef Py_ssize_t capacity = buffer_size // 2
    cdef floating* weights = buffer + capacity
    cdef Py_ssize_t chunk = min(length, max(<Py_ssize_t>1, capacity // ncell))
    cdef floating lam0 = lam[0]

    j0 = 0
    while j0 < length:
        n = min(chunk, length - j0)
        xj = x + j0 * xstep
        for j in range(n):
            lv[j] = lam[(j0 + j) * lam_step]
        # Copy the cells to the buffer; take the window maxima M of z = lam * x and the x of
        # the (first) cell where z is largest.
        for j in range(n):
            m[j] = -INFINITY
            xm[j] = 0
        c = 0
        while c < ncell:
            xc = xj + offsets[c]
            bc = buffer + c * n
            if LineStep is short and c + 1 < ncell and offsets[c + 1] == offsets[c] + 1:
                # Two neighbouring cells of a stride-2 row: one gapless, vectorisable read.
                for j in range(n):
                    v = xc[j * 2]
                    bc[j] = v
                    z = _lam_at(kind, lv, lam0, j) * v
                    xm[j] = v if z > m[j] else xm[j]
                    m[j] = z if z > m[j] else m[j]
                    v = xc[j * 2 + 1]
                    bc[j + n] = v
                    z = _lam_at(kind, lv, lam0, j) * v
                    xm[j] = v if z > m[j] else xm[j]
                    m[j] = z if z > m[j] else m[j]
                c += 2
                continue
            for j in range(n):
                v = xc[j * xstep]
                bc[j] = v
                z = _lam_at(kind, lv, lam0, j) * v
                xm[j] = v if z > m[j] else xm[j]
                m[j] = z if z > m[j] else m[j]
            c += 1

        # S and y = xm + sum e (x - xm) / S: taken relative to xm, y stays within the window's
        # range after rounding. A non-finite z anywhere in a window (NaN, +-inf, or lam * x
        # overflowing) leaves a non-finite M or y (a -inf cell adds 0 * -inf): such windows
        # are redone carefully, as on the GPU.
        for j in range(n):
            s[j] = 0
            t[j] = 0
        for c in range(ncell):
            bc = buffer + c * n
            wc = weights + c * n
            for j in range(n):
                v = bc[j]
                e = exp_nonpositive(_lam_at(kind, lv, lam0, j) * v - m[j])
                wc[j] = e
                s[j] = s[j] + e
                t[j] = t[j] + e * (v - xm[j])
        any_bad = False
        for j in range(n):
            t[j] = xm[j] + t[j] / s[j]  # t holds y from here on
            bad[j] = _is_nonfinite(m[j]) | _is_nonfinite(t[j])
            any_bad = any_bad | bad[j]
        if any_bad:
            for j in range(n):
                if bad[j]:
                    _careful_window(xj + j * xstep, offsets, ncell, lv[j], &xm[j], &s[j],
                                    &t[j])

        if mode == FORWARD:
            for j in range(n):
                y[(j0 + j) * ystep] = t[j]
            j0 += n
            continue

        if glam != NULL:
            _temperature_gradient(xj, xstep, offsets, ncell, n, buffer, weights, lv, xm, s, t,
                                  bad, any_bad, q)
            for j in range(n):
                glam[(j0 + j) * glam_step] = g[(j0 + j) * gstep] * q[j] / s[j]
        for j in range(n):
            s[j] = g[(j0 + j) * gstep] / s[j]  # s holds a = g / S from here on
        if mode == BACKWARD_STATS:
            for j in range(n):
                y[(j0 + j) * ystep] = xm[j]
                y[(j0 + j) * ystep + stats_plane] = s[j]
                y[(j0 + j) * ystep + 2 * stats_plane] = t[j]
            j0 += n
            continue

        # The gradient terms of every cell of these windows.
        for c in range(ncell):
            bc = buffer + c * n
            wc = weights + c * n
            for j in range(n):
                bc[j] = s[j] * wc[j] * (<floating>1 + _lam_at(kind, lv, lam0, j) * (bc[j] - t[j]))
        if any_bad:
            for j in range(n):
                if bad[j]:
                    for c in range(ncell):
                        v = xj[j * xstep + offsets[c]]
                        buffer[c * n + j] = _gradient_term(v, xm[j], s[j], t[j], lv[j])
        if mode == BACKWARD_DISJOINT or mode == BACKWARD_ADD:
            c = 0
            while c < ncell:
                gxc = gx + j0 * xstep + offsets[c]
                bc = buffer + c * n
                if LineStep is short and c + 1 < ncell and offsets[c + 1] == offsets[c] + 1:
                    # Two neighbouring cells of a stride-2 row: one gapless, vectorisable write.
                    if mode == BACKWARD_DISJOINT:
                        for j in range(n):
                            gxc[j * 2] = bc[j]
                            gxc[j * 2 + 1] = bc[j + n]
                    else:
                        for j in range(n):
                            gxc[j * 2] += bc[j]
                            gxc[j * 2 + 1] += bc[j + n]
                    c += 2
                    continue
                if mode == BACKWARD_DISJOINT:
                    for j in range(n):
                        gxc[j * xstep] = bc[j]
                else:
                    for j in range(n):
                        gxc[j * xstep] += bc[j]
                c += 1
        else:
            # Each cell receives its terms in output order, as the gather pass adds them.
            for j in range(n):
                for c in range(ncell):
                    gx[(j0 + j) * xstep + offsets[c]] += buffer[c * n + j]
        j0 += n


cdef extern from "_softmax_lines.h" nogil:
    int npool_vector_lines_on
    Py_ssize_t npool_softmax_line_f32(
        int mode, const float* x, Py_ssize_t step, const Py_ssize_t* offsets, Py_ssize_t ncell,
        Py_ssize_t n, const float* lam, Py_ssize_t lam_step, float* y, Py_ssize_t ystep,
        const float* g, Py_ssize_t gstep, float* gx, float* glam, Py_ssize_t glam_step)
    Py_ssize_t npool_softmax_line_f64(
        int mode, const double* x, Py_ssize_t step, const Py_ssize_t* offsets,
        Py_ssize_t ncell, Py_ssize_t n, const double* lam, Py_ssize_t lam_step, double* y,
        Py_ssize_t ystep, const double* g, Py_ssize_t gstep, double* gx, double* glam,
        Py_ssize_t glam_step)


def use_vector_lines(bint on):
    """Whether lines of a few cells per window take the vectorised path of _softmax_lines.h
    (the default) or the generic kernel: the two give the same bits, which the tests check."""
    global npool_vector_lines_on
    npool_vector_lines_on = on


cdef inline void _pool_line_dispatch(
        Mode mode, const floating* x, Py_ssize_t xstep, const Py_ssize_t* offsets,
        Py_ssize_t ncell, Py_ssize_t length, const floating* lam, Py_ssize_t lam_step,
        floating* y, Py_ssize_t ystep, Py_ssize_t stats_plane,
        const floating* g, Py_ssize_t gstep, floating* gx, floating* glam,
        Py_ssize_t glam_step, floating* buffer, Py_ssize_t buffer_size) noexcept nogil:
    """Pool a line: as many of its outputs as the vectorised lines do (from the first), then
    the rest with the generic kernel, its copy for the line's step and kind of lam."""
    cdef Py_ssize_t done
    if floating is float:
        done = npool_softmax_line_f32(mode, x, xstep, offsets, ncell, length, lam, lam_step,
                                      y, ystep, g, gstep, gx, glam, glam_step)
    else:
        done = npool_softmax_line_f64(mode, x, xstep, offsets, ncell, length, lam, lam_step,
                                      y, ystep, g, gstep, gx, glam, glam_step)
    if done == length:
        return
    if done > 0:
        x = x + done * xstep
        lam = lam + done * lam_step
        length = length - done
        if y != NULL:
            y = y + done * ystep
        if g != NULL:
            g = g + done * gstep
        if gx != NULL:
            gx = gx + done * xstep
        if glam != NULL:
            glam = glam + done * glam_step
    if lam_step == 0:
        if xstep == 1:
            _pool_line(mode, x, <signed char>1, offsets, ncell, length, lam, lam_step, <char>0,
                       y, ystep, stats_plane, g, gstep, gx, glam, glam_step, buffer,
                       buffer_size)
        elif xstep == 2:
            _pool_line(mode, x, <short>2, offsets, ncell, length, lam, lam_step, <char>0, y,
                       ystep, stats_plane, g, gstep, gx, glam, glam_step, buffer, buffer_size)
        else:
            _pool_line(mode, x, xstep, offsets, ncell, length, lam, lam_step, <char>0, y,
                       ystep, stats_plane, g, gstep, gx, glam, glam_step, buffer, buffer_size)
    elif xstep == 1:
        _pool_line(mode, x, <signed char>1, offsets, ncell, length, lam, lam_step, <int>0, y,
                   ystep, stats_plane, g, gstep, gx, glam, glam_step, buffer, buffer_size)
    elif xstep == 2:
        _pool_line(mode, x, <short>2, offsets, ncell, length, lam, lam_step, <int>0, y, ystep,
                   stats_plane, g, gstep, gx, glam, glam_step, buffer, buffer_size)
    else:
        _pool_line(mode, x, xstep, offsets, ncell, length, lam, lam_step, <int>0, y, ystep,
                   stats_plane, g, gstep, gx, glam, glam_step, buffer, buffer_size)


cdef inline void _axis_window(const Geometry* geo, int axis, Py_ssize_t o,
                              Py_ssize_t* lo, Py_ssize_t* count) noexcept nogil:
    """First real cell and number of real cells of output o's window along spatial axis 0..2
    (its cells ``geo.dilation[axis]`` apart)."""
    if geo.window_first[axis] != NULL:
        lo[0] = geo.window_first[axis][o]
        count[0] = geo.window_count[axis][o]
        return
    cdef Py_ssize_t start = o * geo.stride[axis] - geo.padding[axis]
    cdef Py_ssize_t stop = start + geo.kernel[axis]
    if start < 0:
        start = 0
    if stop > geo.size[2 + axis]:
        stop = geo.size[2 + axis]
    lo[0] = start
    count[0] = stop - start


cdef inline Py_ssize_t _output_offset(const Py_ssize_t* strides, Py_ssize_t n, Py_ssize_t c,
                                      Py_ssize_t od, Py_ssize_t oh,
                                      Py_ssize_t ow) noexcept nogil:
    return (n * strides[0] + c * strides[1] + od * strides[2] + oh * strides[3]
            + ow * strides[4])


cdef inline Py_ssize_t _window_offsets(const Geometry* geo, Py_ssize_t nd, Py_ssize_t nh,
                                       Py_ssize_t nw, Py_ssize_t* offsets) noexcept nogil:
    cdef Py_ssize_t a, b, c, n = 0
    for a in range(nd):
        for b in range(nh):
            for c in range(nw):
                offsets[n] = (a * geo.dilation[0] * geo.x_strides[2]
                              + b * geo.dilation[1] * geo.x_strides[3]
                              + c * geo.dilation[2] * geo.x_strides[4])
                n += 1
    return n


cdef inline void _line_at(
        Mode mode, const Geometry* geo, const floating* x, const floating* lam, floating* y,
        const floating* g, floating* gx, floating* glam, Py_ssize_t xoff, Py_ssize_t xstep,
        const Py_ssize_t* offsets, Py_ssize_t ncell, Py_ssize_t count, Py_ssize_t n,
        Py_ssize_t ch, Py_ssize_t od, Py_ssize_t oh, Py_ssize_t ow, int axis,
        floating* buffer, Py_ssize_t buffer_size) noexcept nogil:
    """Pool ``count`` outputs from output (n, ch, od, oh, ow) on along axis ``axis`` of the
    outputs (1: C, 3: H, 4: W), whose windows start at x[xoff], ``xstep`` apart, with their
    cells at ``offsets[:ncell]``."""
    _pool_line_dispatch(
        mode, x + xoff, xstep, offsets, ncell, count,
        lam + _output_offset(geo.lam_strides, n, ch, od, oh, ow), geo.lam_strides[axis],
        y + _output_offset(geo.y_strides, n, ch, od, oh, ow) if y != NULL else NULL,
        geo.y_strides[axis], geo.stats_plane,
        g + _output_offset(geo.g_strides, n, ch, od, oh, ow) if g != NULL else NULL,
        geo.g_strides[axis], gx + xoff if gx != NULL else NULL,
        glam + _output_offset(geo.glam_strides, n, ch, od, oh, ow) if glam != NULL else NULL,
        geo.glam_strides[axis], buffer, buffer_size)


cdef inline void _channels_last_unit(
        Mode mode, const Geometry* geo, const floating* x, const floating* lam, floating* y,
        const floating* g, floating* gx, floating* glam, Py_ssize_t unit, Py_ssize_t group,
        Py_ssize_t* offsets, floating* buffer, Py_ssize_t buffer_size) noexcept nogil:
    """Unit ``unit`` of the channels-last loop: output positions (n, od, oh, ow) for ``group``
    consecutive ow, channels [c0, c0 + BLOCK): a line per position, in ow order. Units are
    numbered in (n, od, oh, ow group, channel block) order, channel block fastest."""
    cdef Py_ssize_t n_cblocks = (geo.size[1] + BLOCK - 1) // BLOCK
    cdef Py_ssize_t n_groups = (geo.out_size[2] + group - 1) // group
    cdef Py_ssize_t rest, n, od, oh, ow, ow0, ow1, c0, xbase, ncell = 0
    cdef Py_ssize_t dlo = 0, hlo = 0, wlo = 0, nd = 0, nh = 0, nw = 0, cached_nw = -1
    c0 = (unit % n_cblocks) * BLOCK
    rest = unit // n_cblocks
    ow0 = (rest % n_groups) * group
    ow1 = min(ow0 + group, geo.out_size[2])
    rest = rest // n_groups
    oh = rest % geo.out_size[1]
    rest = rest // geo.out_size[1]
    od = rest % geo.out_size[0]
    n = rest // geo.out_size[0]
    _axis_window(geo, 0, od, &dlo, &nd)
    _axis_window(geo, 1, oh, &hlo, &nh)
    xbase = (n * geo.x_strides[0] + c0 * geo.x_strides[1] + dlo * geo.x_strides[2]
             + hlo * geo.x_strides[3])
    for ow in range(ow0, ow1):
        _axis_window(geo, 2, ow, &wlo, &nw)
        if nw != cached_nw:  # the cell offsets change only where padding cuts the window
            ncell = _window_offsets(geo, nd, nh, nw, offsets)
            cached_nw = nw
        _line_at(mode, geo, x, lam, y, g, gx, glam, xbase + wlo * geo.x_strides[4],
                 geo.x_strides[1], offsets, ncell, min(<Py_ssize_t>BLOCK, geo.size[1] - c0), n,
                 c0, od, oh, ow, 1, buffer, buffer_size)


cdef inline void _rows_unit(
        Mode mode, const Geometry* geo, const floating* x, const floating* lam, floating* y,
        const floating* g, floating* gx, floating* glam, Py_ssize_t unit, Py_ssize_t group,
        Py_ssize_t* offsets, floating* buffer, Py_ssize_t buffer_size) noexcept nogil:
    """Unit ``unit`` of the row loop: output rows (n, c, od, oh) for ``group`` consecutive oh,
    each in blocks of BLOCK outputs; units are numbered in (n, c, od, oh group) order.

    In each block, outputs whose window lies wholly inside the row along W form one line; the
    few at the edges, whose windows are cut by padding or ceil_mode, are lines of length 1
    (their cell offsets go to the second half of ``offsets``), visited in output order. Where
    the order does not matter (the forward, the disjoint backward), the edge outputs of the
    rows whose window is whole along H are pooled afterwards instead, a column at a time: a
    line along H.
    """
    cdef Py_ssize_t OW = geo.out_size[2]
    cdef Py_ssize_t kw = geo.kernel[2], sw = geo.stride[2], pw = geo.padding[2]
    cdef Py_ssize_t n_groups = (geo.out_size[1] + group - 1) // group
    cdef Py_ssize_t ncells = geo.kernel[0] * geo.kernel[1] * geo.kernel[2]
    # Outputs [inner_lo, inner_hi) have windows with all kw cells inside [0, W).
    cdef Py_ssize_t inner_lo = (pw + sw - 1) // sw
    cdef Py_ssize_t inner_hi = (geo.size[4] + pw - kw) // sw + 1 if geo.size[4] + pw >= kw else 0
    cdef Py_ssize_t rest, n, ch, od, oh, oh0, oh1, ow, ow0, ow1, lo, hi, xrow, ncell = 0
    cdef Py_ssize_t dlo = 0, hlo = 0, nd = 0, nh = 0, cached_nh = -1
    cdef bint by_columns = mode == FORWARD or mode == BACKWARD_DISJOINT
    cdef bint row_edges
    cdef Py_ssize_t kh = geo.kernel[1], sh = geo.stride[1], ph = geo.padding[1]
    # Rows [inner_h_lo, inner_h_hi) have windows with all kh cells inside [0, H).
    cdef Py_ssize_t inner_h_lo = (ph + sh - 1) // sh
    cdef Py_ssize_t inner_h_hi = (geo.size[3] + ph - kh) // sh + 1 if geo.size[3] + ph >= kh else 0
    rest = unit
    oh0 = (rest % n_groups) * group
    oh1 = min(oh0 + group, geo.out_size[1])
    rest = rest // n_groups
    od = rest % geo.out_size[0]
    rest = rest // geo.out_size[0]
    ch = rest % geo.size[1]
    n = rest // geo.size[1]
    _axis_window(geo, 0, od, &dlo, &nd)
    for oh in range(oh0, oh1):
        _axis_window(geo, 1, oh, &hlo, &nh)
        xrow = (n * geo.x_strides[0] + ch * geo.x_strides[1] + dlo * geo.x_strides[2]
                + hlo * geo.x_strides[3])
        row_edges = not (by_columns and inner_h_lo <= oh < inner_h_hi)
        ow0 = 0
        while ow0 < OW:
            ow1 = min(ow0 + BLOCK, OW)
            lo = max(ow0, inner_lo)
            hi = min(ow1, inner_hi)
            if lo >= hi:  # no output of the block has its whole window inside the row
                lo = hi = ow1
            # In output order: the edge outputs before the line, the line, the edge outputs
            # after it.
            for ow in range(ow0, lo if row_edges else ow0):
                _edge_output(mode, geo, x, lam, y, g, gx, glam, n, ch, od, oh, nd, nh, ow, xrow,
                             offsets + ncells, buffer, buffer_size)
            if lo < hi:
                if nh != cached_nh:  # the offsets change only where padding cuts the window
                    ncell = _window_offsets(geo, nd, nh, kw, offsets)
                    cached_nh = nh
                _line_at(mode, geo, x, lam, y, g, gx, glam,
                         xrow + (lo * sw - pw) * geo.x_strides[4], sw * geo.x_strides[4],
                         offsets, ncell, hi - lo, n, ch, od, oh, lo, 4, buffer, buffer_size)
            for ow in range(hi, ow1 if row_edges else hi):
                _edge_output(mode, geo, x, lam, y, g, gx, glam, n, ch, od, oh, nd, nh, ow, xrow,
                             offsets + ncells, buffer, buffer_size)
            ow0 = ow1
    if not by_columns:
        return
    oh0 = max(oh0, inner_h_lo)
    oh1 = min(oh1, inner_h_hi)
    if oh0 >= oh1:
        return
    # The edge outputs: before the first whole window along W and after the last.
    for ow in range(min(inner_lo, OW)):
        _edge_column(mode, geo, x, lam, y, g, gx, glam, n, ch, od, dlo, nd, oh0, oh1, ow,
                     offsets + ncells, buffer, buffer_size)
    for ow in range(max(inner_lo, inner_hi), OW):
        _edge_column(mode, geo, x, lam, y, g, gx, glam, n, ch, od, dlo, nd, oh0, oh1, ow,
                     offsets + ncells, buffer, buffer_size)


cdef inline void _edge_column(
        Mode mode, const Geometry* geo, const floating* x, const floating* lam, floating* y,
        const floating* g, floating* gx, floating* glam, Py_ssize_t n, Py_ssize_t ch,
        Py_ssize_t od, Py_ssize_t dlo, Py_ssize_t nd, Py_ssize_t oh0, Py_ssize_t oh1,
        Py_ssize_t ow, Py_ssize_t* offsets, floating* buffer,
        Py_ssize_t buffer_size) noexcept nogil:
    """The edge output ow of rows [oh0, oh1) (windows whole along H, cut along W): lines along
    H of up to BLOCK outputs."""
    cdef Py_ssize_t wlo = 0, nw = 0, ncell, xoff, oh, count
    cdef Py_ssize_t sh = geo.stride[1], ph = geo.padding[1]
    _axis_window(geo, 2, ow, &wlo, &nw)
    ncell = _window_offsets(geo, nd, geo.kernel[1], nw, offsets)
    oh = oh0
    while oh < oh1:
        count = min(<Py_ssize_t>BLOCK, oh1 - oh)
        xoff = (n * geo.x_strides[0] + ch * geo.x_strides[1] + dlo * geo.x_strides[2]
                + (oh * sh - ph) * geo.x_strides[3] + wlo * geo.x_strides[4])
        _line_at(mode, geo, x, lam, y, g, gx, glam, xoff, sh * geo.x_strides[3], offsets, ncell,
                 count, n, ch, od, oh, ow, 3, buffer, buffer_size)
        oh += count


cdef inline void _edge_output(
        Mode mode, const Geometry* geo, const floating* x, const floating* lam, floating* y,
        const floating* g, floating* gx, floating* glam, Py_ssize_t n, Py_ssize_t ch,
        Py_ssize_t od, Py_ssize_t oh, Py_ssize_t nd, Py_ssize_t nh, Py_ssize_t ow,
        Py_ssize_t xrow, Py_ssize_t* offsets, floating* buffer,
        Py_ssize_t buffer_size) noexcept nogil:
    """Output ow of a row whose window padding or ceil_mode cuts along W: a line of one."""
    cdef Py_ssize_t wlo = 0, nw = 0, ncell
    _axis_window(geo, 2, ow, &wlo, &nw)
    ncell = _window_offsets(geo, nd, nh, nw, offsets)
    _line_at(mode, geo, x, lam, y, g, gx, glam, xrow + wlo * geo.x_strides[4], 0, offsets,
             ncell, 1, n, ch, od, oh, ow, 4, buffer, buffer_size)


cdef void _run_lines(Mode mode, const Geometry* geo, const floating* x, const floating* lam,
                     floating* y, const floating* g, floating* gx, floating* glam,
                     bint channels_last,
                     bint by_plane, Py_ssize_t[:, ::1] scratch, floating[:, ::1] buffers,
                     int n_threads) noexcept nogil:
    """Run every line, in parallel.

    Channels-last arrays are cut along C (a line per output position and block of BLOCK
    channels), others along W (a line per output row and block of BLOCK outputs). Units of
    work group consecutive lines of a plane (positions along OW, or rows along OH) so that
    their setup is shared, with enough units left for every thread. Lines are independent
    unless the mode adds into grad_x: then ``by_plane`` gives each thread whole planes
    ((n, channel block) or (n, c)), whose lines it runs in output order, so every cell
    receives its terms in the same order whatever the thread count.
    """
    cdef Py_ssize_t n_cblocks = (geo.size[1] + BLOCK - 1) // BLOCK
    cdef Py_ssize_t along = geo.out_size[2] if channels_last else geo.out_size[1]
    cdef Py_ssize_t n_lines, group, n_planes, per_plane, n_units, unit, plane, k
    cdef Py_ssize_t* offsets
    cdef floating* buffer
    cdef Py_ssize_t buffer_size = buffers.shape[1]
    if channels_last:
        n_planes = geo.size[0] * n_cblocks
        n_lines = n_planes * geo.out_size[0] * geo.out_size[1] * geo.out_size[2]
    else:
        n_planes = geo.size[0] * geo.size[1]
        n_lines = n_planes * geo.out_size[0] * geo.out_size[1]
    # Whole rows of lines per unit, unless that leaves fewer than 16 units per thread.
    group = along if by_plane else max(1, min(along, n_lines // (16 * n_threads)))
    per_plane = n_lines // n_planes // along * ((along + group - 1) // group)
    n_units = n_planes * per_plane
    if not by_plane:
        with parallel(num_threads=n_threads):
            offsets = &scratch[threadid(), 0]
            buffer = &buffers[threadid(), 0]
            for unit in prange(n_units, schedule='static'):
                if channels_last:
                    _channels_last_unit(mode, geo, x, lam, y, g, gx, glam, unit, group,
                                        offsets, buffer, buffer_size)
                else:
                    _rows_unit(mode, geo, x, lam, y, g, gx, glam, unit, group, offsets,
                               buffer, buffer_size)
    else:
        with parallel(num_threads=n_threads):
            offsets = &scratch[threadid(), 0]
            buffer = &buffers[threadid(), 0]
            for plane in prange(n_planes, schedule='static'):
                for k in range(per_plane):
                    if channels_last:  # plane (n, channel block): positions in order
                        _channels_last_unit(
                            mode, geo, x, lam, y, g, gx, glam,
                            ((plane // n_cblocks) * per_plane + k) * n_cblocks
                            + plane % n_cblocks, group, offsets, buffer, buffer_size)
                    else:  # plane (n, c): its rows in order
                        _rows_unit(mode, geo, x, lam, y, g, gx, glam, plane * per_plane + k,
                                   group, offsets, buffer, buffer_size)


cdef inline void _covering_outputs(const Geometry* geo, int axis, Py_ssize_t i,
                                   Py_ssize_t* first, Py_ssize_t* stop) noexcept nogil:
    """Outputs [first, stop) along spatial axis 0..2 whose window holds input index i."""
    cdef Py_ssize_t k = geo.kernel[axis], s = geo.stride[axis], p = geo.padding[axis]
    cdef Py_ssize_t lo = i + p - k + 1
    first[0] = (lo + s - 1) // s if lo > 0 else 0
    stop[0] = min((i + p) // s + 1, geo.out_size[axis])


cdef void _gather_gradient(const Geometry* geo, const floating* x, const floating* lam,
                           const floating* stats, floating* gx, bint channels_last,
                           int n_threads) noexcept nogil:
    """grad_x of overlapping windows: each cell sums its terms over the windows that hold it."""
    cdef Py_ssize_t N = geo.size[0], C = geo.size[1]
    cdef Py_ssize_t D = geo.size[2], H = geo.size[3], W = geo.size[4]
    # The loop runs over all axes but the innermost one of memory (C or W).
    cdef Py_ssize_t inner = C if channels_last else W
    cdef Py_ssize_t n_units = N * C * D * H * W // inner
    cdef Py_ssize_t unit, rest, n, ch, d, h, w, q, xoff, soff
    cdef Py_ssize_t od, oh, ow, od0, od1, oh0, oh1, ow0, ow1
    cdef floating v, acc, lo_
    cdef const floating* st
    for unit in prange(n_units, schedule='static', nogil=True, num_threads=n_threads):
        od0 = od1 = oh0 = oh1 = ow0 = ow1 = 0  # thread-private: see _pool_channels_last
        rest = unit
        if channels_last:
            w = rest % W
            rest = rest // W
        else:
            ch = rest % C
            rest = rest // C
        h = rest % H
        rest = rest // H
        d = rest % D
        n = rest // D
        _covering_outputs(geo, 0, d, &od0, &od1)
        _covering_outputs(geo, 1, h, &oh0, &oh1)
        for q in range(inner):
            if channels_last:
                ch = q
            else:
                w = q
            _covering_outputs(geo, 2, w, &ow0, &ow1)
            xoff = (n * geo.x_strides[0] + ch * geo.x_strides[1] + d * geo.x_strides[2]
                    + h * geo.x_strides[3] + w * geo.x_strides[4])
            v = x[xoff]
            acc = 0
            for od in range(od0, od1):
                for oh in range(oh0, oh1):
                    for ow in range(ow0, ow1):
                        soff = (n * geo.y_strides[0] + ch * geo.y_strides[1]
                                + od * geo.y_strides[2] + oh * geo.y_strides[3]
                                + ow * geo.y_strides[4])
                        st = stats + soff
                        lo_ = lam[_output_offset(geo.lam_strides, n, ch, od, oh, ow)]
                        acc = acc + _gradient_term(v, st[0], st[geo.stats_plane],
                                                   st[2 * geo.stats_plane], lo_)
            gx[xoff] = acc


cdef Geometry _geometry(const Py_ssize_t* size, const Py_ssize_t* x_strides,
                        const Py_ssize_t* out_size, const Py_ssize_t* y_strides,
                        const Py_ssize_t* g_strides, const Py_ssize_t* lam_strides,
                        const Py_ssize_t* glam_strides, Py_ssize_t itemsize, tuple kernel,
                        tuple stride, tuple padding, Py_ssize_t stats_plane):
    """Geometry from the shapes and byte strides of 5-D memoryviews."""
    cdef Geometry geo
    cdef int a
    for a in range(5):
        geo.size[a] = size[a]
        geo.x_strides[a] = x_strides[a] // itemsize
        geo.y_strides[a] = y_strides[a] // itemsize
        geo.g_strides[a] = g_strides[a] // itemsize if g_strides != NULL else 0
        geo.lam_strides[a] = lam_strides[a] // itemsize
        geo.glam_strides[a] = glam_strides[a] // itemsize if glam_strides != NULL else 0
    for a in range(3):
        geo.out_size[a] = out_size[2 + a]
        geo.kernel[a] = kernel[a]
        geo.stride[a] = stride[a]
        geo.padding[a] = padding[a]
        geo.dilation[a] = 1
        geo.window_first[a] = NULL
        geo.window_count[a] = NULL
    geo.stats_plane = stats_plane
    return geo


cdef int _set_window_tables(Geometry* geo, tuple dilation, tables) except -1:
    """The general path: ``tables`` is None (regular windows) or a tuple of three int64
    (2, out_size) arrays, each output's first real cell and count of real cells per axis, the
    cells ``dilation`` apart. Checked: every window has 1 to kernel cells, all inside x."""
    cdef Py_ssize_t[:, ::1] table
    cdef Py_ssize_t o
    cdef int a
    require(len(dilation) == 3 and all(d >= 1 for d in dilation), "dilation must be 3 ints >= 1")
    if tables is None:
        require(all(d == 1 for d in dilation), "dilated windows need the window tables")
        return 0
    require(len(tables) == 3, "the window tables must be one per spatial axis")
    for a in range(3):
        table = tables[a]
        require(table.shape[0] == 2 and table.shape[1] == geo.out_size[a],
                "a window table must be (2, out_size)")
        for o in range(geo.out_size[a]):
            require(1 <= table[1, o] <= geo.kernel[a] and table[0, o] >= 0 and
                    table[0, o] + (table[1, o] - 1) * dilation[a] < geo.size[2 + a],
                    "every window must hold 1 to kernel cells inside x")
        geo.dilation[a] = dilation[a]
        geo.window_first[a] = &table[0, 0]
        geo.window_count[a] = &table[1, 0]
    return 0


def _check_call(tuple x_shape, tuple out_shape, tuple lam_shape, tuple kernel, tuple stride,
                tuple padding, Py_ssize_t[:, ::1] scratch, buffers, int n_threads,
                bint general=False):
    """The kernels trust no shape: every entry checks what it is given and raises before
    touching memory (a wrong size from Python is a bug, not a crash). Every window must hold
    at least one real cell, and the scratch must hold a window for every thread."""
    cdef Py_ssize_t cells = 1
    require(len(kernel) == 3 and len(stride) == 3 and len(padding) == 3,
            "kernel, stride and padding must have 3 values")
    require(all(n >= 1 for n in x_shape) and all(n >= 1 for n in out_shape),
            "x and the output must not be empty")
    require(out_shape[:2] == x_shape[:2] and lam_shape == out_shape,
            "the output and lam must be (N, C, OD, OH, OW) of x's N and C")
    for a in range(3):
        require(kernel[a] >= 1 and stride[a] >= 1 and 0 <= padding[a] and
                (general or padding[a] < kernel[a]),
                "kernel >= 1, stride >= 1, 0 <= padding (before) < kernel")
        require(general or (out_shape[2 + a] - 1) * stride[a] - padding[a] < x_shape[2 + a],
                "every window must start inside the input")  # general: the tables' check
        cells *= kernel[a]
    require(n_threads >= 1 and scratch.shape[0] >= n_threads and scratch.shape[1] >= 2 * cells,
            "scratch must be (>= n_threads, 2 * kernel cells)")
    require(buffers.shape[0] >= n_threads and buffers.shape[1] >= 2 * cells,
            "buffers must be (>= n_threads, >= 2 * kernel cells)")


def forward(const floating[:, :, :, :, :] x, floating[:, :, :, :, :] y, tuple kernel,
            tuple stride, tuple padding, const floating[:, :, :, :, :] lam, bint channels_last,
            Py_ssize_t[:, ::1] scratch, floating[:, ::1] buffers, int n_threads,
            tuple dilation=(1, 1, 1), tables=None):
    """y = windowed-softmax pool of x, written in place. The caller validates everything.

    x and y are non-empty 5-D (N, C, D, H, W) views, ``lam`` the temperatures broadcast to y's
    shape (strides 0 where shared); ``channels_last`` picks the loop order
    (lines along C when true, along W otherwise); scratch is ``(n_threads, 2 * kD * kH * kW)`` and
    buffers ``(n_threads, 2 * max(4096, kD * kH * kW))``. The general path (``tables``: see
    ``_set_window_tables``; dilated or adaptive windows) runs lines along C whatever the
    layout.
    """
    _check_call(dims(x.shape, 5), dims(y.shape, 5), dims(lam.shape, 5), kernel, stride,
                padding, scratch, buffers, n_threads, tables is not None)
    cdef Geometry geo = _geometry(x.shape, x.strides, y.shape, y.strides, NULL, lam.strides,
                                  NULL, sizeof(floating), kernel, stride, padding, 0)
    _set_window_tables(&geo, dilation, tables)
    channels_last = channels_last or tables is not None
    with nogil:
        _run_lines(FORWARD, &geo, &x[0, 0, 0, 0, 0], &lam[0, 0, 0, 0, 0], &y[0, 0, 0, 0, 0],
                   NULL, NULL, NULL, channels_last, False, scratch, buffers, n_threads)


def backward(const floating[:, :, :, :, :] grad_out, const floating[:, :, :, :, :] x,
             floating[:, :, :, :, :] grad_x, floating[:, :, :, :, :, :] stats, tuple kernel,
             tuple stride, tuple padding, const floating[:, :, :, :, :] lam,
             floating[:, :, :, :, :] grad_lam, bint channels_last,
             Py_ssize_t[:, ::1] scratch, floating[:, ::1] buffers, int n_threads,
             tuple dilation=(1, 1, 1), tables=None):
    """grad_x = dL/dx given grad_out = dL/dy, written in place into the zero-filled grad_x,
    which has the strides of x.

    Disjoint windows (stride >= kernel on every axis) write each cell once. Overlapping
    windows either add their terms plane by plane (``stats`` is ``None``: parallel over
    planes, fast when there are several per thread) or, given a ``(3, N, C, OD, OH, OW)``
    ``stats`` scratch array, store per-output x*, g/S and y and gather them for every cell
    (parallel over everything). Both add the terms of a cell in output order: the same bits.
    ``lam`` is broadcast to grad_out's shape; ``grad_lam`` (grad_out's shape, or None) receives
    dL/dlam of every output. The general path (``tables``) adds plane by plane along C.
    """
    cdef bint gather = stats is not None
    cdef bint general = tables is not None
    cdef bint disjoint = not general
    cdef Mode mode
    cdef int a
    out_shape = dims(grad_out.shape, 5)
    _check_call(dims(x.shape, 5), out_shape, dims(lam.shape, 5), kernel, stride, padding,
                scratch, buffers, n_threads, general)
    require(not (general and gather), "the general path adds plane by plane (no stats)")
    channels_last = channels_last or general
    require(dims(grad_x.shape, 5) == dims(x.shape, 5) and
            same_strides(dims(x.shape, 5), dims(grad_x.strides, 5),
                                                        dims(x.strides, 5)),
            "grad_x must have x's shape and strides")
    require(grad_lam is None or dims(grad_lam.shape, 5) == out_shape,
            "grad_lam must have grad_out's shape")
    require(stats is None or dims(stats.shape, 6) == (3,) + out_shape,
            "stats must be (3, *grad_out.shape)")
    for a in range(3):
        disjoint = disjoint and stride[a] >= kernel[a]  # the general path's never are
    if disjoint:
        mode = BACKWARD_DISJOINT
    elif channels_last or stride[2] >= kernel[2]:
        mode = BACKWARD_ADD  # the windows of a line do not overlap
    else:
        mode = BACKWARD_ADD_ORDERED
    cdef bint with_glam = grad_lam is not None
    cdef Geometry geo = _geometry(
        x.shape, x.strides, grad_out.shape,
        &stats.strides[1] if gather else &grad_x.strides[0], grad_out.strides, lam.strides,
        grad_lam.strides if with_glam else NULL,
        sizeof(floating), kernel, stride, padding,
        stats.strides[0] // sizeof(floating) if gather else 0)
    _set_window_tables(&geo, dilation, tables)
    cdef floating* glam = &grad_lam[0, 0, 0, 0, 0] if with_glam else NULL
    with nogil:
        if not gather:
            _run_lines(mode, &geo, &x[0, 0, 0, 0, 0], &lam[0, 0, 0, 0, 0], NULL,
                       &grad_out[0, 0, 0, 0, 0], &grad_x[0, 0, 0, 0, 0], glam, channels_last,
                       not disjoint, scratch, buffers, n_threads)
        else:
            _run_lines(BACKWARD_STATS, &geo, &x[0, 0, 0, 0, 0], &lam[0, 0, 0, 0, 0],
                       &stats[0, 0, 0, 0, 0, 0], &grad_out[0, 0, 0, 0, 0], NULL, glam,
                       channels_last, False, scratch, buffers, n_threads)
            _gather_gradient(&geo, &x[0, 0, 0, 0, 0], &lam[0, 0, 0, 0, 0],
                             &stats[0, 0, 0, 0, 0, 0], &grad_x[0, 0, 0, 0, 0], channels_last,
                             n_threads)
