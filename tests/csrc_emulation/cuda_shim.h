// Just enough of CUDA's built-ins to compile csrc/random_field_kernel.cuh as host C++ and run
// its __global__ kernel on the CPU, one emulated thread at a time (no concurrency, so no race
// can show; the arithmetic, indexing, masking and store paths are what this checks).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(n)

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline Dim3 blockIdx, blockDim, threadIdx;

using std::max;
using std::min;

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

struct float4 {
  float x, y, z, w;
};
struct uchar4 {
  unsigned char x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uchar4 make_uchar4(unsigned char x, unsigned char y, unsigned char z, unsigned char w) { return {x, y, z, w}; }

// 16-bit float types: stored as float here (the emulation checks fp32 and uint8 outputs only).
struct __half {
  float v;
};
struct __nv_bfloat16 {
  float v;
};
struct __half2 {
  __half a, b;
};
struct __nv_bfloat162 {
  __nv_bfloat16 a, b;
};
inline __half __float2half_rn(float v) { return {v}; }
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return {v}; }
inline __half2 __floats2half2_rn(float a, float b) { return {{a}, {b}}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {{a}, {b}}; }

inline void sincosf(float x, float* s, float* c) {
  *s = std::sin(x);
  *c = std::cos(x);
}
