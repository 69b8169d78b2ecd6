// GN-LeNet's first convolution for J models side by side (compute.fused = true): 5x5, padding 2,
// a few input channels, 32 output channels per model, forward and weight/bias gradient.
//
// Built and loaded by compute/fused.py. oneDNN runs this grouped convolution (3 input channels
// per group) at ~0.4x the matmul rate; here each output pixel's 32 channels are two 16-float
// vectors, 4 pixels are computed at once (8 accumulators in registers), and every input value
// is broadcast from a zero-padded copy of its plane. GCC/Clang vector extensions: on a CPU
// without 512-bit vectors the compiler splits them. Compiled with floating-point contraction
// on (multiply-add in one rounding); the sums run in another order than oneDNN's, so results
// match torch only to float rounding.
//
// Layouts: x (J, B, C, H, W) contiguous; wt (J, C*25, 32), i.e. each model's weight with the
// tap (c, kh, kw) first; out (B, H, W, J*32), a channels-last (B, J*32, H, W) tensor.

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float v16 __attribute__((vector_size(64)));
// 4 pixels at a time: 8 accumulators; 8 pixels ran at 0.7x (gcc then slides the input window
// through registers and broadcasts on the port the multiply-adds need)
constexpr int K = 5, PAD = 2, OC = 32, PX = 4;

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

// the (C, Hp, Wp) zero-padded copy of one sample's planes; Wp leaves room for whole pixel blocks
struct Padded {
  int64_t c, h, w, hp, wp;
  std::vector<float> buf;
  Padded(int64_t c_, int64_t h_, int64_t w_)
      : c(c_), h(h_), w(w_), hp(h_ + 2 * PAD), wp((w_ + PX - 1) / PX * PX + 2 * PAD),
        buf(c_ * hp * wp, 0.0f) {}
  void fill(const float* x) {  // borders stay zero: only the interior is written
    for (int64_t ci = 0; ci < c; ++ci)
      for (int64_t y = 0; y < h; ++y)
        std::memcpy(&buf[(ci * hp + y + PAD) * wp + PAD], x + (ci * h + y) * w, w * sizeof(float));
  }
  const float* row(int64_t ci, int64_t y) const { return &buf[(ci * hp + y) * wp]; }
};

// One model's 32 output channels for one sample: out[(y * w + x) * row_stride + 0..31].
void conv_sample(const Padded& xp, const float* wj, const float* bias_j, float* out,
                 int64_t row_stride) {
  const int64_t c = xp.c, h = xp.h, w = xp.w;
  const v16 b0 = load(bias_j), b1 = load(bias_j + 16);
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x0 = 0; x0 < w; x0 += PX) {
      v16 acc0[PX], acc1[PX];
      for (int p = 0; p < PX; ++p) { acc0[p] = b0; acc1[p] = b1; }
      for (int64_t ci = 0; ci < c; ++ci) {
        for (int kh = 0; kh < K; ++kh) {
          const float* r = xp.row(ci, y + kh) + x0;
          const float* wk = wj + (ci * K + kh) * K * OC;
          for (int kw = 0; kw < K; ++kw) {
            const v16 w0 = load(wk + kw * OC), w1 = load(wk + kw * OC + 16);
            for (int p = 0; p < PX; ++p) {
              const float v = r[p + kw];
              acc0[p] += v * w0;
              acc1[p] += v * w1;
            }
          }
        }
      }
      float* o = out + (y * w + x0) * row_stride;
      const int n = static_cast<int>(w - x0 < PX ? w - x0 : PX);
      for (int p = 0; p < n; ++p) {
        store(o + p * row_stride, acc0[p]);
        store(o + p * row_stride + 16, acc1[p]);
      }
    }
  }
}

}  // namespace

extern "C" {

// out for the (model, sample) pairs t in [t0, t1), t = j * B + b.
void conv_first_forward(const float* x, const float* wt, const float* bias, float* out,
                        int64_t j_models, int64_t b_samples, int64_t c, int64_t h, int64_t w,
                        int64_t t0, int64_t t1) {
  Padded xp(c, h, w);
  const int64_t taps = c * K * K, row_stride = j_models * OC;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t j = t / b_samples, b = t % b_samples;
    xp.fill(x + t * c * h * w);
    conv_sample(xp, wt + j * taps * OC, bias + j * OC, out + b * h * w * row_stride + j * OC,
                row_stride);
  }
}

