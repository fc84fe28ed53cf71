// CPU kernels of deformable PS RoI pooling (see deform_psroi_pool.h).
//
// The sample locations depend on the RoI and the bin, not on the channel: every task owns bins
// and, for each sample, reads all C_out channels at that location. The forward pass runs over
// (RoI, bin); the backward pass over bins (i, j), which own disjoint input channels
// c * k * k + i * k + j and their own offsets, so no two tasks write the same memory (no atomics,
// deterministic).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "deform_psroi_pool/deform_psroi_pool.h"

namespace vod_d2 {

namespace {

template <typename scalar_t>
void check_batch_indices(const scalar_t* rois, int64_t num_rois, int64_t batch) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t r = 0; r < num_rois; ++r) {
    const auto b = static_cast<int64_t>(static_cast<acc_t>(rois[r * 5]));
    TORCH_CHECK(b >= 0 && b < batch, "deform_ps_roi_pool: rois[", r, ", 0] = ",
                static_cast<acc_t>(rois[r * 5]), " is not an image index in [0, ", batch, ")");
  }
}

}  // namespace

at::Tensor deform_ps_roi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                          const at::Tensor& offsets, double spatial_scale,
                                          int64_t k, int64_t sampling_ratio, double trans_std) {
  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1);
  const int64_t height = input.size(2);
  const int64_t width = input.size(3);
  const int64_t bins = k * k;
  const int64_t channels_out = channels / bins;
  const int64_t hw = height * width;
  auto output = at::zeros({num_rois, channels_out, k, k}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "deform_ps_roi_pool_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* input_data = input.data_ptr<scalar_t>();
        const scalar_t* roi_data = rois.data_ptr<scalar_t>();
        const scalar_t* offset_data = offsets.defined() ? offsets.data_ptr<scalar_t>() : nullptr;
        scalar_t* output_data = output.data_ptr<scalar_t>();
        check_batch_indices(roi_data, num_rois, input.size(0));
        const auto scale = static_cast<acc_t>(spatial_scale);
        const auto gamma = static_cast<acc_t>(trans_std);
        at::parallel_for(0, num_rois * bins, 16, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> sums(channels_out);
          for (int64_t task = begin; task < end; ++task) {
            const int64_t r = task / bins;
            const int64_t bin = task % bins;
            const int64_t i = bin / k;
            const int64_t j = bin % k;
            const auto box = ps_roi_box<scalar_t, acc_t>(roi_data + r * 5, scale, k, sampling_ratio);
            acc_t hstart, wstart;
            ps_bin_start(box, offset_data, r, i, j, k, gamma, &hstart, &wstart);
            // Plane of output channel c: input channel c * k * k + bin of image box.batch.
            const scalar_t* planes = input_data + (box.batch * channels + bin) * hw;
            std::fill(sums.begin(), sums.end(), acc_t(0));
            for (int64_t iy = 0; iy < box.grid_h; ++iy) {
              const acc_t y = ps_sample_coordinate(hstart, iy, box.bin_h, box.grid_h);
              for (int64_t ix = 0; ix < box.grid_w; ++ix) {
                const acc_t x = ps_sample_coordinate(wstart, ix, box.bin_w, box.grid_w);
                const auto s = ps_sample<acc_t>(y, x, height, width);
                if (!s.inside) {
                  continue;  // adds zero
                }
                for (int64_t c = 0; c < channels_out; ++c) {
                  sums[c] += ps_interpolate(planes + c * bins * hw, s);
                }
              }
            }
            for (int64_t c = 0; c < channels_out; ++c) {
              output_data[(r * channels_out + c) * bins + bin] =
                  static_cast<scalar_t>(sums[c] / box.count);
            }
          }
        });
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor> deform_ps_roi_pool_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
    const at::Tensor& offsets, double spatial_scale, int64_t k, int64_t sampling_ratio,
    double trans_std) {
  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1);
  const int64_t height = input.size(2);
  const int64_t width = input.size(3);
  const int64_t bins = k * k;
  const int64_t channels_out = channels / bins;
  const int64_t hw = height * width;
  const auto acc_options = input.options().dtype(at::toOpMathType(input.scalar_type()));
  auto grad_input = at::zeros(input.sizes(), acc_options);
  auto grad_offsets = at::zeros({num_rois, 2, k, k}, acc_options);
  if (num_rois == 0 || channels_out == 0) {
    return {grad_input.to(input.scalar_type()), grad_offsets.to(input.scalar_type())};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "deform_ps_roi_pool_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* grad_data = grad.data_ptr<scalar_t>();
        const scalar_t* input_data = input.data_ptr<scalar_t>();
        const scalar_t* roi_data = rois.data_ptr<scalar_t>();
        const scalar_t* offset_data = offsets.defined() ? offsets.data_ptr<scalar_t>() : nullptr;
        acc_t* grad_input_data = grad_input.data_ptr<acc_t>();
        acc_t* grad_offset_data = grad_offsets.data_ptr<acc_t>();
        check_batch_indices(roi_data, num_rois, input.size(0));
        const auto scale = static_cast<acc_t>(spatial_scale);
        const auto gamma = static_cast<acc_t>(trans_std);
        at::parallel_for(0, bins, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> g(channels_out);
          for (int64_t bin = begin; bin < end; ++bin) {
            const int64_t i = bin / k;
            const int64_t j = bin % k;
            for (int64_t r = 0; r < num_rois; ++r) {
              const auto box =
                  ps_roi_box<scalar_t, acc_t>(roi_data + r * 5, scale, k, sampling_ratio);
              acc_t hstart, wstart;
              ps_bin_start(box, offset_data, r, i, j, k, gamma, &hstart, &wstart);
              const int64_t plane0 = (box.batch * channels + bin) * hw;
              for (int64_t c = 0; c < channels_out; ++c) {
                g[c] = static_cast<acc_t>(grad_data[(r * channels_out + c) * bins + bin]);
              }
              // d out / d (hstart, wstart), summed over the channels, times count.
              acc_t dy = 0;
              acc_t dx = 0;
              for (int64_t iy = 0; iy < box.grid_h; ++iy) {
                const acc_t y = ps_sample_coordinate(hstart, iy, box.bin_h, box.grid_h);
                for (int64_t ix = 0; ix < box.grid_w; ++ix) {
                  const acc_t x = ps_sample_coordinate(wstart, ix, box.bin_w, box.grid_w);
                  const auto s = ps_sample<acc_t>(y, x, height, width);
                  if (!s.inside) {
                    continue;
                  }
                  for (int64_t c = 0; c < channels_out; ++c) {
                    const int64_t plane = plane0 + c * bins * hw;
                    acc_t* gi = grad_input_data + plane;
                    for (int q = 0; q < 4; ++q) {
                      gi[s.index[q]] += g[c] * s.weight[q] / box.count;
                    }
                    if (offset_data != nullptr) {
                      const scalar_t* v = input_data + plane;
                      for (int q = 0; q < 4; ++q) {
                        const acc_t value = g[c] * static_cast<acc_t>(v[s.index[q]]);
                        dy += s.dweight_dy[q] * value;
                        dx += s.dweight_dx[q] * value;
                      }
                    }
                  }
                }
              }
              if (offset_data != nullptr) {
                acc_t* go = grad_offset_data + (r * 2 * k + i) * k + j;
                go[0] = dx / box.count * gamma * box.width;
                go[bins] = dy / box.count * gamma * box.height;
              }
            }
          }
        });
      });
  return {grad_input.to(input.scalar_type()), grad_offsets.to(input.scalar_type())};
}

}  // namespace vod_d2
