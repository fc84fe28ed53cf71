// Temporal RoI Align ops: the chunked GEMM and the layout changes in ATen, the selection, softmax,
// weighted gather and backward in the device primitives of temporal_roi_align.h.
#include "temporal_roi_align/temporal_roi_align.h"

#include <ATen/TensorIndexing.h>

#include <algorithm>
#include <optional>

namespace vod_d2 {

namespace {

void check_inputs(const char* op, const at::Tensor& roi_features,
                  const at::Tensor& support_features, const at::Tensor& roi_batch_index,
                  bool check_index_range) {
  TORCH_CHECK(roi_features.dim() == 4, op, ": roi_features must be (R, C, S, S), got ",
              roi_features.sizes());
  TORCH_CHECK(support_features.dim() == 5, op,
              ": support_features must be (B, T, C, H, W), got ", support_features.sizes());
  TORCH_CHECK(roi_features.size(1) == support_features.size(2), op,
              ": roi_features and support_features channels differ: ", roi_features.sizes(),
              " vs ", support_features.sizes());
  TORCH_CHECK(roi_features.scalar_type() == support_features.scalar_type(), op,
              ": roi_features and support_features dtypes differ");
  check_floating(roi_features, op, "roi_features");
  TORCH_CHECK(roi_batch_index.dim() == 1 && roi_batch_index.size(0) == roi_features.size(0), op,
              ": roi_batch_index must be (R,) = (", roi_features.size(0), ",), got ",
              roi_batch_index.sizes());
  TORCH_CHECK(roi_batch_index.scalar_type() == at::kLong, op,
              ": roi_batch_index must be int64, got ", roi_batch_index.scalar_type());
  TORCH_CHECK(roi_features.device() == support_features.device() &&
                  roi_batch_index.device() == support_features.device(),
              op, ": all inputs must be on the same device");
  if (check_index_range && roi_batch_index.numel() > 0) {
    const auto extrema = at::aminmax(roi_batch_index);
    const int64_t lowest = std::get<0>(extrema).item<int64_t>();
    const int64_t highest = std::get<1>(extrema).item<int64_t>();
    TORCH_CHECK(lowest >= 0 && highest < support_features.size(0), op,
                ": roi_batch_index values must lie in [0, ", support_features.size(0),
                "), got [", lowest, ", ", highest, "]");
  }
}

// (N, C, ...) -> (N * prod(...), C) in the opmath dtype, contiguous: one row per cell. (The row
// count is explicit so that C = 0 works; the reshape is only a strided view when N == 1, hence
// the explicit contiguous().)
at::Tensor cells_of(const at::Tensor& features) {
  int64_t rows = features.size(0);
  for (int64_t d = 2; d < features.dim(); ++d) {
    rows *= features.size(d);
  }
  return features.flatten(2)
      .transpose(1, 2)
      .reshape({rows, features.size(1)})
      .to(at::toOpMathType(features.scalar_type()))
      .contiguous();
}

at::Tensor clamped(const at::Tensor& norm) { return norm.clamp_min(kNormEps); }

struct Support {
  at::Tensor hat;   // (B * T, L, C) unit-norm features, one row per location
  at::Tensor norm;  // (B * T, L)
};

// support_features (B, T, C, H, W), seen as B * T maps.
Support normalised_support(const at::Tensor& support_features) {
  const auto maps = support_features.size(0) * support_features.size(1);
  const auto channels = support_features.size(2);
  const auto locations = support_features.size(3) * support_features.size(4);
  auto rows = cells_of(support_features.flatten(0, 1)).view({maps, locations, channels});
  auto norm = at::linalg_vector_norm(rows, 2, {-1});
  return {rows / clamped(norm).unsqueeze(-1), norm};
}

// Map of every output row (RoI r, support t, cell m), laid out (R, T, cells): b_r * T + t.
// (contiguous(): with R = T = 1 the reshape of the expansion would be a stride-0 view.)
at::Tensor row_maps(const at::Tensor& roi_batch_index, int64_t supports, int64_t cells) {
  const auto t = at::arange(supports, roi_batch_index.options()).view({1, supports, 1});
  return (roi_batch_index.view({-1, 1, 1}) * supports + t)
      .expand({roi_batch_index.size(0), supports, cells})
      .reshape({-1})
      .contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_roi_align_forward(
    const at::Tensor& roi_features, const at::Tensor& support_features,
    const at::Tensor& roi_batch_index, int64_t k) {
  constexpr const char* op = "temporal_roi_align_forward";
  check_inputs(op, roi_features, support_features, roi_batch_index, true);
  const int64_t num_rois = roi_features.size(0);
  const int64_t channels = roi_features.size(1);
  const int64_t cells = roi_features.size(2) * roi_features.size(3);
  const int64_t supports = support_features.size(1);
  const int64_t locations = support_features.size(3) * support_features.size(4);
  TORCH_CHECK(k >= 1 && k <= kMaxTopK, op, ": k must be in [1, ", kMaxTopK, "], got ", k);
  TORCH_CHECK(k <= locations, op, ": k = ", k, " exceeds the ", locations,
              " locations of the support map");
  const auto acc_options =
      roi_features.options().dtype(at::toOpMathType(roi_features.scalar_type()));
  auto topk_sim = at::empty({num_rois, supports, cells, k}, acc_options);
  auto topk_index =
      at::empty({num_rois, supports, cells, k}, roi_features.options().dtype(at::kLong));
  const std::vector<int64_t> output_size = {num_rois, supports, channels,
                                            roi_features.size(2), roi_features.size(3)};
  if (num_rois == 0 || cells == 0 || supports == 0) {
    return {at::zeros(output_size, roi_features.options()), topk_sim, topk_index};
  }

  const Support support = normalised_support(support_features);
  // RoIs grouped by image, processed in chunks whose similarity block stays within budget; each
  // chunk's cells are normalised once and matched against the T maps of its image in turn.
  const auto order = std::get<1>(
      at::sort(roi_batch_index, std::optional<bool>(true), /*dim=*/0, /*descending=*/false));
  const auto counts = at::bincount(roi_batch_index, {}, support_features.size(0)).cpu();
  const int64_t* count_data = counts.data_ptr<int64_t>();
  const int64_t rois_per_chunk = std::max<int64_t>(1, kSimilarityChunk / (cells * locations));
  int64_t start = 0;
  for (int64_t b = 0; b < support_features.size(0); ++b) {
    const int64_t end = start + count_data[b];
    for (int64_t chunk = start; chunk < end; chunk += rois_per_chunk) {
      const auto ids = order.slice(0, chunk, std::min(end, chunk + rois_per_chunk));
      // Advanced indexing rather than index_select, which is far slower on CPU for large rows.
      auto q = cells_of(roi_features.index({ids}));
      q = q / clamped(at::linalg_vector_norm(q, 2, {-1})).unsqueeze(-1);
      for (int64_t t = 0; t < supports; ++t) {
        const auto selected = tra_topk(at::mm(q, support.hat[b * supports + t].t()), k);
        topk_sim.select(1, t).index_copy_(0, ids, std::get<0>(selected).view({-1, cells, k}));
        topk_index.select(1, t).index_copy_(0, ids, std::get<1>(selected).view({-1, cells, k}));
      }
    }
    start = end;
  }

  const auto out_cells =
      tra_gather(topk_sim.view({-1, k}), topk_index.view({-1, k}), support.hat,
                 clamped(support.norm), row_maps(roi_batch_index, supports, cells));
  auto output = out_cells.view({num_rois, supports, cells, channels})
                    .transpose(2, 3)
                    .reshape(output_size)
                    .to(roi_features.scalar_type())
                    .contiguous();
  return {output, topk_sim, topk_index};
}

std::tuple<at::Tensor, at::Tensor> temporal_roi_align_backward(
    const at::Tensor& grad_output, const at::Tensor& roi_features,
    const at::Tensor& support_features, const at::Tensor& roi_batch_index,
    const at::Tensor& topk_sim, const at::Tensor& topk_index) {
  constexpr const char* op = "temporal_roi_align_backward";
  // The forward pass checked the index range; checking it again would synchronise the device.
  check_inputs(op, roi_features, support_features, roi_batch_index, false);
  const int64_t num_rois = roi_features.size(0);
  const int64_t channels = roi_features.size(1);
  const int64_t cells = roi_features.size(2) * roi_features.size(3);
  const int64_t supports = support_features.size(1);
  TORCH_CHECK(grad_output.dim() == 5 && grad_output.size(0) == num_rois &&
                  grad_output.size(1) == supports && grad_output.size(2) == channels &&
                  grad_output.size(3) == roi_features.size(2) &&
                  grad_output.size(4) == roi_features.size(3),
              op, ": grad_output ", grad_output.sizes(), " must be (R, T, C, S, S) for roi_features ",
              roi_features.sizes(), " and T = ", supports);
  TORCH_CHECK(topk_sim.dim() == 4 && topk_sim.size(0) == num_rois &&
                  topk_sim.size(1) == supports && topk_sim.size(2) == cells &&
                  topk_index.sizes() == topk_sim.sizes() &&
                  topk_index.scalar_type() == at::kLong,
              op, ": topk_sim / topk_index must be the (R, T, S * S, K) outputs of the forward pass");
  if (num_rois == 0 || cells == 0 || supports == 0) {
    return {at::zeros_like(roi_features), at::zeros_like(support_features)};
  }
  const int64_t k = topk_sim.size(3);
  const Support support = normalised_support(support_features);
  const auto q = cells_of(roi_features);
  const auto q_norm = at::linalg_vector_norm(q, 2, {-1});
  const auto q_hat = q / clamped(q_norm).unsqueeze(-1);
  // (R, T, C, S, S) -> rows (R, T, cells) of C channels.
  const auto grad_rows = grad_output.flatten(3)
                             .transpose(2, 3)
                             .reshape({num_rois * supports * cells, channels})
                             .to(q.scalar_type())
                             .contiguous();
  const auto grads = tra_backward(
      grad_rows, q_hat.contiguous(), q_norm.contiguous(),
      topk_sim.reshape({-1, k}).to(q.scalar_type()).contiguous(),
      topk_index.reshape({-1, k}).contiguous(), support.hat.contiguous(),
      support.norm.contiguous(), row_maps(roi_batch_index, supports, cells), supports, cells);
  auto grad_roi = std::get<0>(grads)
                      .view({num_rois, cells, channels})
                      .transpose(1, 2)
                      .reshape(roi_features.sizes())
                      .to(roi_features.scalar_type());
  auto grad_support = std::get<1>(grads)
                          .transpose(1, 2)
                          .reshape(support_features.sizes())
                          .to(support_features.scalar_type());
  return {grad_roi.contiguous(), grad_support.contiguous()};
}

}  // namespace vod_d2