// gnpr_forward of gn_pool_relu.cpp (another library, compiled without contraction), passed in
// by the caller
typedef void (*GnForward)(const float*, float*, float*, uint8_t*, float*, float*, const float*,
                          const float*, int64_t, int64_t, int64_t, int64_t, double, int64_t,
                          int64_t);

// Evaluation: J models on the same samples x (B, C, H, W), samples [b0, b1). Each sample's
// convolution output (H, W, J*32) stays in a buffer the size of the L2 cache or less, where
// gn_forward normalizes, pools and clips it into out (B, H/2, W/2, J*32): the first block's
// activations never go to memory.
void conv_first_gn_forward(const float* x, const float* wt, const float* bias,
                           const float* gamma, const float* beta, float* out, void* gn_forward,
                           int64_t j_models, int64_t c, int64_t h, int64_t w, int64_t groups,
                           double eps, int64_t b0, int64_t b1) {
  const auto gn = reinterpret_cast<GnForward>(gn_forward);
  Padded xp(c, h, w);
  const int64_t taps = c * K * K, row_stride = j_models * OC;
  std::vector<float> buf(h * w * row_stride), mean(groups), rstd(groups);
  const int64_t out_size = (h / 2) * (w / 2) * row_stride;
  for (int64_t b = b0; b < b1; ++b) {
    xp.fill(x + b * c * h * w);
    for (int64_t j = 0; j < j_models; ++j)
      conv_sample(xp, wt + j * taps * OC, bias + j * OC, buf.data() + j * OC, row_stride);
    gn(buf.data(), out + b * out_size, nullptr, nullptr, mean.data(), rstd.data(), gamma, beta,
       h, w, row_stride, groups, eps, 0, 1);
  }
}

// The weight and bias gradients of models [j0, j1): dwt (J, C*25, 32) and dbias (J, 32), from
// the output gradient gout in the layout of out. Each row of pixels is summed in registers
// before it is added to the model's running sums, which keeps the float error of the long sums
// small.
void conv_first_backward(const float* x, const float* gout, float* dwt, float* dbias,
                         int64_t j_models, int64_t b_samples, int64_t c, int64_t h, int64_t w,
                         int64_t j0, int64_t j1) {
  Padded xp(c, h, w);
  const int64_t taps = c * K * K, row_stride = j_models * OC;
  for (int64_t j = j0; j < j1; ++j) {
    float* dw = dwt + j * taps * OC;
    std::memset(dw, 0, taps * OC * sizeof(float));
    v16 db0 = {}, db1 = {};
    for (int64_t b = 0; b < b_samples; ++b) {
      xp.fill(x + (j * b_samples + b) * c * h * w);
      for (int64_t y = 0; y < h; ++y) {
        const float* g = gout + (b * h + y) * w * row_stride + j * OC;
        v16 r0 = {}, r1 = {};
        for (int64_t px = 0; px < w; ++px) {
          r0 += load(g + px * row_stride);
          r1 += load(g + px * row_stride + 16);
        }
        db0 += r0;
        db1 += r1;
        for (int64_t ci = 0; ci < c; ++ci) {
          for (int kh = 0; kh < K; ++kh) {
            const float* r = xp.row(ci, y + kh);
            v16 a0[K] = {}, a1[K] = {};
            for (int64_t px = 0; px < w; ++px) {
              const v16 g0 = load(g + px * row_stride), g1 = load(g + px * row_stride + 16);
              for (int kw = 0; kw < K; ++kw) {
                const float v = r[px + kw];
                a0[kw] += v * g0;
                a1[kw] += v * g1;
              }
            }
            float* d = dw + (ci * K + kh) * K * OC;
            for (int kw = 0; kw < K; ++kw) {
              store(d + kw * OC, load(d + kw * OC) + a0[kw]);
              store(d + kw * OC + 16, load(d + kw * OC + 16) + a1[kw]);
            }
          }
        }
      }
    }
    store(dbias + j * OC, db0);
    store(dbias + j * OC + 16, db1);
  }
}

}  // extern "C"
