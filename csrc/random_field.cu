// Random-field augmentation, CUDA C++: field interpolation + warp + bilinear gather + colour +
// normalisation in one pass (torch.ops.sslfast.random_field_warp). The kernel itself is in
// random_field_kernel.cuh (no torch headers, so tests can also run it on the CPU); this file
// holds the host side: checks, launch, registration.
//
// Math: identical to sslfast/reference/random_field.py and kernels/random_field.py. For output
// pixel p of image b, theta_k(p) is the bilinear (align_corners=True) interpolation of the
// control grid fields[b, k]; with c the output centre
//     d = p - c - t(p);  r = R(-rotate) d;  r_x -= tan(shear) r_y;  q' = c + exp(-scale) r
//     q = M_b q' + m_b                       (per-image base map: crop / resize / flip)
//     v = bilinear(image[b], q)              (zero or reflect padding, grid_sample conventions)
// then brightness, contrast, saturation (factors max(0, 1 + theta), clamped to [0, 1] after
// each, torchvision's _blend) and the HSV hue shift of torchvision's adjust_hue, and finally
// (v - mean) / std or round(255 v) to uint8. Data augmentation: no backward.
//
// Work split: one thread per quad of 4 horizontally adjacent output pixels of one row. The
// thread interpolates the fields and gathers every channel for its 4 pixels, then writes each
// channel's quad with one vectorised store (float4 / uchar4 / 2 x half2 / 2 x bfloat162) when the
// row length allows it (Wo % 4 == 0), scalar stores otherwise. Warped reads are scalar gathers
// through the read-only data cache (__ldg): neighbouring threads read overlapping
// neighbourhoods, which the cache serves. With no warp and an identity base (F_NO_RESAMPLE:
// colour-only settings) each channel's quad is one vectorised load (uchar4 / float4) of the 4
// input pixels when the row is unit-stride and aligned. The flags are uniform across the grid,
// so their branches never diverge.
//
// Numerics: fp32 throughout; int64 offsets; every boundary checked (any H, W, Ho, Wo >= 1);
// zero padding clamps coordinates to [-2, size + 1] before the float -> int conversion.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "random_field_kernel.cuh"

namespace sslfast {
namespace {

using namespace random_field;

template <typename in_t, typename out_t>
void launch(const at::Tensor& x, at::Tensor& out, const WarpArgs& args) {
  const int quads_per_row = (args.out_w + kQuad - 1) / kQuad;
  const int64_t total = static_cast<int64_t>(args.batch) * args.out_h * quads_per_row;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= INT32_MAX, "random_field_warp: output too large for one launch (", total, " quads)");
  auto stream = c10::cuda::getCurrentCUDAStream();
  random_field_warp_kernel<in_t, out_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      x.data_ptr<in_t>(), reinterpret_cast<out_t*>(out.data_ptr()), args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename in_t>
void launch_for_output(const at::Tensor& x, at::Tensor& out, const WarpArgs& args) {
  switch (out.scalar_type()) {
    case at::kFloat: return launch<in_t, float>(x, out, args);
    case at::kByte: return launch<in_t, uint8_t>(x, out, args);
    case at::kHalf: return launch<in_t, __half>(x, out, args);
    case at::kBFloat16: return launch<in_t, __nv_bfloat16>(x, out, args);
    default: TORCH_CHECK(false, "random_field_warp: out_dtype must be float32, float16, bfloat16 or uint8, got ",
                         out.scalar_type());
  }
}

const float* optional_float_ptr(const std::optional<at::Tensor>& t, const char* name, int64_t numel,
                                const at::Tensor& like) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->device() == like.device(), "random_field_warp: ", name, " must be on ", like.device(), ", got ",
              t->device());
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == numel, "random_field_warp: ",
              name, " must be a contiguous float32 tensor of ", numel, " elements, got ", t->scalar_type(), " ",
              t->sizes());
  return t->data_ptr<float>();
}

