// The CPU expert loop of model/experts.py (_LoopExperts) in C++, expert by expert, without
// Python between the operations: at small expert shapes the Python dispatch of ~25 operations
// per expert took a fifth of the layer's time (README, Measured speed). Gathers, matmuls and
// scatter-adds are the Python loop's ATen calls; the SwiGLU activation, its gradient and the
// routing weights are fused into one pass over each expert's rows forward and one backward,
// where ATen took three and eight (swiglu_forward, swiglu_backward). Slots arrive sorted by
// expert; tok_M[s] is the token of sorted slot s and counts[e] the slots of expert e. Legend as
// in experts.py: T tokens, D d_model, M kept slots, F expert hidden, H = 2F (gate and up packed).
//
// Small float32 experts run blocked loops instead (experts_forward_blocked and
// experts_backward_blocked): each thread takes its share of the sorted slots (forward) or of the
// experts (backward, so that it owns their weight gradients) and runs them in blocks of
// kBlockRows rows, gather to scatter-add, while the block is in cache, calling oneDNN's
// single-threaded small-matrix kernel (ATen's cpublas::brgemm). Per-operation ATen calls copy
// each expert's k*G-fold rows through memory and split every small matmul across threads.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <utility>
#include <vector>
#if defined(__unix__)
#include <unistd.h>
#endif

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

