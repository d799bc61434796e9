// Runs the CUDA kernel of csrc/random_field_kernel.cuh on the CPU (see cuda_shim.h).
//
// usage: random_field_emulation DIR
// DIR/meta.txt holds "B C H W Ho Wo GH GW flags in_u8 out_u8 has_luma has_norm sxb sxc sxh sxw";
// DIR/{x,fields,base,luma,mean,std}.bin are the raw arrays (x uint8 or float32, the rest
// float32); the kernel's output is written to DIR/out.bin (float32 or uint8, (B, C, Ho, Wo)).
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "cuda_shim.h"
#include "../../csrc/random_field_kernel.cuh"

using namespace sslfast::random_field;

template <typename T>
std::vector<T> read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

template <typename in_t, typename out_t>
void run(const std::string& dir, const WarpArgs& args, int64_t out_numel) {
  std::vector<in_t> x = read<in_t>(dir + "/x.bin");
  std::vector<out_t> out(out_numel);
  const int quads_per_row = (args.out_w + kQuad - 1) / kQuad;
  const int64_t total = static_cast<int64_t>(args.batch) * args.out_h * quads_per_row;
  blockDim.x = kThreads;
  for (int64_t block = 0; block * kThreads < total; ++block) {
    blockIdx.x = static_cast<unsigned>(block);
    for (unsigned t = 0; t < kThreads; ++t) {
      threadIdx.x = t;
      random_field_warp_kernel<in_t, out_t>(x.data(), out.data(), args);
    }
  }
  std::ofstream f(dir + "/out.bin", std::ios::binary);
  f.write(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(out_t));
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::ifstream meta(dir + "/meta.txt");
  int64_t B, C, H, W, Ho, Wo, GH, GW, flags, in_u8, out_u8, has_luma, has_norm, sxb, sxc, sxh, sxw;
  if (!(meta >> B >> C >> H >> W >> Ho >> Wo >> GH >> GW >> flags >> in_u8 >> out_u8 >> has_luma >> has_norm >> sxb >>
        sxc >> sxh >> sxw)) {
    std::fprintf(stderr, "bad meta.txt\n");
    return 2;
  }
  std::vector<float> fields = read<float>(dir + "/fields.bin"), base = read<float>(dir + "/base.bin");
  std::vector<float> luma = read<float>(dir + "/luma.bin"), mean = read<float>(dir + "/mean.bin");
  std::vector<float> std_ = read<float>(dir + "/std.bin");
  WarpArgs args;
  args.fields = fields.data();
  args.base = base.data();
  args.luma = has_luma ? luma.data() : nullptr;
  args.mean = has_norm ? mean.data() : nullptr;
  args.std = has_norm ? std_.data() : nullptr;
  args.sxb = sxb;
  args.sxc = sxc;
  args.sxh = sxh;
  args.sxw = sxw;
  args.batch = static_cast<int>(B);
  args.channels = static_cast<int>(C);
  args.height = static_cast<int>(H);
  args.width = static_cast<int>(W);
  args.out_h = static_cast<int>(Ho);
  args.out_w = static_cast<int>(Wo);
  args.grid_h = static_cast<int>(GH);
  args.grid_w = static_cast<int>(GW);
  args.field_y_scale = Ho > 1 ? static_cast<float>(GH - 1) / static_cast<float>(Ho - 1) : 0.f;
  args.field_x_scale = Wo > 1 ? static_cast<float>(GW - 1) / static_cast<float>(Wo - 1) : 0.f;
  args.flags = static_cast<int>(flags);
  const int64_t out_numel = B * C * Ho * Wo;
  if (in_u8 && out_u8) run<uint8_t, uint8_t>(dir, args, out_numel);
  if (in_u8 && !out_u8) run<uint8_t, float>(dir, args, out_numel);
  if (!in_u8 && out_u8) run<float, uint8_t>(dir, args, out_numel);
  if (!in_u8 && !out_u8) run<float, float>(dir, args, out_numel);
  return 0;
}
