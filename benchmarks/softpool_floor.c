/* The floor of SoftPool 2x2/2 on the CPU: the same math as npool (max, exp by Cody-Waite and a
 * degree-6 polynomial, S, y = x* + sum e (x - x*) / S) in the plainest specialised loop, no
 * checks, no non-finite handling, beside a copy of x on all threads; (32, 64, 112, 112) float32,
 * contiguous (rows, stride-2 shuffles) and channels-last (vectors of channels). What npool's
 * kernels are compared with in benchmarks/results/bench_targets_issue28_after.txt.
 *
 *     gcc -O3 -fno-math-errno -fno-trapping-math -ffp-contract=off -fopenmp -march=x86-64-v4 \
 *         benchmarks/softpool_floor.c -o /tmp/floor && OMP_NUM_THREADS=2 /tmp/floor
 *
 * (-march=x86-64-v3 for AVX2.) Prints the minimum over 15 rounds of each, in ms.
 */
#include <stdint.h>
#include <stddef.h>
#include <math.h>
#include <string.h>
#include <stdlib.h>
#include <stdio.h>
#include <omp.h>
#include <time.h>
#include <immintrin.h>
#if defined(__AVX512F__)
#define VB 64
#elif defined(__AVX__)
#define VB 32
#else
#define VB 16
#endif
typedef float vf __attribute__((vector_size(VB), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(VB), aligned(4), may_alias));
#define VL (VB/4)

static inline vf vmax(vf a, vf b) {
#if VB == 64
  return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif VB == 32
  return (vf)_mm256_max_ps((__m256)a, (__m256)b);
#else
  return (vf)_mm_max_ps((__m128)a, (__m128)b);
#endif
}
static inline vf vexpnp(vf z) {
    vi underflow = z < -87.0f;
    z = vmax(z, z*0 - 87.0f);
    vf rounded = z * (float)1.44269504088896341 + 12582912.0f;
    vf n = rounded - 12582912.0f;
    vf r = z - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf p = 1.0f + r * (1.0f + r * (0.5f + r * ((float)(1.0/6) + r * ((float)(1.0/24) + r * ((float)(1.0/120) + r * (float)(1.0/720))))));
    vi scale = ((vi)rounded - 0x4B400000 + 127) << 23;
    vf res = p * (vf)scale;
    return (vf)((vi)res & ~underflow);
}
static inline vi vnonfinite(vf z) { return ((vi)z & 0x7F800000) == 0x7F800000; }
static inline vf vsel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }

static inline vf load(const float* p) { return *(const vf*)p; }
static inline void store(float* p, vf v) { *(vf*)p = v; }
#if VL == 16
#define EVENS (vi){0,2,4,6,8,10,12,14,16,18,20,22,24,26,28,30}
#elif VL == 8
#define EVENS (vi){0,2,4,6,8,10,12,14}
#else
#define EVENS (vi){0,2,4,6}
#endif
static inline vf evens(const float* p) { return __builtin_shuffle(load(p), load(p + VL), EVENS); }

static inline __attribute__((always_inline)) vf pool(const vf* v, int K, vi* bad) {
    vf m = (vf){0} - INFINITY, xm = (vf){0}, s = (vf){0}, t = (vf){0};
    for (int c = 0; c < K; c++) { vi gt = v[c] > m; xm = vsel(gt, v[c], xm); m = vmax(v[c], m); }
    for (int c = 0; c < K; c++) { vf e = vexpnp(v[c] - m); s = s + e; t = t + e * (v[c] - xm); }
    vf y = xm + t / s;
    *bad |= vnonfinite(m) | vnonfinite(y);
    return y;
}
static int row22(const float* r0, const float* r1, float* y, ptrdiff_t n) {
    vi bad = (vi){0};
    ptrdiff_t j = 0;
    for (;; j += VL) {
        if (j + VL > n) j = n - VL;
        vf v[4] = {evens(r0 + 2*j), evens(r0 + 2*j + 1), evens(r1 + 2*j), evens(r1 + 2*j+1)};
        store(y + j, pool(v, 4, &bad));
        if (j + VL >= n) break;
    }
    int any = 0; for (int l = 0; l < VL; l++) any |= bad[l]; return any;
}
static int cl22(const float* x, const ptrdiff_t* off, float* y, ptrdiff_t n) {
    vi bad = (vi){0};
    const float* p0 = x + off[0]; const float* p1 = x + off[1]; const float* p2 = x + off[2]; const float* p3 = x + off[3];
    for (ptrdiff_t j = 0; j < n; j += VL) {
        vf v[4] = {load(p0+j), load(p1+j), load(p2+j), load(p3+j)};
        store(y + j, pool(v, 4, &bad));
    }
    int any = 0; for (int l = 0; l < VL; l++) any |= bad[l]; return any;
}
static double now(void){struct timespec ts; clock_gettime(CLOCK_MONOTONIC,&ts); return ts.tv_sec+1e-9*ts.tv_nsec;}
int main(void) {
    int N=32, C=64, H=112, W=112, OH=56, OW=56;
    size_t sz = (size_t)N*C*H*W;
    float* x = aligned_alloc(64, sz*4); float* x2 = aligned_alloc(64, sz*4); float* y = aligned_alloc(64, sz);
    int nb = 0;  /* windows with a non-finite value: none here */
    for (size_t i=0;i<sz;i++) x[i] = (float)((i*2654435761u)%1000)/100.0f - 5;
    double bc=1e9, br=1e9, bl=1e9;
    for (int rep=0; rep<15; rep++) {
        double t0=now();
        #pragma omp parallel for
        for (ptrdiff_t i=0;i<(ptrdiff_t)(N*C);i++) memcpy(x2+i*H*W, x+i*H*W, H*W*4);
        double t1=now();
        #pragma omp parallel for reduction(+:nb)
        for (ptrdiff_t p=0;p<(ptrdiff_t)N*C*OH;p++) { ptrdiff_t pl=p/OH, oh=p%OH;
            nb += row22(x+pl*H*W+2*oh*W, x+pl*H*W+(2*oh+1)*W, y+pl*OH*OW+oh*OW, OW); }
        double t2=now();
        #pragma omp parallel for reduction(+:nb)
        for (ptrdiff_t p=0;p<(ptrdiff_t)N*OH;p++) { ptrdiff_t n=p/OH, oh=p%OH;
            for (int ow=0; ow<OW; ow++) { const float* b = x + ((n*H+2*oh)*W+2*ow)*C; ptrdiff_t off[4]={0,C,W*C,W*C+C};
              nb += cl22(b, off, y+((n*OH+oh)*OW+ow)*C, C);} }
        double t3=now();
        if(t1-t0<bc)bc=t1-t0; if(t2-t1<br)br=t2-t1; if(t3-t2<bl)bl=t3-t2;
    }
    printf("min: copy %.2f rows %.2f cl %.2f ms\n", bc*1e3, br*1e3, bl*1e3);
    return 0;
}
