// CUDA primitives of Temporal RoI Align (see temporal_roi_align.h). One warp per row / cell:
//  - topk: every lane keeps the sorted top K of its strided share of the row in local arrays
//    (K <= kMaxTopK), then K rounds of a warp arg-max merge the 32 lists;
//  - gather: one warp per output row; backward: one warp per query (RoI cell), over its T output
//    rows, so it owns its gradient row. The K weights live in shared memory and the lanes sweep
//    the channels, so reads of the (B * T, L, C) normalised support rows coalesce. The backward
//    adds into the support gradient with atomics (float sums are therefore not bit-deterministic,
//    and torch.use_deterministic_algorithms(True) refuses it).
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "temporal_roi_align/temporal_roi_align.h"

namespace vod_d2 {

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr unsigned int kFullMask = 0xffffffffu;

inline unsigned int num_blocks(int64_t warps) {
  return static_cast<unsigned int>(
      std::min<int64_t>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock, 1 << 16));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(kFullMask, value, offset);
  }
  return value;
}

template <typename T>
__device__ __forceinline__ T warp_max(T value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    value = max(value, __shfl_xor_sync(kFullMask, value, offset));
  }
  return value;
}

template <typename acc_t>
__device__ __forceinline__ acc_t negative_infinity();
template <>
__device__ __forceinline__ float negative_infinity<float>() {
  return -INFINITY;
}
template <>
__device__ __forceinline__ double negative_infinity<double>() {
  return -static_cast<double>(INFINITY);
}

template <typename acc_t>
__global__ void topk_kernel(int64_t rows, int64_t length, int k, const acc_t* __restrict__ sim,
                            acc_t* __restrict__ values, int64_t* __restrict__ indices) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warp = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = warp; row < rows; row += warps) {
    acc_t best[kMaxTopK];
    long long best_index[kMaxTopK];
    int count = 0;
    const acc_t* s = sim + row * length;
    for (int64_t j = lane; j < length; j += kWarp) {
      acc_t v = s[j];
      if (isnan(v)) {
        v = negative_infinity<acc_t>();
      }
      if (count == k && !(v > best[k - 1])) {
        continue;
      }
      int pos = count < k ? count++ : k - 1;
      while (pos > 0 && best[pos - 1] < v) {
        best[pos] = best[pos - 1];
        best_index[pos] = best_index[pos - 1];
        --pos;
      }
      best[pos] = v;
      best_index[pos] = j;
    }
    // Merge: each round takes the largest head (ties: lower index) and pops it from its lane.
    int head = 0;
    for (int out = 0; out < k; ++out) {
      acc_t value = head < count ? best[head] : negative_infinity<acc_t>();
      long long index = head < count ? best_index[head] : LLONG_MAX;
      int owner = lane;
      for (int offset = kWarp / 2; offset > 0; offset /= 2) {
        const acc_t other_value = __shfl_xor_sync(kFullMask, value, offset);
        const long long other_index = __shfl_xor_sync(kFullMask, index, offset);
        const int other_owner = __shfl_xor_sync(kFullMask, owner, offset);
        if (other_value > value || (other_value == value && other_index < index)) {
          value = other_value;
          index = other_index;
          owner = other_owner;
        }
      }
      if (lane == owner) {
        ++head;
      }
      if (lane == 0) {
        values[row * k + out] = value;
        indices[row * k + out] = index;
      }
    }
  }
}

// Softmax over the K similarities of one cell, spread one per lane (lanes >= k get 0).
template <typename acc_t>
__device__ __forceinline__ acc_t lane_softmax(const acc_t* sim, int k, int lane) {
  const acc_t value = lane < k ? sim[lane] : negative_infinity<acc_t>();
  const acc_t largest = warp_max(value);
  const acc_t e = lane < k ? exp(value - largest) : acc_t(0);
  return e / warp_sum(e);
}

