// CPU primitives of deformable similarity sampling (see deform_sampling.h).
//
// The bilinear coefficients of the N x H x W sampling locations are computed once per call (they
// do not depend on the channel). Gather and scatter then run over blocks of (image, channel)
// planes, so every thread owns the output planes it writes (no atomics) and one pass over the
// coefficients serves a whole block of channels. Correlate runs over blocks of positions of one
// sampling point and streams over the channels, its sums kept in local arrays.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "deform_sampling/deform_sampling.h"

namespace vod_d2 {

namespace {

constexpr int64_t kPositionBlock = 256;
constexpr int64_t kChannelBlock = 8;

struct SamplingGrid {
  int64_t batch;
  int64_t num_points;
  int64_t height;
  int64_t width;
  bool shared;
};

SamplingGrid sampling_grid(const at::Tensor& features, const at::Tensor& offsets) {
  const bool shared = offsets.dim() == 2;
  return {features.size(0), shared ? offsets.size(0) : offsets.size(1) / 2, features.size(2),
          features.size(3), shared};
}

// Coefficients of every sampling location, laid out (G, N, H * W) with G = 1 for shared offsets
// and G = B otherwise.
template <typename acc_t>
std::vector<BilinearSample<acc_t>> sampling_coefficients(const acc_t* offsets,
                                                         const SamplingGrid& grid) {
  const int64_t hw = grid.height * grid.width;
  const int64_t groups = grid.shared ? 1 : grid.batch;
  std::vector<BilinearSample<acc_t>> coefficients(groups * grid.num_points * hw);
  at::parallel_for(0, groups * grid.num_points, 1, [&](int64_t begin, int64_t end) {
    for (int64_t gn = begin; gn < end; ++gn) {
      const int64_t g = gn / grid.num_points;
      const int64_t n = gn % grid.num_points;
      for (int64_t p = 0; p < hw; ++p) {
        coefficients[gn * hw + p] = sample_location<acc_t>(
            offsets, grid.shared, g, n, p, grid.num_points, grid.height, grid.width);
      }
    }
  });
  return coefficients;
}

template <typename acc_t>
inline const BilinearSample<acc_t>* coefficients_of(
    const std::vector<BilinearSample<acc_t>>& coefficients, const SamplingGrid& grid, int64_t b,
    int64_t n) {
  const int64_t hw = grid.height * grid.width;
  return coefficients.data() + ((grid.shared ? 0 : b) * grid.num_points + n) * hw;
}

template <typename scalar_t, typename acc_t>
inline acc_t interpolate(const scalar_t* plane, const BilinearSample<acc_t>& s) {
  return s.weight[0] * static_cast<acc_t>(plane[s.index[0]]) +
         s.weight[1] * static_cast<acc_t>(plane[s.index[1]]) +
         s.weight[2] * static_cast<acc_t>(plane[s.index[2]]) +
         s.weight[3] * static_cast<acc_t>(plane[s.index[3]]);
}

}  // namespace

at::Tensor deform_gather_cpu(const at::Tensor& weights, const at::Tensor& features,
                             const at::Tensor& offsets) {
  const SamplingGrid grid = sampling_grid(features, offsets);
  const int64_t channels = features.size(1);
  const int64_t hw = grid.height * grid.width;
  auto output = at::zeros(features.sizes(),
                          features.options().dtype(at::toOpMathType(features.scalar_type())));
  if (output.numel() == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "deform_gather_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto coefficients =
            sampling_coefficients<acc_t>(offsets.data_ptr<acc_t>(), grid);
        const scalar_t* weight_data = weights.data_ptr<scalar_t>();
        const scalar_t* feature_data = features.data_ptr<scalar_t>();
        acc_t* output_data = output.data_ptr<acc_t>();
        const int64_t channel_blocks = (channels + kChannelBlock - 1) / kChannelBlock;
        at::parallel_for(0, grid.batch * channel_blocks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t task = begin; task < end; ++task) {
            const int64_t b = task / channel_blocks;
            const int64_t c0 = (task % channel_blocks) * kChannelBlock;
            const int64_t count = std::min(kChannelBlock, channels - c0);
            const scalar_t* planes = feature_data + (b * channels + c0) * hw;
            acc_t* out = output_data + (b * channels + c0) * hw;
            for (int64_t n = 0; n < grid.num_points; ++n) {
              const scalar_t* w = weight_data + (b * grid.num_points + n) * hw;
              const BilinearSample<acc_t>* coef = coefficients_of(coefficients, grid, b, n);
              for (int64_t p = 0; p < hw; ++p) {
                const acc_t wp = static_cast<acc_t>(w[p]);
                for (int64_t cc = 0; cc < count; ++cc) {
                  out[cc * hw + p] += wp * interpolate(planes + cc * hw, coef[p]);
                }
              }
            }
          }
        });
      });
  return output;
}

