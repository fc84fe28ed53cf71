// CPU primitives of deformable similarity sampling (see deform_sampling.h).
//
// The bilinear coefficients of the N x H x W sampling locations are computed once per call (they
// do not depend on the channel). Gather and correlate read the maps channels-last, (B, H * W, C):
// the four corners of a sampling location are then four contiguous rows of C values, and the
// loops over channels vectorise. Both run over blocks of output positions, so every thread owns
// the outputs it writes (no atomics). Scatter, the transpose of gather, writes to the corners: it
// runs over blocks of (image, channel) planes instead, so that each thread owns its planes.
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

// Channels-last rows of C values are laid out with a leading dimension of C + kRowPadding: for
// C a power of two, strides of exactly C would map the rows of a tile onto the same cache sets.
constexpr int64_t kRowPadding = 16;
constexpr int64_t kTile = 32;

inline int64_t row_stride(int64_t channels) {
  return channels + kRowPadding;
}

// dst[b][j * dst_ld + i] = src[b][i * src_ld + j] for i < rows, j < cols: a batch of transposes,
// in tiles that fit the cache, each written along i (contiguous).
template <typename src_t, typename dst_t>
void transpose(const src_t* src, int64_t src_ld, dst_t* dst, int64_t dst_ld, int64_t batch,
               int64_t rows, int64_t cols) {
  const int64_t tiles = (cols + kTile - 1) / kTile;
  at::parallel_for(0, batch * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles;
      const int64_t j0 = (task % tiles) * kTile;
      const int64_t j1 = std::min(cols, j0 + kTile);
      const src_t* s = src + b * rows * src_ld;
      dst_t* d = dst + b * cols * dst_ld;
      for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
        const int64_t i1 = std::min(rows, i0 + kTile);
        for (int64_t j = j0; j < j1; ++j) {
          for (int64_t i = i0; i < i1; ++i) {
            d[j * dst_ld + i] = static_cast<dst_t>(s[i * src_ld + j]);
          }
        }
      }
    }
  });
}

// A contiguous (B, C, H, W) map as (B, H * W, row_stride(C)) rows.
template <typename scalar_t>
at::Tensor channels_last_rows(const at::Tensor& x) {
  const int64_t hw = x.size(2) * x.size(3);
  auto rows = at::empty({x.size(0), hw, row_stride(x.size(1))}, x.options());
  transpose(x.data_ptr<scalar_t>(), hw, rows.data_ptr<scalar_t>(), row_stride(x.size(1)),
            x.size(0), x.size(1), hw);
  return rows;
}

// Accumulators of a sum over channels, kLanes independent partial sums so that the loop over
// channels vectorises; total() adds the lanes.
constexpr int64_t kLanes = 8;

template <typename acc_t>
struct LaneSum {
  acc_t lane[kLanes] = {};
  acc_t total() const {
    acc_t sum = 0;
    for (int64_t k = 0; k < kLanes; ++k) {
      sum += lane[k];
    }
    return sum;
  }
};

// Channel c of a bilinear sample, sum_i a[i] * f_i[c], from the rows f_i of its 4 corners and
// their coefficients a (the weights or their derivatives).
template <typename scalar_t, typename acc_t>
inline acc_t blend(const acc_t* a, const scalar_t* f0, const scalar_t* f1, const scalar_t* f2,
                   const scalar_t* f3, int64_t c) {
  return a[0] * static_cast<acc_t>(f0[c]) + a[1] * static_cast<acc_t>(f1[c]) +
         a[2] * static_cast<acc_t>(f2[c]) + a[3] * static_cast<acc_t>(f3[c]);
}

// fn(b, p) for every image b and flat position p, in parallel over blocks of positions: each
// output position belongs to one thread.
template <typename Fn>
void for_each_position(int64_t batch, int64_t hw, const Fn& fn) {
  const int64_t blocks = (hw + kPositionBlock - 1) / kPositionBlock;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t start = (task % blocks) * kPositionBlock;
      const int64_t stop = std::min(hw, start + kPositionBlock);
      for (int64_t p = start; p < stop; ++p) {
        fn(b, p);
      }
    }
  });
}

}  // namespace