template <typename acc_t>
__global__ void gather_kernel(int64_t cells, int k, int64_t locations, int64_t channels,
                              const acc_t* __restrict__ topk_sim,
                              const int64_t* __restrict__ topk_index,
                              const acc_t* __restrict__ hat, const acc_t* __restrict__ scale,
                              const int64_t* __restrict__ row_map, acc_t* __restrict__ output) {
  __shared__ acc_t shared_coef[kWarpsPerBlock][kMaxTopK];
  __shared__ int64_t shared_row[kWarpsPerBlock][kMaxTopK];
  const int lane = threadIdx.x % kWarp;
  const int warp_in_block = threadIdx.x / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  acc_t* coef = shared_coef[warp_in_block];
  int64_t* rows = shared_row[warp_in_block];
  for (int64_t m = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + warp_in_block; m < cells;
       m += warps) {
    const acc_t weight = lane_softmax(topk_sim + m * k, k, lane);
    if (lane < k) {
      const int64_t row = row_map[m] * locations + topk_index[m * k + lane];
      rows[lane] = row;
      coef[lane] = weight * scale[row];
    }
    __syncwarp();
    for (int64_t c = lane; c < channels; c += kWarp) {
      acc_t sum = 0;
      for (int i = 0; i < k; ++i) {
        sum += coef[i] * hat[rows[i] * channels + c];
      }
      output[m * channels + c] = sum;
    }
    __syncwarp();
  }
}