namespace {

// The weights, routing weights and token indices the expert loops index by hand must fit x_TD,
// the counts and each other (ATen's ops check their own arguments; raw pointers do not).
void check_shapes(const Tensor& x_TD, const Tensor& w_M, const Tensor& w13_XDH,
                  const Tensor& w2_XFD, const Tensor& tok_M, const std::vector<int64_t>& counts) {
  const int64_t X = counts.size(), T = x_TD.size(0), D = x_TD.size(1), M = tok_M.size(0);
  TORCH_CHECK(std::accumulate(counts.begin(), counts.end(), int64_t{0}) == M,
              "counts must add up to the kept slots");
  TORCH_CHECK(x_TD.dim() == 2 && w13_XDH.dim() == 3 && w2_XFD.dim() == 3, "x must be T x D, "
              "w13 X x D x 2F and w2 X x F x D");
  const int64_t F = w2_XFD.size(1);
  TORCH_CHECK(w13_XDH.size(0) == X && w13_XDH.size(1) == D && w13_XDH.size(2) == 2 * F &&
                  w2_XFD.size(0) == X && w2_XFD.size(2) == D,
              "expert weights ", w13_XDH.sizes(), " and ", w2_XFD.sizes(), " do not fit ", X,
              " experts of d_model ", D);
  TORCH_CHECK(w_M.numel() == M && w_M.scalar_type() == x_TD.scalar_type() &&
                  w13_XDH.scalar_type() == x_TD.scalar_type() &&
                  w2_XFD.scalar_type() == x_TD.scalar_type() && tok_M.scalar_type() == at::kLong,
              "one routing weight per kept slot, weights in x's dtype, int64 token indices");
  if (M > 0) {
    const int64_t* tok = tok_M.data_ptr<int64_t>();
    const auto range = std::minmax_element(tok, tok + M);
    TORCH_CHECK(*range.first >= 0 && *range.second < T, "token indices must lie in [0, ", T, ")");
  }
}

// torch's float32 brgemm, on x86-64 where it was measured (oneDNN's kernel; elsewhere ATen
// falls back to a BLAS call per block); without it the per-operation loop runs
#if defined(CPUBLAS_BRGEMM_F32F32F32) && defined(__x86_64__)
#define MOESCALE_BLOCKED 1
#endif
#ifdef MOESCALE_BLOCKED
constexpr bool kHaveBlocked = true;
#else
constexpr bool kHaveBlocked = false;
#endif
constexpr int64_t kBlockRows = 128;  // slots per block: 64-256 measured within 2 % at G 4-8
constexpr int64_t kBlockCols = 256;  // brgemm ran G 1's 2F = 2048 columns 1.45x slower whole
// Above these, the per-operation loop: an expert whose weights do not stay in a core's L2
// between blocks, and private output buffers (one T x D per thread) that would take too much
// memory. Measured at d_model 256, d_ff 1024, 2 threads, on a 2 MiB L2 with AVX-512: the blocked
// forward was 3 % slower at G 1 (3 MB of weights per expert) and faster from G 2 (1.5 MB); the
// blocked backward (which also keeps the expert's weight gradients in cache) 6 % slower at G 2
// and 3-5 % faster at G 4 and 8 (768 and 384 kB). So with AVX-512 the forward takes experts up
// to one L2 and the backward up to half of one. On the same machine with torch, MKL and oneDNN
// held to AVX2 (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA), the blocked
// forward was 6 % slower at G 2 (13 % on one thread) and 4-9 % faster at G 4-8, and the blocked
// backward 13 % slower at G 4 and 0-3 % faster at G 8, with its transposes still in AVX-512
// registers, which an AVX2 CPU lacks: there the forward takes experts up to half an L2 and the
// backward is never blocked. Limits scale with the core's L2 where glibc reports it (unmeasured
// on other cache sizes; 2 MiB where it does not say).
int64_t l2_cache_bytes() {
#ifdef _SC_LEVEL2_CACHE_SIZE
  static const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (reported > 0) return reported;
#endif
  return 2 << 20;
}
// whether torch's kernels run AVX-512 here (the CPU has it, and ATEN_CPU_CAPABILITY allows it)
bool avx512_kernels() {
  static const bool yes = at::get_cpu_capability() == "AVX512";
  return yes;
}
int64_t blocked_weight_limit(bool backward) {
  if (avx512_kernels()) return backward ? l2_cache_bytes() / 2 : l2_cache_bytes();
  return backward ? 0 : l2_cache_bytes() / 2;
}
constexpr int64_t kBlockedOutputBytes = 256 << 20;

MOESCALE_CLONES void add_row(float* __restrict__ dst, const float* __restrict__ src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

// C (m x n, row stride ldb) = A (m x k, row stride k) @ B (k x n, row stride ldb), or C += A @ B,
// in column blocks of kBlockCols
void block_mm(int64_t m, int64_t n, int64_t k, const float* A, const float* B, int64_t ldb,
              float* C, bool accumulate = false) {
#ifdef MOESCALE_BLOCKED
  for (int64_t n0 = 0; n0 < n; n0 += kBlockCols) {
    const int64_t nb = std::min(kBlockCols, n - n0);
    at::native::cpublas::brgemm(m, nb, k, k, ldb, ldb, accumulate, A, B + n0, C + n0, false);
  }
#else
  TORCH_CHECK(false, "this torch has no float32 brgemm");
#endif
}

// the threads' private T x D outputs summed into the first, parallel over tokens
void sum_into_first(const std::vector<Tensor>& out_PTD) {
  const int64_t T = out_PTD[0].size(0), D = out_PTD[0].size(1);
  float* first = out_PTD[0].data_ptr<float>();
  at::parallel_for(0, T, 256, [&](int64_t t0, int64_t t1) {
    for (size_t p = 1; p < out_PTD.size(); ++p) {
      add_row(first + t0 * D, out_PTD[p].data_ptr<float>() + t0 * D, (t1 - t0) * D);
    }
  });
}

// the threads (and private T x D outputs) of the blocked forward, over M slots in blocks, and
// of the blocked backward, over X experts
int64_t blocked_threads(int64_t M) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                (M + kBlockRows - 1) / kBlockRows));
}
int64_t blocked_backward_threads(int64_t X) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), X));
}

// Runs body(p0, p1) over threads [0, P) and releases the brgemm state each thread set up
template <typename Body>
void for_each_thread(int64_t P, const Body& body) {
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    body(p0, p1);
#ifdef MOESCALE_BLOCKED
    at::native::cpublas::brgemm_release(false);
#endif
  });
}

bool blocked_fits(const Tensor& x_TD, const Tensor& w2_XFD, int64_t M, bool backward) {
  const int64_t T = x_TD.size(0), D = x_TD.size(1), F = w2_XFD.size(1);
  const int64_t weight_bytes = 3 * D * F * static_cast<int64_t>(sizeof(float));
  const int64_t P = backward ? blocked_backward_threads(w2_XFD.size(0)) : blocked_threads(M);
  const int64_t output_bytes = P * T * D * static_cast<int64_t>(sizeof(float));
  return kHaveBlocked && x_TD.scalar_type() == at::kFloat &&
         weight_bytes <= blocked_weight_limit(backward) &&
         output_bytes <= kBlockedOutputBytes;
}

