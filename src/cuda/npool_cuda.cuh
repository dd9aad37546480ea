// Shared definitions of npool's CUDA kernels.
#pragma once
#include <cstdint>

namespace npool {

// Shapes and element strides of a 5-D (N, C, D, H, W) pool, passed by value to kernels; the
// host side packs the same layout (little-endian int64 fields, in this order).
struct PoolGeometry {
  int64_t size[5];      // N, C, D, H, W of the input
  int64_t out_size[3];  // OD, OH, OW
  int64_t kernel[3];
  int64_t stride[3];
  int64_t padding[3];
  int64_t x_strides[5];  // element strides of the input
  int64_t y_strides[5];  // element strides of the output
};

template <typename T> struct Accumulator { using type = float; };
template <> struct Accumulator<double> { using type = double; };

template <typename T> __device__ inline T infinity();
template <> __device__ inline float infinity<float>() { return __int_as_float(0x7f800000); }
template <> __device__ inline double infinity<double>() { return __longlong_as_double(0x7ff0000000000000LL); }

template <typename T> __device__ inline T quiet_nan();
template <> __device__ inline float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ inline double quiet_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }

__device__ inline float exp(float v) { return expf(v); }
__device__ inline double exp(double v) { return ::exp(v); }

}  // namespace npool
