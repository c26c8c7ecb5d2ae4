// The CPU expert loop of model/experts.py (_LoopExperts) in C++, expert by expert, without
// Python between the operations: at small expert shapes the Python dispatch of ~25 operations
// per expert took a fifth of the layer's time (README, Measured speed). Gathers, matmuls and
// scatter-adds are the Python loop's ATen calls; the SwiGLU activation, its gradient and the
// routing weights are fused into one pass over each expert's rows forward and one backward,
// where ATen took three and eight (swiglu_forward, swiglu_backward). Slots arrive sorted by
// expert; tok_M[s] is the token of sorted slot s and counts[e] the slots of expert e. Legend as
// in experts.py: T tokens, D d_model, M kept slots, F expert hidden, H = 2F (gate and up packed).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

using at::Tensor;

namespace {

std::vector<int64_t> starts_of(const std::vector<int64_t>& counts) {
  std::vector<int64_t> starts(counts.size() + 1, 0);
  for (size_t e = 0; e < counts.size(); ++e) starts[e + 1] = starts[e] + counts[e];
  return starts;
}

void check(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, " must be a contiguous CPU tensor");
}

// float32/float64 only: a bf16 sum of a token's k*G slots would lose precision with G (the
// Python loop accumulates those in float32)
void check_dtype(const Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "the C++ expert loop takes float32 or float64, got ", x.scalar_type());
}

// The rows a kernel reads and the rows it writes never overlap: vectorize without checks.
#if defined(__clang__)
#define MOESCALE_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define MOESCALE_IVDEP _Pragma("GCC ivdep")
#else
#define MOESCALE_IVDEP
#endif

// x86-64 builds for the baseline CPU: compile the float32 kernels also for AVX2 and AVX-512
// and pick one at load time (an ifunc: GCC and glibc), so one build serves every machine that
// shares the cache.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define MOESCALE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MOESCALE_CLONES
#endif

// exp in float32: Cody-Waite range reduction and Cephes' degree-5 polynomial (within 2 ulp), in
// branch-free arithmetic the compiler vectorizes (std::exp is a libm call, which it does not).
// Clamped to [-87.3, 88.3], where 2^n stays a normal float; NaN passes through.
inline float exp_f32(float x) {
  const float v = std::min(std::max(x, -87.3f), 88.3f);
  const float n = (v * 1.44269504f + 12582912.f) - 12582912.f;  // round(v / ln 2)
  const float r = (v - n * 0.693359375f) + n * 2.12194440e-4f;    // v - n ln 2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const float e = n == n ? n : 0.f;  // NaN (whose p is NaN) must not reach the int conversion
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(e) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline float sigmoid(float a) { return 1.f / (1.f + exp_f32(-a)); }
inline double sigmoid(double a) { return 1.0 / (1.0 + std::exp(-a)); }  // tests' dtype: libm

// g = silu(a) * b * w, rows [r0, r1) of ab (rows x 2F: a | b) into g (rows x F)
template <typename T>
__attribute__((always_inline)) inline void swiglu_fwd_rows(const T* ab, const T* w, T* g,
                                                           int64_t F, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T *a = ab + r * 2 * F, *b = a + F;
    T* out = g + r * F;
    const T wr = w[r];
    MOESCALE_IVDEP
    for (int64_t f = 0; f < F; ++f) out[f] = a[f] * sigmoid(a[f]) * b[f] * wr;
  }
}

// From dgw, the gradient of the weighted activation g * w (g = silu(a) * b): gw = g * w (dw2's
// operand), dab = (da | db), and dw[r] = sum_f dgw * g, the routing weight's gradient.
// `prod` is a scratch row of F: the products are summed after the loop in 16 partial sums,
// an order the compiler may vectorize (it keeps a single running sum's order otherwise).
template <typename T>
__attribute__((always_inline)) inline void swiglu_bwd_rows(const T* ab, const T* w,
                                                           const T* dgw, T* gw, T* dab, T* dw,
                                                           T* prod, int64_t F, int64_t r0,
                                                           int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T *a = ab + r * 2 * F, *b = a + F, *dgr = dgw + r * F;
    T *gwr = gw + r * F, *da = dab + r * 2 * F, *db = da + F;
    const T wr = w[r];
    MOESCALE_IVDEP
    for (int64_t f = 0; f < F; ++f) {
      const T s = sigmoid(a[f]), silu = a[f] * s, g = silu * b[f], dg = dgr[f] * wr;
      prod[f] = dgr[f] * g;
      gwr[f] = g * wr;
      db[f] = dg * silu;
      da[f] = dg * b[f] * (s * (T(1) + a[f] * (T(1) - s)));  // d silu(a) / da
    }
    constexpr int L = 16;
    T part[L] = {};
    int64_t f = 0;
    for (; f + L <= F; f += L)
      for (int j = 0; j < L; ++j) part[j] += prod[f + j];
    for (; f < F; ++f) part[0] += prod[f];
    T acc = 0;
    for (int j = 0; j < L; ++j) acc += part[j];
    dw[r] = acc;
  }
}