at::Tensor deform_gather_cpu(const at::Tensor& weights, const at::Tensor& features,
                             const at::Tensor& offsets) {
  const SamplingGrid grid = sampling_grid(features, offsets);
  const int64_t channels = features.size(1);
  const int64_t hw = grid.height * grid.width;
  const auto acc_options = features.options().dtype(at::toOpMathType(features.scalar_type()));
  if (features.numel() == 0) {
    return at::zeros(features.sizes(), acc_options);
  }
  auto output = at::empty(features.sizes(), acc_options);
  const int64_t ld = row_stride(channels);
  auto rows = at::empty({grid.batch, hw, ld}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "deform_gather_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto coefficients =
            sampling_coefficients<acc_t>(offsets.data_ptr<acc_t>(), grid);
        const at::Tensor feature_rows = channels_last_rows<scalar_t>(features);
        const scalar_t* weight_data = weights.data_ptr<scalar_t>();
        const scalar_t* feature_data = feature_rows.data_ptr<scalar_t>();
        acc_t* row_data = rows.data_ptr<acc_t>();
        for_each_position(grid.batch, hw, [&](int64_t b, int64_t p) {
          const scalar_t* map = feature_data + b * hw * ld;
          acc_t* __restrict__ out = row_data + (b * hw + p) * ld;
          std::fill(out, out + channels, acc_t(0));
          for (int64_t n = 0; n < grid.num_points; ++n) {
            const acc_t wp = static_cast<acc_t>(weight_data[(b * grid.num_points + n) * hw + p]);
            const BilinearSample<acc_t>& s = coefficients_of(coefficients, grid, b, n)[p];
            const scalar_t* __restrict__ f0 = map + s.index[0] * ld;
            const scalar_t* __restrict__ f1 = map + s.index[1] * ld;
            const scalar_t* __restrict__ f2 = map + s.index[2] * ld;
            const scalar_t* __restrict__ f3 = map + s.index[3] * ld;
            const acc_t w[4] = {s.weight[0], s.weight[1], s.weight[2], s.weight[3]};
            for (int64_t c = 0; c < channels; ++c) {
              out[c] += wp * blend(w, f0, f1, f2, f3, c);
            }
          }
        });
        transpose(row_data, ld, output.data_ptr<acc_t>(), hw, grid.batch, hw, channels);
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
        const at::Tensor x_rows = channels_last_rows<scalar_t>(x);
        const at::Tensor feature_rows = channels_last_rows<scalar_t>(features);
        const scalar_t* x_data = x_rows.data_ptr<scalar_t>();
        const scalar_t* feature_data = feature_rows.data_ptr<scalar_t>();
        const scalar_t* coef_data = with_offset_grad ? coef.data_ptr<scalar_t>() : nullptr;
        acc_t* corr_data = correlation.data_ptr<acc_t>();
        acc_t* grad_data = with_offset_grad ? offset_grad.data_ptr<acc_t>() : nullptr;
        const int64_t body = channels - channels % kLanes;
        const int64_t ld = row_stride(channels);
        for_each_position(grid.batch, hw, [&](int64_t b, int64_t p) {
          const scalar_t* map = feature_data + b * hw * ld;
          const scalar_t* __restrict__ xp = x_data + (b * hw + p) * ld;
          for (int64_t n = 0; n < grid.num_points; ++n) {
            const int64_t bn = b * grid.num_points + n;
            const BilinearSample<acc_t>& s = coefficients_of(coefficients, grid, b, n)[p];
            const scalar_t* __restrict__ f0 = map + s.index[0] * ld;
            const scalar_t* __restrict__ f1 = map + s.index[1] * ld;
            const scalar_t* __restrict__ f2 = map + s.index[2] * ld;
            const scalar_t* __restrict__ f3 = map + s.index[3] * ld;
            // sum_c x[c] * blend(a, c), for a the weights or their derivatives.
            auto correlate = [&](const acc_t* a) {
              LaneSum<acc_t> sum;
              for (int64_t c0 = 0; c0 < body; c0 += kLanes) {
                for (int64_t k = 0; k < kLanes; ++k) {
                  sum.lane[k] += static_cast<acc_t>(xp[c0 + k]) * blend(a, f0, f1, f2, f3, c0 + k);
                }
              }
              for (int64_t c = body; c < channels; ++c) {
                sum.lane[0] += static_cast<acc_t>(xp[c]) * blend(a, f0, f1, f2, f3, c);
              }
              return sum.total();
            };
            corr_data[bn * hw + p] = correlate(s.weight);
            if (with_offset_grad) {
              const acc_t cb = static_cast<acc_t>(coef_data[bn * hw + p]);
              grad_data[bn * 2 * hw + p] = cb * correlate(s.dweight_dy);
              grad_data[(bn * 2 + 1) * hw + p] = cb * correlate(s.dweight_dx);
            }
          }
        });
      });
  return {correlation, offset_grad};
}

}  // namespace vod_d2
