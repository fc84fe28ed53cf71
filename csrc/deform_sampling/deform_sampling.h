// Deformable sampling with similarity aggregation (LSTS, Sec. 3.2).
//
// For every output position p0 = (h, w) and each of N sampling points, the sampling location is
// p_n = (h + dy_n, w + dx_n). Offsets are given in (dy, dx) order (torchvision's deform_conv2d
// order), either shared by all positions, (N, 2), or per position, (B, 2N, H, W) with channel 2n
// holding dy_n and channel 2n + 1 holding dx_n.
//
// The op is split in two kernels around a small (B, N, H, W) map so that the (B, C, N, H, W)
// sampled features never exist; the normalisation of the similarities over n (softmax or the
// paper's s / sum(s), Eq. 3) runs in between, in PyTorch:
//   similarity:  s[b, n, p0] = <query[b, :, p0], key[b, :, p_n]>                    (Eq. 2, 5)
//   aggregate:   out[b, c, p0] = sum_n weights[b, n, p0] * value[b, c, p_n]         (Eq. 4)
// Both sample bilinearly with zero padding (Eq. 1): a location with y <= -1, y >= H, x <= -1 or
// x >= W samples zero, and corners outside the map contribute zero. Gradients reach every input,
// the offsets included (Eq. 6); at integer locations the derivative is the one-sided one from
// above (floor convention), as in the PyTorch reference.
//
// Both kernels are built from three primitives over the bilinear samples g(n, p0):
//   gather:     out[b, c, p0] = sum_n w[b, n, p0] * bilinear(feat[b, c], p_n)
//   scatter:    out[b, c, q] += w[b, n, p0] * G(p_n, q) * grad[b, c, p0]  (transpose of gather)
//   correlate:  corr[b, n, p0] = sum_c x[b, c, p0] * bilinear(feat[b, c], p_n), and optionally
//               grad_offsets[b, n, :, p0] = coef[b, n, p0] * sum_c x * d bilinear / d(y, x).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "common.h"

