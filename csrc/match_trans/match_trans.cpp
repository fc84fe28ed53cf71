// MatchTrans ops, composed from the device primitives of match_trans.h.
#include "match_trans/match_trans.h"

namespace vod_d2 {

namespace {

void check_pair(const char* op, const at::Tensor& x, const at::Tensor& y, const char* x_name,
                const char* y_name, int64_t k) {
  TORCH_CHECK(k >= 0, op, ": k must be >= 0, got ", k);
  TORCH_CHECK(x.dim() == 4 && y.dim() == 4, op, ": ", x_name, " and ", y_name,
              " must be 4-D (N, C, H, W), got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(x.size(0) == y.size(0) && x.size(2) == y.size(2) && x.size(3) == y.size(3), op,
              ": batch and spatial sizes of ", x_name, " ", x.sizes(), " and ", y_name, " ",
              y.sizes(), " differ");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), op, ": ", x_name, " and ", y_name,
              " dtypes differ");
  TORCH_CHECK(x.device() == y.device(), op, ": ", x_name, " and ", y_name, " devices differ");
  check_floating(x, op, x_name);
}

void check_window(const char* op, const at::Tensor& weights, int64_t k) {
  const int64_t window = (2 * k + 1) * (2 * k + 1);
  TORCH_CHECK(weights.size(1) == window, op, ": weights must have (2k + 1)^2 = ", window,
              " channels for k = ", k, ", got ", weights.sizes());
}

}  // namespace

at::Tensor local_correlation_forward(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  constexpr const char* op = "local_correlation_forward";
  check_pair(op, a, b, "a", "b", k);
  TORCH_CHECK(a.size(1) == b.size(1), op, ": a and b channels differ: ", a.sizes(), " vs ",
              b.sizes());
  return local_correlate(a.contiguous(), b.contiguous(), k).to(a.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> local_correlation_backward(const at::Tensor& grad,
                                                              const at::Tensor& a,
                                                              const at::Tensor& b, int64_t k) {
  constexpr const char* op = "local_correlation_backward";
  check_pair(op, a, b, "a", "b", k);
  check_pair(op, grad, a, "grad", "a", k);
  check_window(op, grad, k);
  const auto g = grad.contiguous();
  // d corr[d, p] / d a[c, p] = b[c, p + delta_d]; d / d b is the same sum seen from b's side.
  auto grad_a = local_gather(g, b.contiguous(), k).to(a.scalar_type());
  auto grad_b = local_scatter(g, a.contiguous(), k).to(b.scalar_type());
  return {grad_a, grad_b};
}

at::Tensor local_aggregate_forward(const at::Tensor& weights, const at::Tensor& m, int64_t k) {
  constexpr const char* op = "local_aggregate_forward";
  check_pair(op, weights, m, "weights", "m", k);
  check_window(op, weights, k);
  return local_gather(weights.contiguous(), m.contiguous(), k).to(m.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> local_aggregate_backward(const at::Tensor& grad,
                                                            const at::Tensor& weights,
                                                            const at::Tensor& m, int64_t k) {
  constexpr const char* op = "local_aggregate_backward";
  check_pair(op, weights, m, "weights", "m", k);
  check_pair(op, grad, m, "grad", "m", k);
  check_window(op, weights, k);
  TORCH_CHECK(grad.size(1) == m.size(1), op, ": grad ", grad.sizes(), " does not match m ",
              m.sizes());
  const auto g = grad.contiguous();
  // d out[c, p] / d weights[d, p] = m[c, p + delta_d], summed over c against the gradient.
  auto grad_weights = local_correlate(g, m.contiguous(), k).to(weights.scalar_type());
  auto grad_m = local_scatter(weights.contiguous(), g, k).to(m.scalar_type());
  return {grad_weights, grad_m};
}

}  // namespace vod_d2
