// CPU primitives of MatchTrans (see match_trans.h).
//
// Every task owns one output row (image, row y) or (image, channel block, row y) and accumulates
// it in a local buffer; the inner loops run along x over contiguous, shifted rows, so they
// vectorise, and the rows they read stay in cache while the window is swept.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "match_trans/match_trans.h"

namespace vod_d2 {

namespace {

constexpr int64_t kChannelBlock = 32;

// x range [begin, end) for which x + dx lies in [0, width).
inline std::pair<int64_t, int64_t> valid_columns(int64_t dx, int64_t width) {
  return {std::max<int64_t>(0, -dx), std::min<int64_t>(width, width - dx)};
}

// gather (sign = +1) and scatter (sign = -1):
// out[c, y, x] = sum_d w[d, y', x'] * f[c, y + sign * dy, x + sign * dx], where (y', x') is the
// output position for gather and the source position for scatter.
template <typename scalar_t>
void window_sum(const at::Tensor& weights, const at::Tensor& features, int64_t k, int sign,
                at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = features.size(0);
  const int64_t channels = features.size(1);
  const int64_t height = features.size(2);
  const int64_t width = features.size(3);
  const int64_t hw = height * width;
  const int64_t side = 2 * k + 1;
  const int64_t window = side * side;
  const scalar_t* weight_data = weights.data_ptr<scalar_t>();
  const scalar_t* feature_data = features.data_ptr<scalar_t>();
  acc_t* output_data = output.data_ptr<acc_t>();
  const int64_t channel_blocks = (channels + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, batch * channel_blocks * height, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(width);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t y = task % height;
      const int64_t block = (task / height) % channel_blocks;
      const int64_t b = task / (height * channel_blocks);
      const int64_t c_end = std::min(channels, (block + 1) * kChannelBlock);
      for (int64_t c = block * kChannelBlock; c < c_end; ++c) {
        std::fill(row.begin(), row.end(), acc_t(0));
        const scalar_t* plane = feature_data + (b * channels + c) * hw;
        for (int64_t d = 0; d < window; ++d) {
          const int64_t dy = sign * (d / side - k);
          const int64_t dx = sign * (d % side - k);
          const int64_t ys = y + dy;
          if (ys < 0 || ys >= height) {
            continue;
          }
          const auto cols = valid_columns(dx, width);
          const scalar_t* f = plane + ys * width;
          const int64_t w_dx = sign > 0 ? 0 : dx;
          const scalar_t* w = weight_data + (b * window + d) * hw + (sign > 0 ? y : ys) * width;
          for (int64_t x = cols.first; x < cols.second; ++x) {
            row[x] += static_cast<acc_t>(w[x + w_dx]) * static_cast<acc_t>(f[x + dx]);
          }
        }
        std::copy(row.begin(), row.end(), output_data + (b * channels + c) * hw + y * width);
      }
    }
  });
}

}  // namespace

at::Tensor local_correlate_cpu(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  const int64_t batch = a.size(0);
  const int64_t channels = a.size(1);
  const int64_t height = a.size(2);
  const int64_t width = a.size(3);
  const int64_t side = 2 * k + 1;
  const int64_t window = side * side;
  auto output = at::zeros({batch, window, height, width},
                          a.options().dtype(at::toOpMathType(a.scalar_type())));
  if (output.numel() == 0 || channels == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "local_correlate_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const int64_t hw = height * width;
        const scalar_t* a_data = a.data_ptr<scalar_t>();
        const scalar_t* b_data = b.data_ptr<scalar_t>();
        acc_t* output_data = output.data_ptr<acc_t>();
        at::parallel_for(0, batch * height, 1, [&](int64_t begin, int64_t end) {
          // One row of every displacement: the row of `a` is reused across the whole window.
          std::vector<acc_t> rows(window * width);
          for (int64_t task = begin; task < end; ++task) {
            const int64_t n = task / height;
            const int64_t y = task % height;
            std::fill(rows.begin(), rows.end(), acc_t(0));
            for (int64_t c = 0; c < channels; ++c) {
              const scalar_t* a_row = a_data + (n * channels + c) * hw + y * width;
              const scalar_t* b_plane = b_data + (n * channels + c) * hw;
              for (int64_t d = 0; d < window; ++d) {
                const int64_t ys = y + d / side - k;
                if (ys < 0 || ys >= height) {
                  continue;
                }
                const int64_t dx = d % side - k;
                const auto cols = valid_columns(dx, width);
                const scalar_t* b_row = b_plane + ys * width;
                acc_t* out = rows.data() + d * width;
                for (int64_t x = cols.first; x < cols.second; ++x) {
                  out[x] += static_cast<acc_t>(a_row[x]) * static_cast<acc_t>(b_row[x + dx]);
                }
              }
            }
            for (int64_t d = 0; d < window; ++d) {
              std::copy(rows.begin() + d * width, rows.begin() + (d + 1) * width,
                        output_data + (n * window + d) * hw + y * width);
            }
          }
        });
      });
  return output;
}

at::Tensor local_gather_cpu(const at::Tensor& weights, const at::Tensor& m, int64_t k) {
  auto output = at::zeros(m.sizes(), m.options().dtype(at::toOpMathType(m.scalar_type())));
  if (output.numel() == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "local_gather_cpu",
                                  [&] { window_sum<scalar_t>(weights, m, k, 1, output); });
  return output;
}

at::Tensor local_scatter_cpu(const at::Tensor& weights, const at::Tensor& grad, int64_t k) {
  auto output =
      at::zeros(grad.sizes(), grad.options().dtype(at::toOpMathType(grad.scalar_type())));
  if (output.numel() == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "local_scatter_cpu",
                                  [&] { window_sum<scalar_t>(weights, grad, k, -1, output); });
  return output;
}

}  // namespace vod_d2