// Whether experts_forward / experts_backward run their blocked loop: `blocked` -1 picks
// (blocked_fits), 0 and 1 force it (tests); forcing it where it cannot run raises
bool use_blocked(int64_t blocked, const Tensor& x_TD, const Tensor& w2_XFD, int64_t M,
                 bool backward) {
  TORCH_CHECK(blocked >= -1 && blocked <= 1, "blocked must be -1 (pick), 0 or 1, got ", blocked);
  if (blocked == 1) {
    TORCH_CHECK(kHaveBlocked && x_TD.scalar_type() == at::kFloat, "the blocked ",
                backward ? "backward" : "forward", " needs float32 and torch's float32 brgemm");
  }
  return blocked == 1 || (blocked == -1 && blocked_fits(x_TD, w2_XFD, M, backward));
}

// Thread p runs sorted slots [M p / P, M (p + 1) / P) block by block and scatter-adds into its own
// T x D output (thread 0's is y_TD); the P outputs are summed at the end. So a token's k*G terms
// are summed in an order that depends on the thread count: results agree to float rounding, not
// bit for bit, across thread counts (as with MKL's threaded matmuls in the per-operation loop).
std::vector<Tensor> experts_forward_blocked(const Tensor& x_TD, const Tensor& w_M,
                                            const Tensor& w13_XDH, const Tensor& w2_XFD,
                                            const Tensor& tok_M,
                                            const std::vector<int64_t>& starts) {
  const int64_t T = x_TD.size(0), D = x_TD.size(1), F = w2_XFD.size(1), M = tok_M.size(0);
  const int64_t H = 2 * F, P = blocked_threads(M);
  Tensor ab_MH = at::empty({M, H}, x_TD.options());
  std::vector<Tensor> y_PTD(P);
  for (auto& y : y_PTD) y = at::empty({T, D}, x_TD.options());
  const float *x = x_TD.data_ptr<float>(), *w = w_M.data_ptr<float>();
  const float *w13 = w13_XDH.data_ptr<float>(), *w2 = w2_XFD.data_ptr<float>();
  const int64_t* tok = tok_M.data_ptr<int64_t>();
  float* ab_all = ab_MH.data_ptr<float>();
  for_each_thread(P, [&](int64_t p0, int64_t p1) {
    std::vector<float> x_BD(kBlockRows * D), g_BF(kBlockRows * F), o_BD(kBlockRows * D);
    for (int64_t p = p0; p < p1; ++p) {
      float* y = y_PTD[p].data_ptr<float>();
      std::memset(y, 0, sizeof(float) * T * D);  // by the thread that writes it
      const int64_t m0 = M * p / P, m1 = M * (p + 1) / P;
      int64_t e = std::upper_bound(starts.begin(), starts.end(), m0) - starts.begin() - 1;
      for (int64_t s = m0; s < m1;) {
        while (starts[e + 1] <= s) ++e;  // skips experts with no slots
        const int64_t rows = std::min({kBlockRows, m1 - s, starts[e + 1] - s});
        for (int64_t r = 0; r < rows; ++r) {
          std::memcpy(&x_BD[r * D], x + tok[s + r] * D, sizeof(float) * D);
        }
        float* ab = ab_all + s * H;
        block_mm(rows, H, D, x_BD.data(), w13 + e * D * H, H, ab);
        swiglu_fwd(ab, w + s, g_BF.data(), F, 0, rows);
        block_mm(rows, D, F, g_BF.data(), w2 + e * F * D, D, o_BD.data());
        for (int64_t r = 0; r < rows; ++r) add_row(y + tok[s + r] * D, &o_BD[r * D], D);
        s += rows;
      }
    }
  });
  sum_into_first(y_PTD);
  return {y_PTD[0], ab_MH};
}

