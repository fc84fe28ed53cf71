// Deformable position-sensitive RoI pooling (Dai et al., ICCV 2017), on torchvision's
// ps_roi_align conventions.
//
// Input (N, C_out * k * k, H, W), rois (R, 5) [batch_index, x1, y1, x2, y2] in image coordinates,
// optional offsets (R, 2, k, k) in (dx, dy) order. For RoI r and bin (i, j):
//   box on the map   (x1, y1, x2, y2) * spatial_scale - 0.5, width w, height h, bins w/k x h/k
//   bin start        (x1' + j * w / k + trans_std * dx_rij * w, y1' + i * h / k + trans_std * dy_rij * h)
//   out[r, c, i, j]  mean over a g_h x g_w grid of sample centres in the bin of
//                    bilinear(input[rois[r, 0], c * k * k + i * k + j], y, x)
// with g = sampling_ratio, or ceil(h / k) and ceil(w / k) when sampling_ratio <= 0, and
// torchvision's bilinear rule: zero when y < -1, y > H, x < -1 or x > W, otherwise coordinates
// below 0 clamp to 0 and beyond the last cell to the last cell. Every step is written as
// torchvision's kernel writes it (same operations, same order, in float for float), so zero
// offsets reproduce ps_roi_align exactly on CPU. The derivative with respect to a clamped
// coordinate is zero.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "common.h"

