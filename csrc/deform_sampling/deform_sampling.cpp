// Deformable similarity sampling ops, composed from the device primitives of deform_sampling.h.
#include "deform_sampling/deform_sampling.h"

namespace vod_d2 {

namespace {

void check_common(const char* op, const at::Tensor& per_position, const at::Tensor& features,
                  const at::Tensor& offsets) {
  check_floating(features, op, "features");
  check_deform_sampling_inputs(op, per_position, features, offsets);
}

// The offsets as the primitives read them: contiguous, in the features' opmath dtype.
at::Tensor opmath_offsets(const at::Tensor& offsets, const at::Tensor& features) {
  return offsets.to(at::toOpMathType(features.scalar_type())).contiguous();
}

// (B, N, 2, H * W) per-position offset gradients (opmath) -> the layout and dtype of `offsets`;
// shared offsets sum over the positions in the opmath dtype first.
at::Tensor offset_grad_like(const at::Tensor& grad, const at::Tensor& offsets) {
  if (offsets.dim() == 2) {
    return grad.sum({0, 3}).to(offsets.scalar_type());
  }
  return grad.view(offsets.sizes()).to(offsets.scalar_type());
}

}  // namespace

at::Tensor deform_similarity_forward(const at::Tensor& query, const at::Tensor& key,
                                     const at::Tensor& offsets) {
  constexpr const char* op = "deform_similarity_forward";
  check_common(op, query, key, offsets);
  TORCH_CHECK(query.size(1) == key.size(1), op, ": query and key channels differ: ",
              query.sizes(), " vs ", key.sizes());
  auto result = deform_correlate(query.contiguous(), key.contiguous(),
                                 opmath_offsets(offsets, key), at::Tensor(), false);
  return std::get<0>(result).to(query.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> deform_similarity_backward(
    const at::Tensor& grad_similarity, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& offsets) {
  constexpr const char* op = "deform_similarity_backward";
  const int64_t num_points = check_deform_sampling_inputs(op, query, key, offsets);
  check_common(op, grad_similarity, key, offsets);
  TORCH_CHECK(grad_similarity.size(1) == num_points, op, ": grad_similarity has ",
              grad_similarity.size(1), " points but the offsets ", num_points);
  const auto q = query.contiguous();
  const auto k = key.contiguous();
  const auto off = opmath_offsets(offsets, key);
  const auto grad = grad_similarity.contiguous();
  // d s[n, p0] / d query[:, p0] = key(p_n); d / d key is the transposed sampling of the query.
  auto grad_query = deform_gather(grad, k, off).to(query.scalar_type());
  auto grad_key = deform_scatter(grad, q, off).to(key.scalar_type());
  auto grad_offsets = std::get<1>(deform_correlate(q, k, off, grad, true));
  return {grad_query, grad_key, offset_grad_like(grad_offsets, offsets)};
}

at::Tensor deform_aggregate_forward(const at::Tensor& weights, const at::Tensor& value,
                                    const at::Tensor& offsets) {
  constexpr const char* op = "deform_aggregate_forward";
  const int64_t num_points = check_deform_sampling_inputs(op, weights, value, offsets);
  check_floating(value, op, "value");
  TORCH_CHECK(weights.size(1) == num_points, op, ": weights have ", weights.size(1),
              " points but the offsets ", num_points);
  return deform_gather(weights.contiguous(), value.contiguous(), opmath_offsets(offsets, value))
      .to(value.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> deform_aggregate_backward(
    const at::Tensor& grad_output, const at::Tensor& weights, const at::Tensor& value,
    const at::Tensor& offsets) {
  constexpr const char* op = "deform_aggregate_backward";
  const int64_t num_points = check_deform_sampling_inputs(op, weights, value, offsets);
  check_floating(value, op, "value");
  TORCH_CHECK(weights.size(1) == num_points, op, ": weights have ", weights.size(1),
              " points but the offsets ", num_points);
  TORCH_CHECK(grad_output.sizes() == value.sizes(), op, ": grad_output ", grad_output.sizes(),
              " does not match value ", value.sizes());
  const auto w = weights.contiguous();
  const auto v = value.contiguous();
  const auto off = opmath_offsets(offsets, value);
  const auto grad = grad_output.contiguous().to(value.scalar_type());
  auto grad_value = deform_scatter(w, grad, off).to(value.scalar_type());
  // d out / d weights[n] = value(p_n) . grad_out, and the offsets move value(p_n).
  auto correlation = deform_correlate(grad, v, off, w, true);
  return {std::get<0>(correlation).to(weights.scalar_type()), grad_value,
          offset_grad_like(std::get<1>(correlation), offsets)};
}

}  // namespace vod_d2
