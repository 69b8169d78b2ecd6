// GroupNorm -> 2x2 max pooling -> ReLU in one pass over the input, forward and backward.
//
// Built and loaded by compute/fused.py (compute.fused = true); see that module for why. Data is
// a channels-last float32 tensor, i.e. (N, H, W, C) in memory; the G groups are contiguous
// blocks of C / G channels. Each call handles samples [n0, n1), one at a time, streaming each
// sample's memory front to back (reading one group's channels at a time, strided, was slower).
//
// Compiled with -ffp-contract=off: every normalized value is x * scale + shift rounded twice, in
// vectorized loops and their scalar tails alike.

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

struct Shape {
  int64_t h, w, c, g;
  int64_t cg() const { return c / g; }
  int64_t ho() const { return h / 2; }
  int64_t wo() const { return w / 2; }
};

// max_pool2d's rule: the first maximum in row-major window order wins, and a NaN wins
inline void window_max(float a, float b, float c, float d, float& m, int& k) {
  m = a;
  k = 0;
  if (b > m || std::isnan(b)) { m = b; k = 1; }
  if (c > m || std::isnan(c)) { m = c; k = 2; }
  if (d > m || std::isnan(d)) { m = d; k = 3; }
}

}  // namespace

extern "C" {

// Writes the pooled output (N, Ho, Wo, C) and the group mean and 1 / std (N, G). For training
// (xa not null) also, per output element, the raw input at its window's maximum, xa, and a code:
// bits 0-1 the maximum's position in the window (row-major), bit 2 whether the ReLU let it
// through. The backward then reads those instead of the whole input once more.
void gnpr_forward(const float* x, float* out, float* xa, uint8_t* code, float* mean,
                  float* rstd, const float* gamma, const float* beta, int64_t h, int64_t w,
                  int64_t c, int64_t g, double eps, int64_t n0, int64_t n1) {
  const Shape s{h, w, c, g};
  const int64_t hw = h * w, cg = s.cg();
  std::vector<double> s1(c), s2(c);
  std::vector<float> ref(c), scale(c), shift(c), f1(c), f2(c);
  float* sc = scale.data();
  float* sh = shift.data();
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = x + n * hw * c;
    // pass 1: per-channel sums of (x - the channel's first value): no cancellation. Each image
    // row is summed in float (w terms), the rows in double; all in double ran at half the speed.
    for (int64_t j = 0; j < c; ++j) { ref[j] = xn[j]; s1[j] = 0.0; s2[j] = 0.0; }
    for (int64_t y = 0; y < h; ++y) {
      float* __restrict t1 = f1.data();
      float* __restrict t2 = f2.data();
      const float* __restrict rf = ref.data();
      for (int64_t j = 0; j < c; ++j) { t1[j] = 0.0f; t2[j] = 0.0f; }
      for (int64_t p = y * w; p < (y + 1) * w; ++p) {
        const float* __restrict row = xn + p * c;
        for (int64_t j = 0; j < c; ++j) {
          const float d = row[j] - rf[j];
          t1[j] += d;
          t2[j] += d * d;
        }
      }
      for (int64_t j = 0; j < c; ++j) { s1[j] += t1[j]; s2[j] += t2[j]; }
    }
    for (int64_t j0 = 0; j0 < c; j0 += cg) {
      const double count = static_cast<double>(hw * cg);
      double total = 0.0;
      for (int64_t j = j0; j < j0 + cg; ++j) total += s1[j] + hw * static_cast<double>(ref[j]);
      const double mu = total / count;
      double ss = 0.0;
      for (int64_t j = j0; j < j0 + cg; ++j) {
        const double off = ref[j] - mu;  // sum (x - mu)^2 = s2 + 2 off s1 + hw off^2
        ss += s2[j] + 2.0 * off * s1[j] + hw * off * off;
      }
      const double var = ss > 0.0 ? ss / count : 0.0;
      const double r = 1.0 / std::sqrt(var + eps);
      const int64_t grp = j0 / cg;
      mean[n * g + grp] = static_cast<float>(mu);
      rstd[n * g + grp] = static_cast<float>(r);
      for (int64_t j = j0; j < j0 + cg; ++j) {
        const double a = r * gamma[j];
        sc[j] = static_cast<float>(a);
        sh[j] = static_cast<float>(beta[j] - mu * a);
      }
    }
    // pass 2: normalize the four values of each window, keep the largest, then ReLU
    const int64_t ho = s.ho(), wo = s.wo();
    float* on = out + n * ho * wo * c;
    for (int64_t i = 0; i < ho; ++i) {
      for (int64_t k = 0; k < wo; ++k) {
        const float* a = xn + ((2 * i) * w + 2 * k) * c;
        const float* b = a + c;
        const float* d = a + w * c;
        const float* e = d + c;
        float* o = on + (i * wo + k) * c;
        if (xa == nullptr) {
          for (int64_t j = 0; j < c; ++j) {
            float m;
            int am;
            window_max(a[j] * sc[j] + sh[j], b[j] * sc[j] + sh[j], d[j] * sc[j] + sh[j],
                       e[j] * sc[j] + sh[j], m, am);
            o[j] = m < 0.0f ? 0.0f : m;  // a NaN stays NaN, as torch's relu keeps it
          }
          continue;
        }
        float* __restrict xo = xa + (n * ho * wo + i * wo + k) * c;
        uint8_t* __restrict co = code + (n * ho * wo + i * wo + k) * c;
        float* __restrict oo = o;
#pragma GCC ivdep
        for (int64_t j = 0; j < c; ++j) {
          // window_max, also keeping the raw input of the maximum
          float m = a[j] * sc[j] + sh[j], v = a[j];
          int am = 0;
          const float nb = b[j] * sc[j] + sh[j], nd = d[j] * sc[j] + sh[j];
          const float ne = e[j] * sc[j] + sh[j];
          if (nb > m || std::isnan(nb)) { m = nb; am = 1; v = b[j]; }
          if (nd > m || std::isnan(nd)) { m = nd; am = 2; v = d[j]; }
          if (ne > m || std::isnan(ne)) { m = ne; am = 3; v = e[j]; }
          oo[j] = m < 0.0f ? 0.0f : m;
          xo[j] = v;
          co[j] = static_cast<uint8_t>(am | (m > 0.0f ? 4 : 0));
        }
      }
    }
  }
}