namespace vod_d2 {

// Bilinear interpolation coefficients of one sampling location: the flat indices of the four
// corners (0 for a corner outside the map), their weights and the derivatives of the weights
// with respect to y and x (all 0 for a corner outside the map).
template <typename acc_t>
struct BilinearSample {
  int64_t index[4];
  acc_t weight[4];
  acc_t dweight_dy[4];
  acc_t dweight_dx[4];
};

template <typename acc_t>
VOD_HOST_DEVICE inline BilinearSample<acc_t> bilinear_sample(acc_t y, acc_t x, int64_t height,
                                                            int64_t width) {
  BilinearSample<acc_t> s;
  for (int i = 0; i < 4; ++i) {
    s.index[i] = 0;
    s.weight[i] = 0;
    s.dweight_dy[i] = 0;
    s.dweight_dx[i] = 0;
  }
  // Written so that NaN locations are outside too.
  if (!(y > -1 && y < height && x > -1 && x < width)) {
    return s;
  }
  const acc_t y_floor = ::floor(y);
  const acc_t x_floor = ::floor(x);
  const int64_t y0 = static_cast<int64_t>(y_floor);
  const int64_t x0 = static_cast<int64_t>(x_floor);
  const acc_t ly = y - y_floor;
  const acc_t lx = x - x_floor;
  const acc_t hy = 1 - ly;
  const acc_t hx = 1 - lx;
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const acc_t weight[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const acc_t dweight_dy[4] = {-hx, -lx, hx, lx};
  const acc_t dweight_dx[4] = {-hy, hy, -ly, ly};
  for (int i = 0; i < 4; ++i) {
    if (ys[i] >= 0 && ys[i] < height && xs[i] >= 0 && xs[i] < width) {
      s.index[i] = ys[i] * width + xs[i];
      s.weight[i] = weight[i];
      s.dweight_dy[i] = dweight_dy[i];
      s.dweight_dx[i] = dweight_dx[i];
    }
  }
  return s;
}

// Sampling location of point n for output position p (flat h * width + w) of image b. Offsets
// are contiguous, in the opmath dtype, either (N, 2) (`shared`) or (B, 2N, H, W).
template <typename acc_t>
VOD_HOST_DEVICE inline BilinearSample<acc_t> sample_location(const acc_t* offsets, bool shared,
                                                             int64_t b, int64_t n, int64_t p,
                                                             int64_t num_points, int64_t height,
                                                             int64_t width) {
  acc_t dy, dx;
  if (shared) {
    dy = static_cast<acc_t>(offsets[2 * n]);
    dx = static_cast<acc_t>(offsets[2 * n + 1]);
  } else {
    const int64_t hw = height * width;
    const acc_t* base = offsets + (b * 2 * num_points + 2 * n) * hw + p;
    dy = static_cast<acc_t>(base[0]);
    dx = static_cast<acc_t>(base[hw]);
  }
  const acc_t y = static_cast<acc_t>(p / width) + dy;
  const acc_t x = static_cast<acc_t>(p % width) + dx;
  return bilinear_sample<acc_t>(y, x, height, width);
}

// Checks shared by both kernels: `per_point` is query (similarity) or weights (aggregate).
inline int64_t check_deform_sampling_inputs(const char* op, const at::Tensor& per_position,
                                            const at::Tensor& features,
                                            const at::Tensor& offsets) {
  TORCH_CHECK(per_position.dim() == 4 && features.dim() == 4, op,
              ": expected 4-D (B, C, H, W) inputs, got ", per_position.sizes(), " and ",
              features.sizes());
  TORCH_CHECK(per_position.size(0) == features.size(0) &&
                  per_position.size(2) == features.size(2) &&
                  per_position.size(3) == features.size(3),
              op, ": batch and spatial sizes differ: ", per_position.sizes(), " vs ",
              features.sizes());
  const bool low_precision =
      features.scalar_type() == at::kHalf || features.scalar_type() == at::kBFloat16;
  TORCH_CHECK(per_position.scalar_type() == features.scalar_type() &&
                  (offsets.scalar_type() == features.scalar_type() ||
                   (low_precision && offsets.scalar_type() == at::kFloat)),
              op, ": all inputs must have the same dtype (or float32 offsets with float16 / ",
              "bfloat16 features), got ", per_position.scalar_type(), ", ",
              features.scalar_type(), " and offsets ", offsets.scalar_type());
  TORCH_CHECK(per_position.device() == features.device() && offsets.device() == features.device(),
              op, ": all inputs must be on the same device");
  int64_t num_points;
  if (offsets.dim() == 2) {
    TORCH_CHECK(offsets.size(1) == 2, op, ": shared offsets must be (N, 2), got ",
                offsets.sizes());
    num_points = offsets.size(0);
  } else {
    TORCH_CHECK(offsets.dim() == 4 && offsets.size(1) % 2 == 0 &&
                    offsets.size(0) == features.size(0) && offsets.size(2) == features.size(2) &&
                    offsets.size(3) == features.size(3),
                op, ": offsets must be (N, 2) or (B, 2N, H, W) matching the features, got ",
                offsets.sizes());
    num_points = offsets.size(1) / 2;
  }
  TORCH_CHECK(num_points > 0, op, ": need at least one sampling point");
  return num_points;
}

// Device primitives (see the file comment). Inputs are contiguous and checked by the caller, the
// offsets in the opmath dtype (float for half/bfloat16); outputs are in the opmath dtype.
at::Tensor deform_gather_cpu(const at::Tensor& weights, const at::Tensor& features,
                             const at::Tensor& offsets);
at::Tensor deform_scatter_cpu(const at::Tensor& weights, const at::Tensor& grad,
                              const at::Tensor& offsets);
std::tuple<at::Tensor, at::Tensor> deform_correlate_cpu(const at::Tensor& x,
                                                         const at::Tensor& features,
                                                         const at::Tensor& offsets,
                                                         const at::Tensor& coef,
                                                         bool with_offset_grad);
#ifdef WITH_CUDA
at::Tensor deform_gather_cuda(const at::Tensor& weights, const at::Tensor& features,
                              const at::Tensor& offsets);
at::Tensor deform_scatter_cuda(const at::Tensor& weights, const at::Tensor& grad,
                               const at::Tensor& offsets);
std::tuple<at::Tensor, at::Tensor> deform_correlate_cuda(const at::Tensor& x,
                                                          const at::Tensor& features,
                                                          const at::Tensor& offsets,
                                                          const at::Tensor& coef,
                                                          bool with_offset_grad);
#endif

inline at::Tensor deform_gather(const at::Tensor& weights, const at::Tensor& features,
                                const at::Tensor& offsets) {
  if (use_cuda_kernel(features, "deform_gather")) {
#ifdef WITH_CUDA
    return deform_gather_cuda(weights, features, offsets);
#endif
  }
  return deform_gather_cpu(weights, features, offsets);
}

inline at::Tensor deform_scatter(const at::Tensor& weights, const at::Tensor& grad,
                                 const at::Tensor& offsets) {
  if (use_cuda_kernel(grad, "deform_scatter")) {
#ifdef WITH_CUDA
    return deform_scatter_cuda(weights, grad, offsets);
#endif
  }
  return deform_scatter_cpu(weights, grad, offsets);
}

inline std::tuple<at::Tensor, at::Tensor> deform_correlate(const at::Tensor& x,
                                                           const at::Tensor& features,
                                                           const at::Tensor& offsets,
                                                           const at::Tensor& coef,
                                                           bool with_offset_grad) {
  if (use_cuda_kernel(features, "deform_correlate")) {
#ifdef WITH_CUDA
    return deform_correlate_cuda(x, features, offsets, coef, with_offset_grad);
#endif
  }
  return deform_correlate_cpu(x, features, offsets, coef, with_offset_grad);
}

// Ops registered in vision.cpp (implemented in deform_sampling.cpp, device-agnostic).
at::Tensor deform_similarity_forward(const at::Tensor& query, const at::Tensor& key,
                                     const at::Tensor& offsets);
std::tuple<at::Tensor, at::Tensor, at::Tensor> deform_similarity_backward(
    const at::Tensor& grad_similarity, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& offsets);
at::Tensor deform_aggregate_forward(const at::Tensor& weights, const at::Tensor& value,
                                    const at::Tensor& offsets);
std::tuple<at::Tensor, at::Tensor, at::Tensor> deform_aggregate_backward(
    const at::Tensor& grad_output, const at::Tensor& weights, const at::Tensor& value,
    const at::Tensor& offsets);

}  // namespace vod_d2
