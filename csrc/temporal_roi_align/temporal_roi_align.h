// Temporal RoI Align (SparseVOD's Temporal RoI Feature Extraction, after Gong et al., AAAI'21).
//
// For every cell m of target RoI r (features (R, C, S, S)) and the support map of its image
// b = roi_batch_index[r] (features (B, C, H, W)):
//   cos[p]     = <q / |q|, F[b, :, p] / |F[b, :, p]|>  for all H * W locations p, q = roi[r, :, m]
//   p_1..p_K   = the K most similar locations (ties: lower flat index first)
//   out[r, :, m] = sum_k softmax_k(cos[p_k]) * F[b, :, p_k]
// Norms are clamped at kNormEps (as torch.nn.functional.normalize). The selection is not
// differentiated; gradients flow to both feature maps through the weights and the averaged values.
//
// Why this layout: the usual implementation builds the (R * S * S) x (H * W) similarity matrix
// (141 MiB in float for R = 300, S = 7 and a 38 x 63 map) plus an (R * S * S, K, C) gather. Here
// the similarities are computed by a GEMM on chunks of at most kSimilarityChunk entries (16 MiB
// in float) and reduced at once to their top K by a streaming selection that keeps K <= kMaxTopK
// candidates in local arrays (registers / local memory on CUDA); only the (R * S * S, K)
// similarities and indices are stored, for the backward pass, and the weighted average reads the
// K rows directly (no gather tensor). Using the vendor GEMM (MKL/cuBLAS) per chunk keeps the speed
// of the dense implementation, which a hand-written fused dot-product loop would not reach. The
// backward pass needs no similarity matrix at all.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common.h"

namespace vod_d2 {

constexpr int64_t kMaxTopK = 32;
constexpr int64_t kSimilarityChunk = int64_t(1) << 22;
constexpr double kNormEps = 1e-12;

// Device primitives; all floating tensors are in the opmath dtype and contiguous.
//   topk:     similarity (T, L) -> values (T, K) descending, indices (T, K) int64
//   gather:   out[m, :] = sum_k softmax(topk_sim[m])_k * scale[b_m, i_k] * support_hat[b_m, i_k, :]
//   backward: grad_q (M, C) w.r.t. the cells, grad_support (B, L, C) w.r.t. the support features
std::tuple<at::Tensor, at::Tensor> tra_topk_cpu(const at::Tensor& similarity, int64_t k);
at::Tensor tra_gather_cpu(const at::Tensor& topk_sim, const at::Tensor& topk_index,
                          const at::Tensor& support_hat, const at::Tensor& support_scale,
                          const at::Tensor& cell_image);
std::tuple<at::Tensor, at::Tensor> tra_backward_cpu(
    const at::Tensor& grad_cells, const at::Tensor& q_hat, const at::Tensor& q_norm,
    const at::Tensor& topk_sim, const at::Tensor& topk_index, const at::Tensor& support_hat,
    const at::Tensor& support_norm, const at::Tensor& cell_image);
#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> tra_topk_cuda(const at::Tensor& similarity, int64_t k);
at::Tensor tra_gather_cuda(const at::Tensor& topk_sim, const at::Tensor& topk_index,
                           const at::Tensor& support_hat, const at::Tensor& support_scale,
                           const at::Tensor& cell_image);
std::tuple<at::Tensor, at::Tensor> tra_backward_cuda(
    const at::Tensor& grad_cells, const at::Tensor& q_hat, const at::Tensor& q_norm,
    const at::Tensor& topk_sim, const at::Tensor& topk_index, const at::Tensor& support_hat,
    const at::Tensor& support_norm, const at::Tensor& cell_image);
#endif

inline std::tuple<at::Tensor, at::Tensor> tra_topk(const at::Tensor& similarity, int64_t k) {
  if (use_cuda_kernel(similarity, "temporal_roi_align topk")) {
#ifdef WITH_CUDA
    return tra_topk_cuda(similarity, k);
#endif
  }
  return tra_topk_cpu(similarity, k);
}

inline at::Tensor tra_gather(const at::Tensor& topk_sim, const at::Tensor& topk_index,
                             const at::Tensor& support_hat, const at::Tensor& support_scale,
                             const at::Tensor& cell_image) {
  if (use_cuda_kernel(support_hat, "temporal_roi_align gather")) {
#ifdef WITH_CUDA
    return tra_gather_cuda(topk_sim, topk_index, support_hat, support_scale, cell_image);
#endif
  }
  return tra_gather_cpu(topk_sim, topk_index, support_hat, support_scale, cell_image);
}

inline std::tuple<at::Tensor, at::Tensor> tra_backward(
    const at::Tensor& grad_cells, const at::Tensor& q_hat, const at::Tensor& q_norm,
    const at::Tensor& topk_sim, const at::Tensor& topk_index, const at::Tensor& support_hat,
    const at::Tensor& support_norm, const at::Tensor& cell_image) {
  if (use_cuda_kernel(support_hat, "temporal_roi_align backward")) {
#ifdef WITH_CUDA
    return tra_backward_cuda(grad_cells, q_hat, q_norm, topk_sim, topk_index, support_hat,
                             support_norm, cell_image);
#endif
  }
  return tra_backward_cpu(grad_cells, q_hat, q_norm, topk_sim, topk_index, support_hat,
                          support_norm, cell_image);
}

// Ops registered in vision.cpp (implemented in temporal_roi_align.cpp, device-agnostic).
// forward returns (output (R, C, S, S), topk_sim (R, S * S, K) opmath, topk_index (R, S * S, K)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_roi_align_forward(
    const at::Tensor& roi_features, const at::Tensor& support_features,
    const at::Tensor& roi_batch_index, int64_t k);
std::tuple<at::Tensor, at::Tensor> temporal_roi_align_backward(
    const at::Tensor& grad_output, const at::Tensor& roi_features,
    const at::Tensor& support_features, const at::Tensor& roi_batch_index,
    const at::Tensor& topk_sim, const at::Tensor& topk_index);

}  // namespace vod_d2