// one non-template entry per dtype: target_clones takes plain functions
MOESCALE_CLONES void swiglu_fwd(const float* ab, const float* w, float* g, int64_t F, int64_t r0,
                                int64_t r1) {
  swiglu_fwd_rows(ab, w, g, F, r0, r1);
}
void swiglu_fwd(const double* ab, const double* w, double* g, int64_t F, int64_t r0, int64_t r1) {
  swiglu_fwd_rows(ab, w, g, F, r0, r1);
}
MOESCALE_CLONES void swiglu_bwd(const float* ab, const float* w, const float* dgw, float* gw,
                                float* dab, float* dw, float* prod, int64_t F, int64_t r0,
                                int64_t r1) {
  swiglu_bwd_rows(ab, w, dgw, gw, dab, dw, prod, F, r0, r1);
}
void swiglu_bwd(const double* ab, const double* w, const double* dgw, double* gw, double* dab,
                double* dw, double* prod, int64_t F, int64_t r0, int64_t r1) {
  swiglu_bwd_rows(ab, w, dgw, gw, dab, dw, prod, F, r0, r1);
}

constexpr int64_t kRowGrain = 64;  // rows per parallel task

// the rows and F of ab = (a | b), rows x 2F
std::pair<int64_t, int64_t> pre_activation_shape(const Tensor& ab) {
  TORCH_CHECK(ab.dim() == 2 && ab.size(1) % 2 == 0, "ab must be rows x 2F, got ", ab.sizes());
  return {ab.size(0), ab.size(1) / 2};
}

void check_rows(const Tensor& t, int64_t rows, int64_t cols, const char* name) {
  check(t, name);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, name, " must be ", rows,
              " x ", cols, ", got ", t.sizes());
}

}  // namespace

// g = silu(a) * b * w for ab = (a | b), rows x 2F; w, rows.
void swiglu_forward(const Tensor& ab, const Tensor& w, const Tensor& g) {
  const auto shape = pre_activation_shape(ab);  // no structured binding: lambdas capture it
  const int64_t rows = shape.first, F = shape.second;
  check(ab, "ab");  // its shape: pre_activation_shape
  check_rows(g, rows, F, "g");
  check(w, "w");
  TORCH_CHECK(w.numel() == rows && w.scalar_type() == ab.scalar_type() &&
                  g.scalar_type() == ab.scalar_type(), "w and g must match ab");
  check_dtype(ab);
  AT_DISPATCH_FLOATING_TYPES(ab.scalar_type(), "swiglu_forward", [&] {
    const scalar_t *abp = ab.data_ptr<scalar_t>(), *wp = w.data_ptr<scalar_t>();
    scalar_t* gp = g.data_ptr<scalar_t>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
      swiglu_fwd(abp, wp, gp, F, r0, r1);
    });
  });
}

// gw = g * w, dab = (da | db) and dw (rows) from dgw, the gradient of g * w.
void swiglu_backward(const Tensor& ab, const Tensor& w, const Tensor& dgw, const Tensor& gw,
                     const Tensor& dab, const Tensor& dw) {
  const auto shape = pre_activation_shape(ab);  // no structured binding: lambdas capture it
  const int64_t rows = shape.first, F = shape.second;
  check(ab, "ab");  // its shape: pre_activation_shape
  check_rows(dgw, rows, F, "dgw");
  check_rows(gw, rows, F, "gw");
  check_rows(dab, rows, 2 * F, "dab");
  check(w, "w");
  check(dw, "dw");
  for (auto* t : {&w, &dgw, &gw, &dab, &dw}) {
    TORCH_CHECK(t->scalar_type() == ab.scalar_type(), "swiglu_backward: dtypes must match ab");
  }
  TORCH_CHECK(w.numel() == rows && dw.numel() == rows, "w and dw must have ab's rows");
  check_dtype(ab);
  AT_DISPATCH_FLOATING_TYPES(ab.scalar_type(), "swiglu_backward", [&] {
    const scalar_t *abp = ab.data_ptr<scalar_t>(), *wp = w.data_ptr<scalar_t>();
    const scalar_t* dgp = dgw.data_ptr<scalar_t>();
    scalar_t *gwp = gw.data_ptr<scalar_t>(), *dabp = dab.data_ptr<scalar_t>();
    scalar_t* dwp = dw.data_ptr<scalar_t>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> prod(F);
      swiglu_bwd(abp, wp, dgp, gwp, dabp, dwp, prod.data(), F, r0, r1);
    });
  });
}