#if defined(__x86_64__) && defined(__GNUC__)
#define MOESCALE_AVX512_TRANSPOSE 1
// One 16 x 16 tile, src rows of stride lds into dst rows of stride ldd, in registers: the usual
// three rounds of unpacks and lane shuffles (interleave pairs of rows by element, then by pairs,
// then swap 128-bit lanes twice)
__attribute__((target("avx512f"))) void transpose_tile16(const float* src, int64_t lds,
                                                         float* dst, int64_t ldd) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    for (int j = 0; j < 2; ++j) {
      const __m512d a = _mm512_castps_pd(t[i + j]), b = _mm512_castps_pd(t[i + j + 2]);
      r[i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    }
  }
  for (int i = 0; i < 16; i += 8) {
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ldd, r[i]);
}
#endif

// src (rows x cols) into dst (cols x rows) in 16 x 16 tiles: a plain double loop writes dst a
// column at a time, a cache line per element, and made the blocked backward slower than the
// per-operation one (58 against 14 ms at G 8). Full tiles go through AVX-512 registers where the
// CPU has them: the blocked G 8 backward then took 0.89 of the per-operation one's time, against
// 0.95 with the tiles in scalar code (which partial tiles, and CPUs without AVX-512, still use).
// Gathering x's rows straight into the tiles, without the contiguous copy first, was slower.
void transpose_into(const float* src, float* dst, int64_t rows, int64_t cols) {
  constexpr int64_t B = 16;
#ifdef MOESCALE_AVX512_TRANSPOSE
  static const bool avx512 = __builtin_cpu_supports("avx512f");
#else
  constexpr bool avx512 = false;
#endif
  for (int64_t r0 = 0; r0 < rows; r0 += B) {
    const int64_t r1 = std::min(rows, r0 + B);
    for (int64_t c0 = 0; c0 < cols; c0 += B) {
      const int64_t c1 = std::min(cols, c0 + B);
#ifdef MOESCALE_AVX512_TRANSPOSE
      if (avx512 && r1 - r0 == B && c1 - c0 == B) {
        transpose_tile16(src + r0 * cols + c0, cols, dst + c0 * rows + r0, rows);
        continue;
      }
#endif
      float tile[B][B];
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) tile[c - c0][r - r0] = src[r * cols + c];
      }
      for (int64_t c = c0; c < c1; ++c) {
        std::memcpy(dst + c * rows + r0, tile[c - c0], sizeof(float) * (r1 - r0));
      }
    }
  }
}

// Contiguous expert ranges, one per thread, cut where the running slot count passes p/P of all:
// a thread owns its experts' weight gradients, so none is shared
std::vector<int64_t> split_experts(const std::vector<int64_t>& starts, int64_t P) {
  const int64_t X = static_cast<int64_t>(starts.size()) - 1, M = starts.back();
  std::vector<int64_t> cut(P + 1, X);
  cut[0] = 0;
  int64_t e = 0;
  for (int64_t p = 1; p < P; ++p) {
    const int64_t target = M * p / P;
    while (e < X && starts[e + 1] <= target) ++e;
    if (e < X && starts[e + 1] - target < target - starts[e]) ++e;  // the nearer boundary
    cut[p] = std::max(e, cut[p - 1]);
  }
  return cut;
}

