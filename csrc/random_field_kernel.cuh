// Random-field augmentation: the CUDA kernel (device code only, no torch headers).
//
// Included by csrc/random_field.cu (host code, launch, registration) and, with the CUDA
// built-ins stubbed, by tests/csrc_emulation/random_field_emulation.cpp, which runs this exact
// kernel on the CPU one emulated thread at a time so that its arithmetic is tested without a
// GPU. The math, the work split and the numerics are documented in csrc/random_field.cu.
#pragma once

#include <cstdint>

namespace sslfast {
namespace random_field {

// The F_* bits of sslfast/augment/params.py.
constexpr int kTranslate = 1 << 0;
constexpr int kRotate = 1 << 1;
constexpr int kScale = 1 << 2;
constexpr int kShear = 1 << 3;
constexpr int kBrightness = 1 << 4;
constexpr int kContrast = 1 << 5;
constexpr int kSaturation = 1 << 6;
constexpr int kHue = 1 << 7;
constexpr int kReflect = 1 << 8;
constexpr int kNoResample = 1 << 9;
constexpr int kNumFields = 9;
constexpr int kQuad = 4;
constexpr int kThreads = 256;

struct WarpArgs {
  const float* fields;  // (B, 9, GH, GW) contiguous
  const float* base;    // (B, 6) contiguous
  const float* luma;    // (B,) or nullptr
  const float* mean;    // (C,) or nullptr
  const float* std;     // (C,) or nullptr
  int64_t sxb, sxc, sxh, sxw;
  int batch, channels, height, width, out_h, out_w, grid_h, grid_w;
  float field_y_scale, field_x_scale;
  int flags;
};

__device__ __forceinline__ float clamp01(float v) { return fminf(fmaxf(v, 0.f), 1.f); }

template <typename T>
__device__ __forceinline__ float load_unit(const T* p);
template <>
__device__ __forceinline__ float load_unit<uint8_t>(const uint8_t* p) {
  return static_cast<float>(__ldg(p)) / 255.f;
}
template <>
__device__ __forceinline__ float load_unit<float>(const float* p) {
  return __ldg(p);
}

template <typename T>
__device__ __forceinline__ T to_out(float v);
template <>
__device__ __forceinline__ float to_out<float>(float v) { return v; }
template <>
__device__ __forceinline__ uint8_t to_out<uint8_t>(float v) {
  return static_cast<uint8_t>(floorf(clamp01(v) * 255.f + 0.5f));
}
template <>
__device__ __forceinline__ __half to_out<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 to_out<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Bilinear interpolation of one field channel at precomputed control-grid corners.
struct GridCorners {
  int o00, o01, o10, o11;
  float wy, wx;
  __device__ __forceinline__ float at(const float* f, int k, int grid_size) const {
    const float* p = f + k * grid_size;
    float top = (1.f - wx) * __ldg(p + o00) + wx * __ldg(p + o01);
    float bottom = (1.f - wx) * __ldg(p + o10) + wx * __ldg(p + o11);
    return (1.f - wy) * top + wy * bottom;
  }
};

// grid_sample(align_corners=False) reflection about -0.5 and size - 0.5, then clamp.
__device__ __forceinline__ float reflect_clip(float q, int size) {
  const float span = static_cast<float>(size);
  float t = fabsf(q + 0.5f);
  float flips = floorf(t / span);
  float extra = t - flips * span;
  bool even = (flips - 2.f * floorf(flips * 0.5f)) == 0.f;
  q = even ? extra - 0.5f : span - extra - 0.5f;
  return fminf(fmaxf(q, 0.f), span - 1.f);
}

// torchvision's adjust_hue for one pixel: RGB -> HSV, h += shift (mod 1), HSV -> RGB.
__device__ __forceinline__ void hue_shift(float& r, float& g, float& b, float shift) {
  float maxc = fmaxf(fmaxf(r, g), b);
  float minc = fminf(fminf(r, g), b);
  bool eqc = maxc == minc;
  float cr = maxc - minc;
  float s = cr / (eqc ? 1.f : maxc);
  float crd = eqc ? 1.f : cr;
  float rc = (maxc - r) / crd, gc = (maxc - g) / crd, bc = (maxc - b) / crd;
  float h = maxc == r ? bc - gc : (maxc == g ? 2.f + rc - bc : 4.f + gc - rc);
  h = h / 6.f + 1.f;
  h = h - floorf(h);
  h = h + shift;
  h = h - floorf(h);
  float v = maxc;
  float i6 = floorf(h * 6.f);
  float f = h * 6.f - i6;
  int i = static_cast<int>(i6) % 6;
  float p = clamp01(v * (1.f - s));
  float q = clamp01(v * (1.f - s * f));
  float t = clamp01(v * (1.f - s * (1.f - f)));
  switch (i) {
    case 0: r = v; g = t; b = p; break;
    case 1: r = q; g = v; b = p; break;
    case 2: r = p; g = v; b = t; break;
    case 3: r = p; g = q; b = v; break;
    case 4: r = t; g = p; b = v; break;
    default: r = v; g = p; b = q; break;
  }
}

template <typename in_t>
__device__ __forceinline__ float bilinear(const in_t* plane, int64_t t00, int64_t t01, int64_t t10,
                                          int64_t t11, bool m00, bool m01, bool m10, bool m11, float w00, float w01,
                                          float w10, float w11) {
  float v = 0.f;
  if (m00) v += w00 * load_unit(plane + t00);
  if (m01) v += w01 * load_unit(plane + t01);
  if (m10) v += w10 * load_unit(plane + t10);
  if (m11) v += w11 * load_unit(plane + t11);
  return v;
}

// The quad's 4 input pixels of one channel when output pixel p reads input pixel p: one
// 4-byte (uint8) or 16-byte (float) load when the row is unit-stride and the address aligned.
template <typename in_t>
__device__ __forceinline__ void load_row_quad(const in_t* src, int count, bool unit_stride, int64_t sxw, float* dst) {
  constexpr int kBytes = kQuad * sizeof(in_t);
  if (count == kQuad && unit_stride && reinterpret_cast<uintptr_t>(src) % kBytes == 0) {
    if constexpr (sizeof(in_t) == 1) {
      const uchar4 q = __ldg(reinterpret_cast<const uchar4*>(src));
      dst[0] = q.x / 255.f; dst[1] = q.y / 255.f; dst[2] = q.z / 255.f; dst[3] = q.w / 255.f;
    } else {
      const float4 q = __ldg(reinterpret_cast<const float4*>(src));
      dst[0] = q.x; dst[1] = q.y; dst[2] = q.z; dst[3] = q.w;
    }
    return;
  }
  for (int i = 0; i < count; ++i) dst[i] = load_unit(src + i * sxw);
}

// Vectorised store of one channel's quad (all 4 pixels valid, 4-aligned column).
template <typename out_t>
__device__ __forceinline__ void store_quad(out_t* dst, const float* v) {
  for (int i = 0; i < kQuad; ++i) dst[i] = to_out<out_t>(v[i]);
}
template <>
__device__ __forceinline__ void store_quad<float>(float* dst, const float* v) {
  *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
}
template <>
__device__ __forceinline__ void store_quad<uint8_t>(uint8_t* dst, const float* v) {
  *reinterpret_cast<uchar4*>(dst) =
      make_uchar4(to_out<uint8_t>(v[0]), to_out<uint8_t>(v[1]), to_out<uint8_t>(v[2]), to_out<uint8_t>(v[3]));
}
template <>
__device__ __forceinline__ void store_quad<__half>(__half* dst, const float* v) {
  reinterpret_cast<__half2*>(dst)[0] = __floats2half2_rn(v[0], v[1]);
  reinterpret_cast<__half2*>(dst)[1] = __floats2half2_rn(v[2], v[3]);
}
template <>
__device__ __forceinline__ void store_quad<__nv_bfloat16>(__nv_bfloat16* dst, const float* v) {
  reinterpret_cast<__nv_bfloat162*>(dst)[0] = __floats2bfloat162_rn(v[0], v[1]);
  reinterpret_cast<__nv_bfloat162*>(dst)[1] = __floats2bfloat162_rn(v[2], v[3]);
}

template <typename in_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    random_field_warp_kernel(const in_t* __restrict__ x, out_t* __restrict__ out, const WarpArgs a) {
  const int quads_per_row = (a.out_w + kQuad - 1) / kQuad;
  const int64_t quad = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t quads_per_image = static_cast<int64_t>(a.out_h) * quads_per_row;
  if (quad >= a.batch * quads_per_image) return;
  const int64_t b = quad / quads_per_image;
  const int rem = static_cast<int>(quad - b * quads_per_image);
  const int y = rem / quads_per_row;
  const int x_first = (rem - y * quads_per_row) * kQuad;
  const int flags = a.flags;
  const int grid_size = a.grid_h * a.grid_w;
  const float* fields = a.fields + b * kNumFields * grid_size;
  const in_t* image = x + b * a.sxb;
  const float cx = (a.out_w - 1) * 0.5f, cy = (a.out_h - 1) * 0.5f;

  GridCorners gc;
  const float gy = y * a.field_y_scale;
  const int gy0 = min(static_cast<int>(floorf(gy)), a.grid_h - 1);
  const int gy1 = min(gy0 + 1, a.grid_h - 1);
  gc.wy = gy - gy0;
  const float* bm = a.base + b * 6;
  const float a11 = bm[0], a12 = bm[1], b1 = bm[2], a21 = bm[3], a22 = bm[4], b2 = bm[5];
  const float pivot = (flags & kContrast) ? a.luma[b] : 0.f;

  float vals[3][kQuad];
  const bool no_resample = flags & kNoResample;
  if (no_resample) {
    const int count = min(kQuad, a.out_w - x_first);
    const in_t* row = image + y * a.sxh + x_first * a.sxw;
    for (int c = 0; c < a.channels; ++c) load_row_quad(row + c * a.sxc, count, a.sxw == 1, a.sxw, vals[c]);
  }
  for (int i = 0; i < kQuad; ++i) {
    const int xo = x_first + i;
    if (xo >= a.out_w) {
      vals[0][i] = vals[1][i] = vals[2][i] = 0.f;
      continue;
    }
    const float gx = xo * a.field_x_scale;
    const int gx0 = min(static_cast<int>(floorf(gx)), a.grid_w - 1);
    const int gx1 = min(gx0 + 1, a.grid_w - 1);
    gc.wx = gx - gx0;
    gc.o00 = gy0 * a.grid_w + gx0;
    gc.o01 = gy0 * a.grid_w + gx1;
    gc.o10 = gy1 * a.grid_w + gx0;
    gc.o11 = gy1 * a.grid_w + gx1;

    float v0, v1, v2;
    if (no_resample) {
      v0 = vals[0][i];
      v1 = a.channels == 3 ? vals[1][i] : v0;
      v2 = a.channels == 3 ? vals[2][i] : v0;
    } else {
      float dx = xo - cx, dy = y - cy;
      if (flags & kTranslate) {
        dx -= gc.at(fields, 0, grid_size);
        dy -= gc.at(fields, 1, grid_size);
      }
      if (flags & kRotate) {
        float s, c;
        sincosf(gc.at(fields, 2, grid_size), &s, &c);
        const float rx = c * dx - s * dy;
        dy = s * dx + c * dy;
        dx = rx;
      }
      if (flags & kShear) dx -= tanf(gc.at(fields, 4, grid_size)) * dy;
      if (flags & kScale) {
        const float shrink = expf(-gc.at(fields, 3, grid_size));
        dx *= shrink;
        dy *= shrink;
      }
      const float qx0 = dx + cx, qy0 = dy + cy;
      float qx = a11 * qx0 + a12 * qy0 + b1;
      float qy = a21 * qx0 + a22 * qy0 + b2;
      if (flags & kReflect) {
        qx = reflect_clip(qx, a.width);
        qy = reflect_clip(qy, a.height);
      } else {
        qx = fminf(fmaxf(qx, -2.f), a.width + 1.f);
        qy = fminf(fmaxf(qy, -2.f), a.height + 1.f);
      }
      const float x0f = floorf(qx), y0f = floorf(qy);
      const float wx1 = qx - x0f, wy1 = qy - y0f;
      const int ix0 = static_cast<int>(x0f), iy0 = static_cast<int>(y0f);
      const int ix1 = ix0 + 1, iy1 = iy0 + 1;
      const bool in_x0 = ix0 >= 0 && ix0 < a.width, in_x1 = ix1 >= 0 && ix1 < a.width;
      const bool in_y0 = iy0 >= 0 && iy0 < a.height, in_y1 = iy1 >= 0 && iy1 < a.height;
      const float w00 = (1.f - wy1) * (1.f - wx1), w01 = (1.f - wy1) * wx1;
      const float w10 = wy1 * (1.f - wx1), w11 = wy1 * wx1;
      const int64_t t00 = iy0 * a.sxh + ix0 * a.sxw, t01 = iy0 * a.sxh + ix1 * a.sxw;
      const int64_t t10 = iy1 * a.sxh + ix0 * a.sxw, t11 = iy1 * a.sxh + ix1 * a.sxw;
      const bool m00 = in_y0 && in_x0, m01 = in_y0 && in_x1, m10 = in_y1 && in_x0, m11 = in_y1 && in_x1;
      v0 = bilinear(image, t00, t01, t10, t11, m00, m01, m10, m11, w00, w01, w10, w11);
      if (a.channels == 3) {
        v1 = bilinear(image + a.sxc, t00, t01, t10, t11, m00, m01, m10, m11, w00, w01, w10, w11);
        v2 = bilinear(image + 2 * a.sxc, t00, t01, t10, t11, m00, m01, m10, m11, w00, w01, w10, w11);
      } else {
        v1 = v2 = v0;
      }
    }
    if (flags & kBrightness) {
      const float k = fmaxf(1.f + gc.at(fields, 5, grid_size), 0.f);
      v0 = clamp01(k * v0);
      v1 = clamp01(k * v1);
      v2 = clamp01(k * v2);
    }
    if (flags & kContrast) {
      const float k = fmaxf(1.f + gc.at(fields, 6, grid_size), 0.f);
      const float m = (1.f - k) * pivot;
      v0 = clamp01(k * v0 + m);
      v1 = clamp01(k * v1 + m);
      v2 = clamp01(k * v2 + m);
    }
    if (flags & kSaturation) {
      const float k = fmaxf(1.f + gc.at(fields, 7, grid_size), 0.f);
      const float grey = (1.f - k) * (0.2989f * v0 + 0.587f * v1 + 0.114f * v2);
      v0 = clamp01(k * v0 + grey);
      v1 = clamp01(k * v1 + grey);
      v2 = clamp01(k * v2 + grey);
    }
    if (flags & kHue) hue_shift(v0, v1, v2, gc.at(fields, 8, grid_size));
    vals[0][i] = v0;
    vals[1][i] = v1;
    vals[2][i] = v2;
  }

  const int64_t plane = static_cast<int64_t>(a.out_h) * a.out_w;
  const bool full_quad = (a.out_w % kQuad) == 0;  // then every quad is whole and 4-aligned
  for (int c = 0; c < a.channels; ++c) {
    float* v = vals[c];
    if (a.mean != nullptr) {
      const float mean = a.mean[c], std = a.std[c];
      for (int i = 0; i < kQuad; ++i) v[i] = (v[i] - mean) / std;
    }
    out_t* dst = out + (b * a.channels + c) * plane + static_cast<int64_t>(y) * a.out_w + x_first;
    if (full_quad) {
      store_quad<out_t>(dst, v);
    } else {
      for (int i = 0; i < kQuad && x_first + i < a.out_w; ++i) dst[i] = to_out<out_t>(v[i]);
    }
  }
}

}  // namespace random_field
}  // namespace sslfast