// Returns (y_TD, ab_MH): the layer's output and the gate|up pre-activations backward needs.
std::vector<Tensor> experts_forward(const Tensor& x_TD, const Tensor& w_M, const Tensor& w13_XDH,
                                    const Tensor& w2_XFD, const Tensor& tok_M,
                                    const std::vector<int64_t>& counts) {
  for (auto* t : {&x_TD, &w_M, &w13_XDH, &w2_XFD, &tok_M}) check(*t, "experts_forward input");
  check_dtype(x_TD);
  const int64_t T = x_TD.size(0), D = x_TD.size(1), F = w2_XFD.size(1), M = tok_M.size(0);
  const auto starts = starts_of(counts);
  TORCH_CHECK(starts.back() == M, "counts must add up to the kept slots");
  const int64_t most = counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
  Tensor y_TD = at::zeros({T, D}, x_TD.options());
  Tensor ab_MH = at::empty({M, 2 * F}, x_TD.options());
  Tensor x_RD = at::empty({most, D}, x_TD.options());
  Tensor g_RF = at::empty({most, F}, x_TD.options());
  Tensor o_RD = at::empty({most, D}, x_TD.options());
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t s0 = starts[e], rows = counts[e];
    if (rows == 0) continue;
    Tensor x = x_RD.narrow(0, 0, rows), g = g_RF.narrow(0, 0, rows), o = o_RD.narrow(0, 0, rows);
    Tensor tok = tok_M.narrow(0, s0, rows);
    at::index_select_out(x, x_TD, 0, tok);
    Tensor ab = ab_MH.narrow(0, s0, rows);
    at::mm_out(ab, x, w13_XDH[e]);
    swiglu_forward(ab, w_M.narrow(0, s0, rows), g);
    at::mm_out(o, g, w2_XFD[e]);
    y_TD.index_add_(0, tok, o);
  }
  return {y_TD, ab_MH};
}

// Returns (dx_TD, dw_M, dw13_XDH, dw2_XFD); recomputes the activation from ab_MH.
std::vector<Tensor> experts_backward(const Tensor& dy_TD, const Tensor& x_TD, const Tensor& w_M,
                                     const Tensor& w13_XDH, const Tensor& w2_XFD,
                                     const Tensor& tok_M, const Tensor& ab_MH,
                                     const std::vector<int64_t>& counts) {
  for (auto* t : {&dy_TD, &x_TD, &w_M, &w13_XDH, &w2_XFD, &tok_M, &ab_MH}) {
    check(*t, "experts_backward input");
  }
  check_dtype(x_TD);
  const int64_t T = x_TD.size(0), D = x_TD.size(1), F = w2_XFD.size(1);
  const auto starts = starts_of(counts);
  const int64_t most = counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
  auto opts = x_TD.options();
  Tensor dx_TD = at::zeros({T, D}, opts);
  Tensor dw_M = at::zeros_like(w_M);
  Tensor dw13 = at::zeros_like(w13_XDH);
  Tensor dw2 = at::zeros_like(w2_XFD);
  Tensor x_RD = at::empty({most, D}, opts), dy_RD = at::empty({most, D}, opts);
  Tensor dg_RF = at::empty({most, F}, opts), gw_RF = at::empty({most, F}, opts);
  Tensor dab_RH = at::empty({most, 2 * F}, opts), o_RD = at::empty({most, D}, opts);
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t s0 = starts[e], rows = counts[e];
    if (rows == 0) continue;
    Tensor x = x_RD.narrow(0, 0, rows), dy = dy_RD.narrow(0, 0, rows);
    Tensor tok = tok_M.narrow(0, s0, rows);
    at::index_select_out(x, x_TD, 0, tok);
    at::index_select_out(dy, dy_TD, 0, tok);
    Tensor ab = ab_MH.narrow(0, s0, rows);
    Tensor dab = dab_RH.narrow(0, 0, rows);
    Tensor dgw = dg_RF.narrow(0, 0, rows), gw = gw_RF.narrow(0, 0, rows);
    at::mm_out(dgw, dy, w2_XFD[e].t());  // grad of the weighted activation g * w
    Tensor dw = dw_M.narrow(0, s0, rows);
    swiglu_backward(ab, w_M.narrow(0, s0, rows), dgw, gw, dab, dw);
    Tensor dw2_e = dw2[e];
    at::mm_out(dw2_e, gw.t(), dy);
    Tensor dw13_e = dw13[e];
    at::mm_out(dw13_e, x.t(), dab);
    Tensor o = o_RD.narrow(0, 0, rows);
    at::mm_out(o, dab, w13_XDH[e].t());
    dx_TD.index_add_(0, tok, o);
  }
  return {dx_TD, dw_M, dw13, dw2};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("experts_forward", &experts_forward, "sorted-slot expert loop, forward");
  m.def("experts_backward", &experts_backward, "sorted-slot expert loop, backward");
  m.def("swiglu_forward", &swiglu_forward, "fused SwiGLU times routing weight, forward");
  m.def("swiglu_backward", &swiglu_backward, "fused SwiGLU times routing weight, backward");
}
