// CPU primitives of Temporal RoI Align (see temporal_roi_align.h).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "temporal_roi_align/temporal_roi_align.h"

namespace vod_d2 {

namespace {

constexpr int64_t kChannelBlock = 64;

// Softmax of the K selected similarities (numerically stable: shifted by the largest).
template <typename acc_t>
void softmax(const acc_t* values, int64_t k, acc_t* weights) {
  acc_t largest = values[0];
  for (int64_t i = 1; i < k; ++i) {
    largest = std::max(largest, values[i]);
  }
  acc_t total = 0;
  for (int64_t i = 0; i < k; ++i) {
    weights[i] = std::exp(values[i] - largest);
    total += weights[i];
  }
  for (int64_t i = 0; i < k; ++i) {
    weights[i] /= total;
  }
}

template <typename acc_t>
acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  acc_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    sum += a[i] * b[i];
  }
  return sum;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> tra_topk_cpu(const at::Tensor& similarity, int64_t k) {
  const int64_t rows = similarity.size(0);
  const int64_t length = similarity.size(1);
  auto values = at::empty({rows, k}, similarity.options());
  auto indices = at::empty({rows, k}, similarity.options().dtype(at::kLong));
  if (rows == 0) {
    return {values, indices};
  }
  AT_DISPATCH_FLOATING_TYPES(similarity.scalar_type(), "tra_topk_cpu", [&] {
    const scalar_t* sim = similarity.data_ptr<scalar_t>();
    scalar_t* value_data = values.data_ptr<scalar_t>();
    int64_t* index_data = indices.data_ptr<int64_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        // Sorted descending; a candidate enters only if strictly larger than the last kept one,
        // so among equal similarities the lower index wins.
        scalar_t* best = value_data + row * k;
        int64_t* best_index = index_data + row * k;
        const scalar_t* s = sim + row * length;
        int64_t count = 0;
        for (int64_t j = 0; j < length; ++j) {
          scalar_t v = s[j];
          if (std::isnan(v)) {
            v = -std::numeric_limits<scalar_t>::infinity();
          }
          if (count == k && !(v > best[k - 1])) {
            continue;
          }
          int64_t pos = count < k ? count++ : k - 1;
          while (pos > 0 && best[pos - 1] < v) {
            best[pos] = best[pos - 1];
            best_index[pos] = best_index[pos - 1];
            --pos;
          }
          best[pos] = v;
          best_index[pos] = j;
        }
      }
    });
  });
  return {values, indices};
}