at::Tensor deform_scatter_cpu(const at::Tensor& weights, const at::Tensor& grad,
                              const at::Tensor& offsets) {
  const SamplingGrid grid = sampling_grid(grad, offsets);
  const int64_t channels = grad.size(1);
  const int64_t hw = grid.height * grid.width;
  auto output =
      at::zeros(grad.sizes(), grad.options().dtype(at::toOpMathType(grad.scalar_type())));
  if (output.numel() == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "deform_scatter_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto coefficients =
            sampling_coefficients<acc_t>(offsets.data_ptr<acc_t>(), grid);
        const scalar_t* weight_data = weights.data_ptr<scalar_t>();
        const scalar_t* grad_data = grad.data_ptr<scalar_t>();
        acc_t* output_data = output.data_ptr<acc_t>();
        const int64_t channel_blocks = (channels + kChannelBlock - 1) / kChannelBlock;
        at::parallel_for(0, grid.batch * channel_blocks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t task = begin; task < end; ++task) {
            const int64_t b = task / channel_blocks;
            const int64_t c0 = (task % channel_blocks) * kChannelBlock;
            const int64_t count = std::min(kChannelBlock, channels - c0);
            const scalar_t* g = grad_data + (b * channels + c0) * hw;
            acc_t* out = output_data + (b * channels + c0) * hw;
            for (int64_t n = 0; n < grid.num_points; ++n) {
              const scalar_t* w = weight_data + (b * grid.num_points + n) * hw;
              const BilinearSample<acc_t>* coef = coefficients_of(coefficients, grid, b, n);
              for (int64_t p = 0; p < hw; ++p) {
                const acc_t wp = static_cast<acc_t>(w[p]);
                const BilinearSample<acc_t>& s = coef[p];
                for (int64_t cc = 0; cc < count; ++cc) {
                  const acc_t value = wp * static_cast<acc_t>(g[cc * hw + p]);
                  acc_t* plane = out + cc * hw;
                  for (int i = 0; i < 4; ++i) {
                    plane[s.index[i]] += value * s.weight[i];
                  }
                }
              }
            }
          }
        });
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor> deform_correlate_cpu(const at::Tensor& x,
                                                         const at::Tensor& features,
                                                         const at::Tensor& offsets,
                                                         const at::Tensor& coef,
                                                         bool with_offset_grad) {
  const SamplingGrid grid = sampling_grid(features, offsets);
  const int64_t channels = features.size(1);
  const int64_t hw = grid.height * grid.width;
  const auto acc_options = features.options().dtype(at::toOpMathType(features.scalar_type()));
  auto correlation =
      at::zeros({grid.batch, grid.num_points, grid.height, grid.width}, acc_options);
  auto offset_grad = with_offset_grad
                         ? at::zeros({grid.batch, grid.num_points, 2, hw}, acc_options)
                         : at::Tensor();
  if (correlation.numel() == 0 || channels == 0) {
    return {correlation, offset_grad};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "deform_correlate_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto coefficients =
            sampling_coefficients<acc_t>(offsets.data_ptr<acc_t>(), grid);
        const scalar_t* x_data = x.data_ptr<scalar_t>();
        const scalar_t* feature_data = features.data_ptr<scalar_t>();
        const scalar_t* coef_data = with_offset_grad ? coef.data_ptr<scalar_t>() : nullptr;
        acc_t* corr_data = correlation.data_ptr<acc_t>();
        acc_t* grad_data = with_offset_grad ? offset_grad.data_ptr<acc_t>() : nullptr;
        const int64_t blocks = (hw + kPositionBlock - 1) / kPositionBlock;
        at::parallel_for(
            0, grid.batch * grid.num_points * blocks, 1, [&](int64_t begin, int64_t end) {
              acc_t corr[kPositionBlock];
              acc_t grad_y[kPositionBlock];
              acc_t grad_x[kPositionBlock];
              for (int64_t task = begin; task < end; ++task) {
                const int64_t bn = task / blocks;
                const int64_t b = bn / grid.num_points;
                const int64_t n = bn % grid.num_points;
                const int64_t start = (task % blocks) * kPositionBlock;
                const int64_t count = std::min(kPositionBlock, hw - start);
                const BilinearSample<acc_t>* cf = coefficients_of(coefficients, grid, b, n) + start;
                std::fill(corr, corr + count, acc_t(0));
                std::fill(grad_y, grad_y + count, acc_t(0));
                std::fill(grad_x, grad_x + count, acc_t(0));
                for (int64_t c = 0; c < channels; ++c) {
                  const scalar_t* xc = x_data + (b * channels + c) * hw + start;
                  const scalar_t* plane = feature_data + (b * channels + c) * hw;
                  for (int64_t i = 0; i < count; ++i) {
                    const BilinearSample<acc_t>& s = cf[i];
                    const acc_t xv = static_cast<acc_t>(xc[i]);
                    const acc_t f0 = static_cast<acc_t>(plane[s.index[0]]);
                    const acc_t f1 = static_cast<acc_t>(plane[s.index[1]]);
                    const acc_t f2 = static_cast<acc_t>(plane[s.index[2]]);
                    const acc_t f3 = static_cast<acc_t>(plane[s.index[3]]);
                    corr[i] += xv * (s.weight[0] * f0 + s.weight[1] * f1 + s.weight[2] * f2 +
                                     s.weight[3] * f3);
                    if (with_offset_grad) {
                      grad_y[i] += xv * (s.dweight_dy[0] * f0 + s.dweight_dy[1] * f1 +
                                         s.dweight_dy[2] * f2 + s.dweight_dy[3] * f3);
                      grad_x[i] += xv * (s.dweight_dx[0] * f0 + s.dweight_dx[1] * f1 +
                                         s.dweight_dx[2] * f2 + s.dweight_dx[3] * f3);
                    }
                  }
                }
                std::copy(corr, corr + count, corr_data + bn * hw + start);
                if (with_offset_grad) {
                  const scalar_t* cb = coef_data + bn * hw + start;
                  acc_t* gy = grad_data + bn * 2 * hw + start;
                  acc_t* gx = gy + hw;
                  for (int64_t i = 0; i < count; ++i) {
                    gy[i] = static_cast<acc_t>(cb[i]) * grad_y[i];
                    gx[i] = static_cast<acc_t>(cb[i]) * grad_x[i];
                  }
                }
              }
            });
      });
  return {correlation, offset_grad};
}

}  // namespace vod_d2
