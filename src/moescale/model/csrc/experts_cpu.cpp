// The CPU expert loop of model/experts.py (_LoopExperts) in C++: the same ATen operations
// (gathers, matmuls, activations, scatter-adds), expert by expert, without Python between them.
// At small expert shapes the Python dispatch of ~25 operations per expert took a fifth of the
// layer's time (README, Measured speed). Slots arrive sorted by expert; tok_M[s] is the token of
// sorted slot s and counts[e] the slots of expert e. Legend as in experts.py: T tokens,
// D d_model, M kept slots, F expert hidden, H = 2F (gate and up packed).
#include <torch/extension.h>

#include <algorithm>
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

}  // namespace

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
    at::silu_out(g, ab.narrow(1, 0, F));
    g.mul_(ab.narrow(1, F, F)).mul_(w_M.narrow(0, s0, rows).unsqueeze(1));
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
  Tensor dg_RF = at::empty({most, F}, opts), silu_RF = at::empty({most, F}, opts);
  Tensor dab_RH = at::empty({most, 2 * F}, opts), o_RD = at::empty({most, D}, opts);
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t s0 = starts[e], rows = counts[e];
    if (rows == 0) continue;
    Tensor x = x_RD.narrow(0, 0, rows), dy = dy_RD.narrow(0, 0, rows);
    Tensor tok = tok_M.narrow(0, s0, rows);
    at::index_select_out(x, x_TD, 0, tok);
    at::index_select_out(dy, dy_TD, 0, tok);
    Tensor ab = ab_MH.narrow(0, s0, rows);
    Tensor a = ab.narrow(1, 0, F), b = ab.narrow(1, F, F);
    Tensor dab = dab_RH.narrow(0, 0, rows);
    Tensor da = dab.narrow(1, 0, F), db = dab.narrow(1, F, F);
    Tensor dgw = dg_RF.narrow(0, 0, rows), silu = silu_RF.narrow(0, 0, rows);
    at::mm_out(dgw, dy, w2_XFD[e].t());  // grad of the weighted activation g * w
    at::silu_out(silu, a);
    at::mul_out(db, silu, b);  // g, the unweighted activation (db's storage until db is due)
    Tensor dw = dw_M.narrow(0, s0, rows);
    at::linalg_vecdot_out(dw, dgw, db);  // dw = rowsum(dgw * g)
    Tensor w = w_M.narrow(0, s0, rows).unsqueeze(1);
    db.mul_(w);  // g * w
    Tensor dw2_e = dw2[e];
    at::mm_out(dw2_e, db.t(), dy);
    dgw.mul_(w);  // dg
    at::mul_out(db, dgw, silu);
    dgw.mul_(b);
    at::silu_backward_out(da, dgw, a);
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
}
