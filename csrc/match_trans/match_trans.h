// MatchTrans local correlation and aggregation (STMN, Sec. 3.3).
//
// A (2k + 1) x (2k + 1) window of displacements is indexed by d in [0, D), D = (2k + 1)^2, with
// (dy, dx) = (d / (2k + 1) - k, d % (2k + 1) - k): row-major over the window, dy outer. Features
// outside the map are zero (zero padding).
//   local_correlation(a, b, k)[n, d, y, x] = sum_c a[n, c, y, x] * b[n, c, y + dy, x + dx]
//   local_aggregate(w, m, k)[n, c, y, x]   = sum_d w[n, d, y, x] * m[n, c, y + dy, x + dx]
// Both ops and their gradients are built from three device primitives:
//   correlate(a, b)  -> (N, D, H, W): the correlation above
//   gather(w, m)     -> (N, C, H, W): the aggregation above
//   scatter(w, g)    -> (N, C, H, W): out[c, q] = sum_d w[d, q - delta_d] * g[c, q - delta_d],
//                       the transpose of gather with respect to m
// scatter is written as a gather over source positions, so no kernel needs atomics.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common.h"

namespace vod_d2 {

at::Tensor local_correlate_cpu(const at::Tensor& a, const at::Tensor& b, int64_t k);
at::Tensor local_gather_cpu(const at::Tensor& weights, const at::Tensor& m, int64_t k);
at::Tensor local_scatter_cpu(const at::Tensor& weights, const at::Tensor& grad, int64_t k);
#ifdef WITH_CUDA
at::Tensor local_correlate_cuda(const at::Tensor& a, const at::Tensor& b, int64_t k);
at::Tensor local_gather_cuda(const at::Tensor& weights, const at::Tensor& m, int64_t k);
at::Tensor local_scatter_cuda(const at::Tensor& weights, const at::Tensor& grad, int64_t k);
#endif

inline at::Tensor local_correlate(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  if (use_cuda_kernel(a, "local_correlate")) {
#ifdef WITH_CUDA
    return local_correlate_cuda(a, b, k);
#endif
  }
  return local_correlate_cpu(a, b, k);
}

inline at::Tensor local_gather(const at::Tensor& weights, const at::Tensor& m, int64_t k) {
  if (use_cuda_kernel(m, "local_gather")) {
#ifdef WITH_CUDA
    return local_gather_cuda(weights, m, k);
#endif
  }
  return local_gather_cpu(weights, m, k);
}

inline at::Tensor local_scatter(const at::Tensor& weights, const at::Tensor& grad, int64_t k) {
  if (use_cuda_kernel(grad, "local_scatter")) {
#ifdef WITH_CUDA
    return local_scatter_cuda(weights, grad, k);
#endif
  }
  return local_scatter_cpu(weights, grad, k);
}

// Ops registered in vision.cpp (implemented in match_trans.cpp, device-agnostic).
at::Tensor local_correlation_forward(const at::Tensor& a, const at::Tensor& b, int64_t k);
std::tuple<at::Tensor, at::Tensor> local_correlation_backward(const at::Tensor& grad,
                                                              const at::Tensor& a,
                                                              const at::Tensor& b, int64_t k);
at::Tensor local_aggregate_forward(const at::Tensor& weights, const at::Tensor& m, int64_t k);
std::tuple<at::Tensor, at::Tensor> local_aggregate_backward(const at::Tensor& grad,
                                                            const at::Tensor& weights,
                                                            const at::Tensor& m, int64_t k);

}  // namespace vod_d2