// The backward of experts_forward_blocked, in the same blocks, but over expert ranges (a thread
// owns the weight gradients of its experts). brgemm takes no transposed operands: each expert's
// w2 and w13 are transposed once into thread buffers, and each block's inputs and weighted
// activations once, in cache; the weight gradients accumulate block by block.
std::vector<Tensor> experts_backward_blocked(const Tensor& dy_TD, const Tensor& x_TD,
                                             const Tensor& w_M, const Tensor& w13_XDH,
                                             const Tensor& w2_XFD, const Tensor& tok_M,
                                             const Tensor& ab_MH,
                                             const std::vector<int64_t>& starts) {
  const int64_t T = x_TD.size(0), D = x_TD.size(1), F = w2_XFD.size(1), H = 2 * F;
  const int64_t X = static_cast<int64_t>(starts.size()) - 1;
  const int64_t P = blocked_backward_threads(X);
  const auto cut = split_experts(starts, P);
  Tensor dw_M = at::empty_like(w_M), dw13 = at::empty_like(w13_XDH);
  Tensor dw2 = at::empty_like(w2_XFD);
  std::vector<Tensor> dx_PTD(P);
  for (auto& dx : dx_PTD) dx = at::empty({T, D}, x_TD.options());
  const float *x = x_TD.data_ptr<float>(), *dy = dy_TD.data_ptr<float>();
  const float *w = w_M.data_ptr<float>(), *ab_all = ab_MH.data_ptr<float>();
  const float *w13 = w13_XDH.data_ptr<float>(), *w2 = w2_XFD.data_ptr<float>();
  const int64_t* tok = tok_M.data_ptr<int64_t>();
  float *dw_all = dw_M.data_ptr<float>(), *dw13_all = dw13.data_ptr<float>();
  float* dw2_all = dw2.data_ptr<float>();
  for_each_thread(P, [&](int64_t p0, int64_t p1) {
    constexpr int64_t R = kBlockRows;
    std::vector<float> w2t_DF(D * F), w13t_HD(H * D), x_BD(R * D), xt_DB(D * R), dy_BD(R * D),
        dgw_BF(R * F), gw_BF(R * F), gwt_FB(F * R), dab_BH(R * H), dx_BD(R * D), prod(F);
    for (int64_t p = p0; p < p1; ++p) {
      float* dx = dx_PTD[p].data_ptr<float>();
      std::memset(dx, 0, sizeof(float) * T * D);
      for (int64_t e = cut[p]; e < cut[p + 1]; ++e) {
        float *dw13_e = dw13_all + e * D * H, *dw2_e = dw2_all + e * F * D;
        if (starts[e + 1] == starts[e]) {
          std::memset(dw13_e, 0, sizeof(float) * D * H);
          std::memset(dw2_e, 0, sizeof(float) * F * D);
          continue;
        }
        transpose_into(w2 + e * F * D, w2t_DF.data(), F, D);
        transpose_into(w13 + e * D * H, w13t_HD.data(), D, H);
        for (int64_t s = starts[e]; s < starts[e + 1];) {
          const int64_t rows = std::min(R, starts[e + 1] - s);
          const bool accumulate = s != starts[e];
          for (int64_t r = 0; r < rows; ++r) {
            std::memcpy(&x_BD[r * D], x + tok[s + r] * D, sizeof(float) * D);
            std::memcpy(&dy_BD[r * D], dy + tok[s + r] * D, sizeof(float) * D);
          }
          block_mm(rows, F, D, dy_BD.data(), w2t_DF.data(), F, dgw_BF.data());
          swiglu_bwd(ab_all + s * H, w + s, dgw_BF.data(), gw_BF.data(), dab_BH.data(),
                     dw_all + s, prod.data(), F, 0, rows);
          transpose_into(gw_BF.data(), gwt_FB.data(), rows, F);
          block_mm(F, D, rows, gwt_FB.data(), dy_BD.data(), D, dw2_e, accumulate);
          transpose_into(x_BD.data(), xt_DB.data(), rows, D);
          block_mm(D, H, rows, xt_DB.data(), dab_BH.data(), H, dw13_e, accumulate);
          block_mm(rows, D, H, dab_BH.data(), w13t_HD.data(), D, dx_BD.data());
          for (int64_t r = 0; r < rows; ++r) add_row(dx + tok[s + r] * D, &dx_BD[r * D], D);
          s += rows;
        }
      }
    }
  });
  sum_into_first(dx_PTD);
  return {dx_PTD[0], dw_M, dw13, dw2};
}

}  // namespace