// Gradients of the forward above from its xa and code: dx (N, H, W, C), and each sample's
// contribution to the GroupNorm weight and bias gradients, dgamma and dbeta (N, C), summed over N
// by the caller.
void gnpr_backward(const float* x, const float* gout, const float* xa, const uint8_t* code,
                   float* dx, float* dgamma, float* dbeta, const float* mean, const float* rstd,
                   const float* gamma, int64_t h, int64_t w, int64_t c, int64_t g, int64_t n0,
                   int64_t n1) {
  const Shape s{h, w, c, g};
  const int64_t hw = h * w, cg = s.cg();
  const int64_t ho = s.ho(), wo = s.wo();
  std::vector<float> mu(c), r(c), db(c), dg(c), p(c), q(c), z(c);
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = x + n * hw * c;
    const float* gn = gout + n * ho * wo * c;
    const float* xan = xa + n * ho * wo * c;
    const uint8_t* cn = code + n * ho * wo * c;
    float* dxn = dx + n * hw * c;
    for (int64_t j = 0; j < c; ++j) {
      const int64_t grp = j / cg;
      mu[j] = mean[n * g + grp];
      r[j] = rstd[n * g + grp];
      db[j] = 0.0f;
      dg[j] = 0.0f;
    }
    // pass A: the gradient reaching each window's maximum (if the ReLU let it through), summed
    // per channel as is and times the normalized input: the GroupNorm bias and weight gradients
    for (int64_t o = 0; o < ho * wo; ++o) {
      const float* __restrict go = gn + o * c;
      const float* __restrict xo = xan + o * c;
      const uint8_t* __restrict co = cn + o * c;
      for (int64_t j = 0; j < c; ++j) {
        const float gy = (co[j] & 4) ? go[j] : 0.0f;
        db[j] += gy;
        dg[j] += gy * ((xo[j] - mu[j]) * r[j]);
      }
    }
    // dx = r (gamma dy - mean(gamma dy) - xhat mean(gamma dy xhat)), means over the group;
    // as dx = p dy + q x + z per channel
    const double count = static_cast<double>(hw * cg);
    for (int64_t j0 = 0; j0 < c; j0 += cg) {
      double sa = 0.0, sb = 0.0;
      for (int64_t j = j0; j < j0 + cg; ++j) {
        sa += static_cast<double>(gamma[j]) * db[j];
        sb += static_cast<double>(gamma[j]) * dg[j];
      }
      const double rr = r[j0], m0 = mu[j0];
      const double qq = -rr * rr * sb / count;
      const double zz = -rr * sa / count - qq * m0;
      for (int64_t j = j0; j < j0 + cg; ++j) {
        p[j] = static_cast<float>(rr * gamma[j]);
        q[j] = static_cast<float>(qq);
        z[j] = static_cast<float>(zz);
      }
    }
    // pass B: every input position; only a window's maximum gets its share of dy
    for (int64_t i = 0; i < ho; ++i) {
      for (int64_t k = 0; k < wo; ++k) {
        const int64_t base = ((2 * i) * w + 2 * k) * c;
        const float* __restrict a = xn + base;
        const float* __restrict b = a + c;
        const float* __restrict d = a + w * c;
        const float* __restrict e = d + c;
        float* __restrict da = dxn + base;
        float* __restrict dbp = da + c;
        float* __restrict dd = da + w * c;
        float* __restrict de = dd + c;
        const float* __restrict go = gn + (i * wo + k) * c;
        const uint8_t* __restrict co = cn + (i * wo + k) * c;
        const float* __restrict ps = p.data();
        const float* __restrict qs = q.data();
        const float* __restrict zs = z.data();
#pragma GCC ivdep
        for (int64_t j = 0; j < c; ++j) {
          const int cj = co[j];
          const float gy = (cj & 4) ? ps[j] * go[j] : 0.0f;
          const int am = cj & 3;
          da[j] = qs[j] * a[j] + zs[j] + (am == 0 ? gy : 0.0f);
          dbp[j] = qs[j] * b[j] + zs[j] + (am == 1 ? gy : 0.0f);
          dd[j] = qs[j] * d[j] + zs[j] + (am == 2 ? gy : 0.0f);
          de[j] = qs[j] * e[j] + zs[j] + (am == 3 ? gy : 0.0f);
        }
      }
    }
    // rows and columns no window covers (odd H or W): normalized, but no gradient from above
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x0 = (y < 2 * ho ? 2 * wo : 0); x0 < w; ++x0) {
        const float* a = xn + (y * w + x0) * c;
        float* da = dxn + (y * w + x0) * c;
        for (int64_t j = 0; j < c; ++j) da[j] = q[j] * a[j] + z[j];
      }
    }
    float* dgn = dgamma + n * c;
    float* dbn = dbeta + n * c;
    for (int64_t j = 0; j < c; ++j) {
      dgn[j] = dg[j];
      dbn[j] = db[j];
    }
  }
}

}  // extern "C"
