// Temporal RoI Align (SparseVOD's Temporal RoI Feature Extraction, after Gong et al., AAAI'21).
//
// Every RoI r of image b = roi_batch_index[r] (features (R, C, S, S)) is matched against each of
// the T support maps of its image (support features (B, T, C, H, W)). For every cell m of the RoI
// and support map t:
//   cos[p]          = <q / |q|, F[b, t, :, p] / |F[b, t, :, p]|>  for all H * W locations p,
//                     q = roi[r, :, m]
//   p_1..p_K        = the K most similar locations (ties: lower flat index first)
//   out[r, t, :, m] = sum_k softmax_k(cos[p_k]) * F[b, t, :, p_k]
// Norms are clamped at kNormEps (as torch.nn.functional.normalize), and a clamped norm passes no
// gradient (an all-zero RoI cell, e.g. a bin outside the map, would otherwise get gradients of
// 1 / kNormEps): a clamped cell gets zero gradient, a clamped support location only the gradient
// of its value. The selection is not differentiated; gradients flow to both feature maps through
// the weights and the averaged values.
//
// Why this layout: the usual implementation builds the (R * S * S) x (H * W) similarity matrix
// (141 MiB in float for R = 300, S = 7 and a 38 x 63 map) plus an (R * S * S, K, C) gather, per
// support map, and repeats the RoIs T times to reach T maps. Here each RoI cell is normalised once
// for all T maps; the similarities are computed by a GEMM on chunks of at most kSimilarityChunk
// entries (16 MiB in float) and reduced at once to their top K by a streaming selection that
// keeps K <= kMaxTopK candidates in local arrays (registers / local memory on CUDA); only the
// (R, T, S * S, K) similarities and indices are stored, for the backward pass, and the weighted
// average reads the K rows directly (no gather tensor). Using the vendor GEMM (MKL/cuBLAS) per
// chunk keeps the speed of the dense implementation, which a hand-written fused dot-product loop
// would not reach. The backward pass needs no similarity matrix at all.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common.h"

namespace vod_d2 {

constexpr int64_t kMaxTopK = 32;
constexpr int64_t kSimilarityChunk = int64_t(1) << 22;
constexpr double kNormEps = 1e-12;

// Device primitives; all floating tensors are in the opmath dtype and contiguous. Output rows m
// are laid out (R, T, cells); row m reads support map row_map[m] (of B * T) and query (RoI cell)
// q(m) = (m / (T * cells)) * cells + m % cells, so the Q = R * cells queries are never repeated.
//   topk:     similarity (N, L) -> values (N, K) descending, indices (N, K) int64
//   gather:   out[m, :] = sum_k softmax(topk_sim[m])_k * scale[map_m, i_k] * hat[map_m, i_k, :]
//   backward: grad_q (Q, C) w.r.t. the cells, grad_support (B * T, L, C) w.r.t. the support maps
std::tuple<at::Tensor, at::Tensor> tra_topk_cpu(const at::Tensor& similarity, int64_t k);
at::Tensor tra_gather_cpu(const at::Tensor& topk_sim, const at::Tensor& topk_index,
                          const at::Tensor& support_hat, const at::Tensor& support_scale,
                          const at::Tensor& row_map);
std::tuple<at::Tensor, at::Tensor> tra_backward_cpu(
    const at::Tensor& grad_cells, const at::Tensor& q_hat, const at::Tensor& q_norm,
    const at::Tensor& topk_sim, const at::Tensor& topk_index, const at::Tensor& support_hat,
    const at::Tensor& support_norm, const at::Tensor& row_map, int64_t supports,
    int64_t cells);
#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> tra_topk_cuda(const at::Tensor& similarity, int64_t k);
at::Tensor tra_gather_cuda(const at::Tensor& topk_sim, const at::Tensor& topk_index,
                           const at::Tensor& support_hat, const at::Tensor& support_scale,
                           const at::Tensor& row_map);
std::tuple<at::Tensor, at::Tensor> tra_backward_cuda(
    const at::Tensor& grad_cells, const at::Tensor& q_hat, const at::Tensor& q_norm,
    const at::Tensor& topk_sim, const at::Tensor& topk_index, const at::Tensor& support_hat,
    const at::Tensor& support_norm, const at::Tensor& row_map, int64_t supports,
    int64_t cells);
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
                             const at::Tensor& row_map) {
  if (use_cuda_kernel(support_hat, "temporal_roi_align gather")) {
#ifdef WITH_CUDA
    return tra_gather_cuda(topk_sim, topk_index, support_hat, support_scale, row_map);
#endif
  }
  return tra_gather_cpu(topk_sim, topk_index, support_hat, support_scale, row_map);
}

inline std::tuple<at::Tensor, at::Tensor> tra_backward(
    const at::Tensor& grad_cells, const at::Tensor& q_hat, const at::Tensor& q_norm,
    const at::Tensor& topk_sim, const at::Tensor& topk_index, const at::Tensor& support_hat,
    const at::Tensor& support_norm, const at::Tensor& row_map, int64_t supports, int64_t cells) {
  if (use_cuda_kernel(support_hat, "temporal_roi_align backward")) {
#ifdef WITH_CUDA
    return tra_backward_cuda(grad_cells, q_hat, q_norm, topk_sim, topk_index, support_hat,
                             support_norm, row_map, supports, cells);
#endif
  }
  return tra_backward_cpu(grad_cells, q_hat, q_norm, topk_sim, topk_index, support_hat,
                          support_norm, row_map, supports, cells);
}

// Ops registered in vision.cpp (implemented in temporal_roi_align.cpp, device-agnostic).
// forward: roi_features (R, C, S, S), support_features (B, T, C, H, W), roi_batch_index (R,) ->
// (output (R, T, C, S, S), topk_sim (R, T, S * S, K) opmath, topk_index (R, T, S * S, K)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_roi_align_forward(
    const at::Tensor& roi_features, const at::Tensor& support_features,
    const at::Tensor& roi_batch_index, int64_t k);
std::tuple<at::Tensor, at::Tensor> temporal_roi_align_backward(
    const at::Tensor& grad_output, const at::Tensor& roi_features,
    const at::Tensor& support_features, const at::Tensor& roi_batch_index,
    const at::Tensor& topk_sim, const at::Tensor& topk_index);

}  // namespace vod_d2