// Returns (y_TD, ab_MH): the layer's output and the gate|up pre-activations backward needs.
// `blocked`: -1 picks (experts_forward_blocked where it fits), 0 and 1 force (tests).
std::vector<Tensor> experts_forward(const Tensor& x_TD, const Tensor& w_M, const Tensor& w13_XDH,
                                    const Tensor& w2_XFD, const Tensor& tok_M,
                                    const std::vector<int64_t>& counts, int64_t blocked) {
  for (auto* t : {&x_TD, &w_M, &w13_XDH, &w2_XFD, &tok_M}) check(*t, "experts_forward input");
  check_dtype(x_TD);
  const int64_t T = x_TD.size(0), D = x_TD.size(1), F = w2_XFD.size(1), M = tok_M.size(0);
  const auto starts = starts_of(counts);
  check_shapes(x_TD, w_M, w13_XDH, w2_XFD, tok_M, counts);  // the blocked forward reads raw rows
  if (use_blocked(blocked, x_TD, w2_XFD, M, false)) {
    return experts_forward_blocked(x_TD, w_M, w13_XDH, w2_XFD, tok_M, starts);
  }
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
                                     const std::vector<int64_t>& counts, int64_t blocked) {
  for (auto* t : {&dy_TD, &x_TD, &w_M, &w13_XDH, &w2_XFD, &tok_M, &ab_MH}) {
    check(*t, "experts_backward input");
  }
  check_dtype(x_TD);
  const int64_t T = x_TD.size(0), D = x_TD.size(1), F = w2_XFD.size(1), M = tok_M.size(0);
  const auto starts = starts_of(counts);
  check_shapes(x_TD, w_M, w13_XDH, w2_XFD, tok_M, counts);
  TORCH_CHECK(dy_TD.sizes() == x_TD.sizes() && dy_TD.scalar_type() == x_TD.scalar_type() &&
                  ab_MH.dim() == 2 && ab_MH.size(0) == M && ab_MH.size(1) == 2 * F &&
                  ab_MH.scalar_type() == x_TD.scalar_type(),
              "dy must match x, and ab be kept slots x 2F in x's dtype");
  if (use_blocked(blocked, x_TD, w2_XFD, M, true)) {
    return experts_backward_blocked(dy_TD, x_TD, w_M, w13_XDH, w2_XFD, tok_M, ab_MH, starts);
  }
  const int64_t most = counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
  auto opts = x_TD.options();
  Tensor dx_TD = at::zeros({T, D}, opts);
  // every kept slot's dw and every expert with slots' weight gradients are written below
  Tensor dw_M = at::empty_like(w_M);
  Tensor dw13 = at::empty_like(w13_XDH);
  Tensor dw2 = at::empty_like(w2_XFD);
  Tensor x_RD = at::empty({most, D}, opts), dy_RD = at::empty({most, D}, opts);
  Tensor dg_RF = at::empty({most, F}, opts), gw_RF = at::empty({most, F}, opts);
  Tensor dab_RH = at::empty({most, 2 * F}, opts), o_RD = at::empty({most, D}, opts);
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t s0 = starts[e], rows = counts[e];
    if (rows == 0) {
      dw13[e].zero_();
      dw2[e].zero_();
      continue;
    }
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

// How many threads the kernels' at::parallel_for spreads `rows` rows over. ATen's parallel_for
// is a header template: built without -fopenmp it runs every loop on the calling thread, and
// built against a second OpenMP runtime it would ignore torch.set_num_threads (model/cpu_ext.py).
// Tests check that it follows torch's thread count.
int64_t parallel_threads(int64_t rows) {
  std::vector<char> used(std::max<int64_t>(at::get_num_threads(), 1), 0);
  at::parallel_for(0, rows, kRowGrain, [&](int64_t, int64_t) {
    const int64_t t = at::get_thread_num();
    if (t >= 0 && t < static_cast<int64_t>(used.size())) used[t] = 1;
  });
  return std::count(used.begin(), used.end(), 1);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("experts_forward", &experts_forward, "sorted-slot expert loop, forward",
        py::arg("x_TD"), py::arg("w_M"), py::arg("w13_XDH"), py::arg("w2_XFD"), py::arg("tok_M"),
        py::arg("counts"), py::arg("blocked") = -1);
  m.def("blocked_fits", &blocked_fits,
        "whether experts_forward (backward=False) or experts_backward picks the blocked loop",
        py::arg("x_TD"), py::arg("w2_XFD"), py::arg("M"), py::arg("backward"));
  m.def("experts_backward", &experts_backward, "sorted-slot expert loop, backward",
        py::arg("dy_TD"), py::arg("x_TD"), py::arg("w_M"), py::arg("w13_XDH"),
        py::arg("w2_XFD"), py::arg("tok_M"), py::arg("ab_MH"), py::arg("counts"),
        py::arg("blocked") = -1);
  m.def("swiglu_forward", &swiglu_forward, "fused SwiGLU times routing weight, forward");
  m.def("swiglu_backward", &swiglu_backward, "fused SwiGLU times routing weight, backward");
  m.def("parallel_threads", &parallel_threads, "threads the kernels' parallel loops use");
  m.def("blocked_weight_limit", &blocked_weight_limit,
        "the most bytes of weights an expert may have for the blocked loop, forward or backward",
        py::arg("backward"));
}