namespace vod_d2 {

// Where a RoI lies on the map, and its sampling grid.
template <typename acc_t>
struct PSRoIBox {
  int64_t batch;
  acc_t start_h, start_w;
  acc_t height, width;
  acc_t bin_h, bin_w;
  int64_t grid_h, grid_w;
  acc_t count;  // grid_h * grid_w, the divisor of the bin mean
};

template <typename scalar_t, typename acc_t>
VOD_HOST_DEVICE inline PSRoIBox<acc_t> ps_roi_box(const scalar_t* roi, acc_t spatial_scale,
                                                  int64_t k, int64_t sampling_ratio) {
  PSRoIBox<acc_t> box;
  box.batch = static_cast<int64_t>(static_cast<acc_t>(roi[0]));
  box.start_w = static_cast<acc_t>(roi[1]) * spatial_scale - static_cast<acc_t>(0.5);
  box.start_h = static_cast<acc_t>(roi[2]) * spatial_scale - static_cast<acc_t>(0.5);
  const acc_t end_w = static_cast<acc_t>(roi[3]) * spatial_scale - static_cast<acc_t>(0.5);
  const acc_t end_h = static_cast<acc_t>(roi[4]) * spatial_scale - static_cast<acc_t>(0.5);
  box.width = end_w - box.start_w;
  box.height = end_h - box.start_h;
  box.bin_h = box.height / static_cast<acc_t>(k);
  box.bin_w = box.width / static_cast<acc_t>(k);
  // As torchvision: no lower bound, so a degenerate box has an empty grid.
  box.grid_h = sampling_ratio > 0 ? sampling_ratio
                                  : static_cast<int64_t>(::ceil(box.height / static_cast<acc_t>(k)));
  box.grid_w = sampling_ratio > 0 ? sampling_ratio
                                  : static_cast<int64_t>(::ceil(box.width / static_cast<acc_t>(k)));
  box.count = static_cast<acc_t>(box.grid_h * box.grid_w);
  return box;
}

// One bilinear sample: corner offsets within a plane, weights, and the derivatives of the
// weights with respect to y and x (zero along a clamped coordinate). All zero outside.
template <typename acc_t>
struct PSSample {
  bool inside;
  int64_t index[4];
  acc_t weight[4];
  acc_t dweight_dy[4];
  acc_t dweight_dx[4];
};

template <typename acc_t>
VOD_HOST_DEVICE inline PSSample<acc_t> ps_sample(acc_t y, acc_t x, int64_t height, int64_t width) {
  PSSample<acc_t> s;
  for (int i = 0; i < 4; ++i) {
    s.index[i] = 0;
    s.weight[i] = 0;
    s.dweight_dy[i] = 0;
    s.dweight_dx[i] = 0;
  }
  // Written as !(in range) so that NaN coordinates are outside.
  s.inside = y >= acc_t(-1) && y <= static_cast<acc_t>(height) && x >= acc_t(-1) &&
             x <= static_cast<acc_t>(width);
  if (!s.inside) {
    return s;
  }
  bool y_moves = true;
  bool x_moves = true;
  if (y <= 0) {
    y = 0;
    y_moves = false;
  }
  if (x <= 0) {
    x = 0;
    x_moves = false;
  }
  int64_t y_low = static_cast<int64_t>(y);
  int64_t x_low = static_cast<int64_t>(x);
  int64_t y_high, x_high;
  if (y_low >= height - 1) {
    y_high = y_low = height - 1;
    y = static_cast<acc_t>(y_low);
    y_moves = false;
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = static_cast<acc_t>(x_low);
    x_moves = false;
  } else {
    x_high = x_low + 1;
  }
  const acc_t ly = y - static_cast<acc_t>(y_low);
  const acc_t lx = x - static_cast<acc_t>(x_low);
  const acc_t hy = acc_t(1) - ly;
  const acc_t hx = acc_t(1) - lx;
  s.index[0] = y_low * width + x_low;
  s.index[1] = y_low * width + x_high;
  s.index[2] = y_high * width + x_low;
  s.index[3] = y_high * width + x_high;
  s.weight[0] = hy * hx;
  s.weight[1] = hy * lx;
  s.weight[2] = ly * hx;
  s.weight[3] = ly * lx;
  if (y_moves) {
    s.dweight_dy[0] = -hx;
    s.dweight_dy[1] = -lx;
    s.dweight_dy[2] = hx;
    s.dweight_dy[3] = lx;
  }
  if (x_moves) {
    s.dweight_dx[0] = -hy;
    s.dweight_dx[1] = hy;
    s.dweight_dx[2] = -ly;
    s.dweight_dx[3] = ly;
  }
  return s;
}

// Sum of the four weighted corners, in torchvision's order.
template <typename scalar_t, typename acc_t>
VOD_HOST_DEVICE inline acc_t ps_interpolate(const scalar_t* plane, const PSSample<acc_t>& s) {
  if (!s.inside) {
    return 0;
  }
  return s.weight[0] * static_cast<acc_t>(plane[s.index[0]]) +
         s.weight[1] * static_cast<acc_t>(plane[s.index[1]]) +
         s.weight[2] * static_cast<acc_t>(plane[s.index[2]]) +
         s.weight[3] * static_cast<acc_t>(plane[s.index[3]]);
}

// Start (y, x) of bin (i, j) of a RoI, moved by its offsets when there are any.
template <typename scalar_t, typename acc_t>
VOD_HOST_DEVICE inline void ps_bin_start(const PSRoIBox<acc_t>& box, const scalar_t* offsets,
                                         int64_t r, int64_t i, int64_t j, int64_t k,
                                         acc_t trans_std, acc_t* hstart, acc_t* wstart) {
  *hstart = static_cast<acc_t>(i) * box.bin_h + box.start_h;
  *wstart = static_cast<acc_t>(j) * box.bin_w + box.start_w;
  if (offsets != nullptr) {
    const scalar_t* dx = offsets + ((r * 2) * k + i) * k + j;
    *wstart += (static_cast<acc_t>(dx[0]) * trans_std) * box.width;
    *hstart += (static_cast<acc_t>(dx[k * k]) * trans_std) * box.height;
  }
}

// Sample (iy, ix) of a bin's grid: the centre of its cell of the grid.
template <typename acc_t>
VOD_HOST_DEVICE inline acc_t ps_sample_coordinate(acc_t start, int64_t step, acc_t bin,
                                                  int64_t grid) {
  return start + static_cast<acc_t>(step + 0.5f) * bin / static_cast<acc_t>(grid);
}

// Device kernels; inputs contiguous and checked by the caller, `offsets` undefined for none.
// forward -> (R, C_out, k, k) in the input dtype; backward -> (grad_input in the input dtype,
// grad_offsets (R, 2, k, k), zero without offsets).
at::Tensor deform_ps_roi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                          const at::Tensor& offsets, double spatial_scale,
                                          int64_t k, int64_t sampling_ratio, double trans_std);
std::tuple<at::Tensor, at::Tensor> deform_ps_roi_pool_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
    const at::Tensor& offsets, double spatial_scale, int64_t k, int64_t sampling_ratio,
    double trans_std);
#ifdef WITH_CUDA
at::Tensor deform_ps_roi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                           const at::Tensor& offsets, double spatial_scale,
                                           int64_t k, int64_t sampling_ratio, double trans_std);
std::tuple<at::Tensor, at::Tensor> deform_ps_roi_pool_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
    const at::Tensor& offsets, double spatial_scale, int64_t k, int64_t sampling_ratio,
    double trans_std);
#endif

// Ops registered in vision.cpp (implemented in deform_psroi_pool.cpp: checks, then the device).
at::Tensor deform_ps_roi_pool_forward(const at::Tensor& input, const at::Tensor& rois,
                                      const c10::optional<at::Tensor>& offsets,
                                      double spatial_scale, int64_t output_size,
                                      int64_t sampling_ratio, double trans_std);
std::tuple<at::Tensor, at::Tensor> deform_ps_roi_pool_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
    const c10::optional<at::Tensor>& offsets, double spatial_scale, int64_t output_size,
    int64_t sampling_ratio, double trans_std);

}  // namespace vod_d2