at::Tensor tra_gather_cpu(const at::Tensor& topk_sim, const at::Tensor& topk_index,
                          const at::Tensor& support_hat, const at::Tensor& support_scale,
                          const at::Tensor& row_map) {
  const int64_t cells = topk_sim.size(0);
  const int64_t k = topk_sim.size(1);
  const int64_t locations = support_hat.size(1);
  const int64_t channels = support_hat.size(2);
  auto output = at::zeros({cells, channels}, support_hat.options());
  if (output.numel() == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES(support_hat.scalar_type(), "tra_gather_cpu", [&] {
    const scalar_t* sim = topk_sim.data_ptr<scalar_t>();
    const int64_t* index = topk_index.data_ptr<int64_t>();
    const scalar_t* hat = support_hat.data_ptr<scalar_t>();
    const scalar_t* scale = support_scale.data_ptr<scalar_t>();
    const int64_t* map = row_map.data_ptr<int64_t>();
    scalar_t* out_data = output.data_ptr<scalar_t>();
    at::parallel_for(0, cells, 16, [&](int64_t begin, int64_t end) {
      scalar_t weights[kMaxTopK];
      for (int64_t m = begin; m < end; ++m) {
        softmax(sim + m * k, k, weights);
        scalar_t* out = out_data + m * channels;
        for (int64_t i = 0; i < k; ++i) {
          const int64_t row = map[m] * locations + index[m * k + i];
          // The raw feature is scale * hat (scale = the clamped norm).
          const scalar_t coef = weights[i] * scale[row];
          const scalar_t* f = hat + row * channels;
          for (int64_t c = 0; c < channels; ++c) {
            out[c] += coef * f[c];
          }
        }
      }
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> tra_backward_cpu(
    const at::Tensor& grad_cells, const at::Tensor& q_hat, const at::Tensor& q_norm,
    const at::Tensor& topk_sim, const at::Tensor& topk_index, const at::Tensor& support_hat,
    const at::Tensor& support_norm, const at::Tensor& row_map, int64_t supports, int64_t cells) {
  const int64_t rows = grad_cells.size(0);
  const int64_t queries = q_hat.size(0);
  const int64_t channels = grad_cells.size(1);
  const int64_t k = topk_sim.size(1);
  const int64_t locations = support_hat.size(1);
  auto grad_q = at::zeros_like(q_hat);
  auto grad_support = at::zeros_like(support_hat);
  if (rows == 0 || channels == 0) {
    return {grad_q, grad_support};
  }
  AT_DISPATCH_FLOATING_TYPES(support_hat.scalar_type(), "tra_backward_cpu", [&] {
    const scalar_t eps = static_cast<scalar_t>(kNormEps);
    const scalar_t* g_data = grad_cells.data_ptr<scalar_t>();
    const scalar_t* q_data = q_hat.data_ptr<scalar_t>();
    const scalar_t* qn_data = q_norm.data_ptr<scalar_t>();
    const scalar_t* sim = topk_sim.data_ptr<scalar_t>();
    const int64_t* index = topk_index.data_ptr<int64_t>();
    const scalar_t* hat = support_hat.data_ptr<scalar_t>();
    const scalar_t* sn_data = support_norm.data_ptr<scalar_t>();
    const int64_t* map = row_map.data_ptr<int64_t>();
    scalar_t* gq_data = grad_q.data_ptr<scalar_t>();
    scalar_t* gs_data = grad_support.data_ptr<scalar_t>();
    // Per (row, k): grad of support row = alpha * grad_out + beta * q_hat + gamma * hat.
    std::vector<scalar_t> coefficients(rows * k * 3);

    // Pass 1, over queries (each owns its gradient row and the T output rows that read it):
    // softmax and normalisation backward, gradient of the cells.
    at::parallel_for(0, queries, 16, [&](int64_t begin, int64_t end) {
      scalar_t weights[kMaxTopK];
      scalar_t dsim[kMaxTopK];
      for (int64_t qi = begin; qi < end; ++qi) {
        const scalar_t* q = q_data + qi * channels;
        scalar_t* gq = gq_data + qi * channels;
        for (int64_t t = 0; t < supports; ++t) {
          const int64_t m = ((qi / cells) * supports + t) * cells + qi % cells;
          const scalar_t* g = g_data + m * channels;
          softmax(sim + m * k, k, weights);
          scalar_t weighted = 0;
          for (int64_t i = 0; i < k; ++i) {
            const int64_t row = map[m] * locations + index[m * k + i];
            // d out / d w_i = <grad, F_i> with F_i = max(|F_i|, eps) * hat_i.
            dsim[i] = std::max(sn_data[row], eps) * dot(g, hat + row * channels, channels);
            weighted += weights[i] * dsim[i];
          }
          for (int64_t i = 0; i < k; ++i) {
            const int64_t row = map[m] * locations + index[m * k + i];
            dsim[i] = weights[i] * (dsim[i] - weighted);  // softmax backward
            const scalar_t* f = hat + row * channels;
            for (int64_t c = 0; c < channels; ++c) {
              gq[c] += dsim[i] * f[c];
            }
            // Through the cosine the location gets (q_hat - cos hat) / |F| unless its norm was
            // clamped; through the value, alpha * grad_out always.
            const scalar_t norm = sn_data[row];
            scalar_t* coef = coefficients.data() + (m * k + i) * 3;
            coef[0] = weights[i];
            coef[1] = norm > eps ? dsim[i] / norm : scalar_t(0);
            coef[2] = norm > eps ? -dsim[i] * sim[m * k + i] / norm : scalar_t(0);
          }
        }
        // Backward of q / max(|q|, eps): project out the radial part; a clamped norm passes none.
        if (qn_data[qi] > eps) {
          const scalar_t radial = dot(gq, q, channels);
          for (int64_t c = 0; c < channels; ++c) {
            gq[c] = (gq[c] - radial * q[c]) / qn_data[qi];
          }
        } else {
          std::fill(gq, gq + channels, scalar_t(0));
        }
      }
    });

    // Pass 2, over channel blocks: every thread owns its channels of every support row.
    const int64_t blocks = (channels + kChannelBlock - 1) / kChannelBlock;
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t c0 = block * kChannelBlock;
        const int64_t c1 = std::min(channels, c0 + kChannelBlock);
        for (int64_t m = 0; m < rows; ++m) {
          const scalar_t* g = g_data + m * channels;
          const scalar_t* q = q_data + ((m / (supports * cells)) * cells + m % cells) * channels;
          for (int64_t i = 0; i < k; ++i) {
            const int64_t row = map[m] * locations + index[m * k + i];
            const scalar_t* coef = coefficients.data() + (m * k + i) * 3;
            const scalar_t* f = hat + row * channels;
            scalar_t* gs = gs_data + row * channels;
            for (int64_t c = c0; c < c1; ++c) {
              gs[c] += coef[0] * g[c] + coef[1] * q[c] + coef[2] * f[c];
            }
          }
        }
      }
    });
  });
  return {grad_q, grad_support};
}

}  // namespace vod_d2