template <typename acc_t>
__global__ void backward_kernel(int64_t queries, int64_t supports, int64_t cells, int k,
                                int64_t locations, int64_t channels,
                                const acc_t* __restrict__ grad, const acc_t* __restrict__ q_hat,
                                const acc_t* __restrict__ q_norm,
                                const acc_t* __restrict__ topk_sim,
                                const int64_t* __restrict__ topk_index,
                                const acc_t* __restrict__ hat, const acc_t* __restrict__ norm,
                                const int64_t* __restrict__ row_map, acc_t* __restrict__ grad_q,
                                acc_t* __restrict__ grad_support) {
  // Per selected location: its row, and the gradient of that row,
  // alpha * grad_out + beta * q_hat + gamma * hat (see temporal_roi_align_cpu.cpp).
  __shared__ int64_t shared_row[kWarpsPerBlock][kMaxTopK];
  __shared__ acc_t shared_dsim[kWarpsPerBlock][kMaxTopK];
  __shared__ acc_t shared_alpha[kWarpsPerBlock][kMaxTopK];
  __shared__ acc_t shared_beta[kWarpsPerBlock][kMaxTopK];
  __shared__ acc_t shared_gamma[kWarpsPerBlock][kMaxTopK];
  const acc_t eps = static_cast<acc_t>(kNormEps);
  const int lane = threadIdx.x % kWarp;
  const int w = threadIdx.x / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t qi = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + w; qi < queries;
       qi += warps) {
    const acc_t* q = q_hat + qi * channels;
    acc_t* gq = grad_q + qi * channels;  // zero-initialised; each lane owns its channels
    for (int64_t t = 0; t < supports; ++t) {
      const int64_t m = ((qi / cells) * supports + t) * cells + qi % cells;
      const acc_t* g = grad + m * channels;
      const acc_t weight = lane_softmax(topk_sim + m * k, k, lane);
      if (lane < k) {
        shared_row[w][lane] = row_map[m] * locations + topk_index[m * k + lane];
      }
      __syncwarp();
      // d out / d w_i = <grad, F_i>, F_i = max(|F_i|, eps) * hat_i.
      acc_t my_dw = 0;
      for (int i = 0; i < k; ++i) {
        const acc_t* f = hat + shared_row[w][i] * channels;
        acc_t partial = 0;
        for (int64_t c = lane; c < channels; c += kWarp) {
          partial += g[c] * f[c];
        }
        const acc_t total = warp_sum(partial);
        if (lane == i) {
          my_dw = total * max(norm[shared_row[w][i]], eps);
        }
      }
      const acc_t weighted = warp_sum(lane < k ? weight * my_dw : acc_t(0));
      if (lane < k) {
        const acc_t dsim = weight * (my_dw - weighted);  // softmax backward
        const acc_t n = norm[shared_row[w][lane]];
        shared_dsim[w][lane] = dsim;
        shared_alpha[w][lane] = weight;
        // A clamped norm passes no gradient through the cosine.
        shared_beta[w][lane] = n > eps ? dsim / n : acc_t(0);
        shared_gamma[w][lane] = n > eps ? -dsim * topk_sim[m * k + lane] / n : acc_t(0);
      }
      __syncwarp();
      for (int64_t c = lane; c < channels; c += kWarp) {
        acc_t sum = 0;
        for (int i = 0; i < k; ++i) {
          sum += shared_dsim[w][i] * hat[shared_row[w][i] * channels + c];
        }
        gq[c] += sum;
      }
      for (int i = 0; i < k; ++i) {
        const int64_t row = shared_row[w][i];
        const acc_t alpha = shared_alpha[w][i];
        const acc_t beta = shared_beta[w][i];
        const acc_t gamma = shared_gamma[w][i];
        const acc_t* f = hat + row * channels;
        acc_t* out = grad_support + row * channels;
        for (int64_t c = lane; c < channels; c += kWarp) {
          atomicAdd(out + c, alpha * g[c] + beta * q[c] + gamma * f[c]);
        }
      }
      __syncwarp();
    }
    // Backward of q / max(|q|, eps): project out the radial part; a clamped norm passes none.
    acc_t radial = 0;
    for (int64_t c = lane; c < channels; c += kWarp) {
      radial += gq[c] * q[c];
    }
    radial = warp_sum(radial);
    const acc_t qn = q_norm[qi];
    for (int64_t c = lane; c < channels; c += kWarp) {
      gq[c] = qn > eps ? (gq[c] - radial * q[c]) / qn : acc_t(0);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> tra_topk_cuda(const at::Tensor& similarity, int64_t k) {
  c10::cuda::CUDAGuard guard(similarity.device());
  const int64_t rows = similarity.size(0);
  const int64_t length = similarity.size(1);
  auto values = at::empty({rows, k}, similarity.options());
  auto indices = at::empty({rows, k}, similarity.options().dtype(at::kLong));
  if (rows == 0) {
    return {values, indices};
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(similarity.scalar_type(), "tra_topk_cuda", [&] {
    topk_kernel<scalar_t><<<num_blocks(rows), kWarp * kWarpsPerBlock, 0, stream>>>(
        rows, length, static_cast<int>(k), similarity.data_ptr<scalar_t>(),
        values.data_ptr<scalar_t>(), indices.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {values, indices};
}

at::Tensor tra_gather_cuda(const at::Tensor& topk_sim, const at::Tensor& topk_index,
                           const at::Tensor& support_hat, const at::Tensor& support_scale,
                           const at::Tensor& row_map) {
  c10::cuda::CUDAGuard guard(support_hat.device());
  const int64_t cells = topk_sim.size(0);
  const int64_t channels = support_hat.size(2);
  auto output = at::empty({cells, channels}, support_hat.options());
  if (output.numel() == 0) {
    return output;
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(support_hat.scalar_type(), "tra_gather_cuda", [&] {
    gather_kernel<scalar_t><<<num_blocks(cells), kWarp * kWarpsPerBlock, 0, stream>>>(
        cells, static_cast<int>(topk_sim.size(1)), support_hat.size(1), channels,
        topk_sim.data_ptr<scalar_t>(), topk_index.data_ptr<int64_t>(),
        support_hat.data_ptr<scalar_t>(), support_scale.data_ptr<scalar_t>(),
        row_map.data_ptr<int64_t>(), output.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> tra_backward_cuda(
    const at::Tensor& grad_cells, const at::Tensor& q_hat, const at::Tensor& q_norm,
    const at::Tensor& topk_sim, const at::Tensor& topk_index, const at::Tensor& support_hat,
    const at::Tensor& support_norm, const at::Tensor& row_map, int64_t supports, int64_t cells) {
  c10::cuda::CUDAGuard guard(support_hat.device());
  const int64_t queries = q_hat.size(0);
  const int64_t channels = grad_cells.size(1);
  auto grad_q = at::zeros_like(q_hat);
  auto grad_support = at::zeros_like(support_hat);
  if (grad_cells.size(0) == 0 || channels == 0) {
    return {grad_q, grad_support};
  }
  at::globalContext().alertNotDeterministic("temporal_roi_align_backward_cuda");
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(support_hat.scalar_type(), "tra_backward_cuda", [&] {
    backward_kernel<scalar_t><<<num_blocks(queries), kWarp * kWarpsPerBlock, 0, stream>>>(
        queries, supports, cells, static_cast<int>(topk_sim.size(1)), support_hat.size(1),
        channels, grad_cells.data_ptr<scalar_t>(), q_hat.data_ptr<scalar_t>(),
        q_norm.data_ptr<scalar_t>(), topk_sim.data_ptr<scalar_t>(),
        topk_index.data_ptr<int64_t>(), support_hat.data_ptr<scalar_t>(),
        support_norm.data_ptr<scalar_t>(), row_map.data_ptr<int64_t>(),
        grad_q.data_ptr<scalar_t>(), grad_support.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_q, grad_support};
}

}  // namespace vod_d2