at::Tensor random_field_warp_cuda(const at::Tensor& images, const at::Tensor& fields, const at::Tensor& base,
                                  int64_t out_h, int64_t out_w, int64_t flags, const std::optional<at::Tensor>& luma,
                                  const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& std,
                                  at::ScalarType out_dtype) {
  TORCH_CHECK(images.is_cuda(), "random_field_warp: images must be a CUDA tensor, got ", images.device());
  TORCH_CHECK(images.dim() == 4, "random_field_warp: images must be (B, C, H, W), got ", images.sizes());
  const int64_t batch = images.size(0), channels = images.size(1);
  TORCH_CHECK(channels == 1 || channels == 3, "random_field_warp: images must have 1 or 3 channels, got ", channels);
  TORCH_CHECK(out_h >= 1 && out_w >= 1 && out_h <= INT32_MAX && out_w <= INT32_MAX,
              "random_field_warp: bad output size ", out_h, " x ", out_w);
  TORCH_CHECK(fields.device() == images.device() && fields.scalar_type() == at::kFloat && fields.is_contiguous() &&
                  fields.dim() == 4 && fields.size(0) == batch && fields.size(1) == kNumFields,
              "random_field_warp: fields must be a contiguous float32 (B, 9, rows, cols) tensor on ", images.device(),
              ", got ", fields.scalar_type(), " ", fields.sizes());
  TORCH_CHECK(base.device() == images.device() && base.scalar_type() == at::kFloat && base.is_contiguous() &&
                  base.dim() == 2 && base.size(0) == batch && base.size(1) == 6,
              "random_field_warp: base must be a contiguous float32 (B, 6) tensor, got ", base.sizes());
  TORCH_CHECK((mean.has_value()) == (std.has_value()), "random_field_warp: mean and std must be given together");
  TORCH_CHECK(!(flags & kContrast) || luma.has_value(), "random_field_warp: contrast needs luma");
  TORCH_CHECK(!(mean.has_value() && out_dtype == at::kByte), "random_field_warp: uint8 output cannot be normalised");
  TORCH_CHECK(!(flags & (kSaturation | kHue)) || channels == 3, "random_field_warp: saturation/hue need C = 3");

  const c10::cuda::CUDAGuard guard(images.device());
  at::Tensor x = images;
  if (x.scalar_type() != at::kByte && x.scalar_type() != at::kFloat) x = x.to(at::kFloat);
  auto out = at::empty({batch, channels, out_h, out_w}, images.options().dtype(out_dtype));
  if (out.numel() == 0) return out;

  WarpArgs args;
  args.fields = fields.data_ptr<float>();
  args.base = base.data_ptr<float>();
  args.luma = optional_float_ptr(luma, "luma", batch, images);
  args.mean = optional_float_ptr(mean, "mean", channels, images);
  args.std = optional_float_ptr(std, "std", channels, images);
  args.sxb = x.stride(0);
  args.sxc = x.stride(1);
  args.sxh = x.stride(2);
  args.sxw = x.stride(3);
  args.batch = static_cast<int>(batch);
  args.channels = static_cast<int>(channels);
  args.height = static_cast<int>(x.size(2));
  args.width = static_cast<int>(x.size(3));
  args.out_h = static_cast<int>(out_h);
  args.out_w = static_cast<int>(out_w);
  args.grid_h = static_cast<int>(fields.size(2));
  args.grid_w = static_cast<int>(fields.size(3));
  args.field_y_scale = out_h > 1 ? static_cast<float>(args.grid_h - 1) / static_cast<float>(out_h - 1) : 0.f;
  args.field_x_scale = out_w > 1 ? static_cast<float>(args.grid_w - 1) / static_cast<float>(out_w - 1) : 0.f;
  args.flags = static_cast<int>(flags);

  if (x.scalar_type() == at::kByte) {
    launch_for_output<uint8_t>(x, out, args);
  } else {
    launch_for_output<float>(x, out, args);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sslfast, m) {
  m.def(
      "random_field_warp(Tensor images, Tensor fields, Tensor base, int out_h, int out_w, int flags, "
      "Tensor? luma, Tensor? mean, Tensor? std, ScalarType out_dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(sslfast, CUDA, m) { m.impl("random_field_warp", &random_field_warp_cuda); }

}  // namespace sslfast
