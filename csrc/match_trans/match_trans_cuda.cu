// CUDA primitives of MatchTrans (see match_trans.h): one thread per output element, reductions
// over channels (correlate) or over the window (gather, scatter); neighbouring threads read
// neighbouring (shifted) positions, so loads coalesce. No atomics: results are deterministic.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "match_trans/match_trans.h"

namespace vod_d2 {

namespace {

constexpr int kThreads = 256;

inline unsigned int num_blocks(int64_t total) {
  return static_cast<unsigned int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20));
}

struct Shape {
  int64_t batch;
  int64_t channels;
  int64_t height;
  int64_t width;
  int64_t k;
};

// out[n, d, y, x] = sum_c a[n, c, y, x] * b[n, c, y + dy, x + dx]
template <typename scalar_t, typename acc_t>
__global__ void correlate_kernel(int64_t total, Shape shape, const scalar_t* __restrict__ a,
                                 const scalar_t* __restrict__ b, acc_t* __restrict__ output) {
  const int64_t hw = shape.height * shape.width;
  const int64_t side = 2 * shape.k + 1;
  const int64_t window = side * side;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t x = i % shape.width;
    const int64_t y = (i / shape.width) % shape.height;
    const int64_t d = (i / hw) % window;
    const int64_t n = i / (hw * window);
    const int64_t ys = y + d / side - shape.k;
    const int64_t xs = x + d % side - shape.k;
    acc_t sum = 0;
    if (ys >= 0 && ys < shape.height && xs >= 0 && xs < shape.width) {
      const scalar_t* a_ptr = a + n * shape.channels * hw + y * shape.width + x;
      const scalar_t* b_ptr = b + n * shape.channels * hw + ys * shape.width + xs;
      for (int64_t c = 0; c < shape.channels; ++c) {
        sum += static_cast<acc_t>(a_ptr[c * hw]) * static_cast<acc_t>(b_ptr[c * hw]);
      }
    }
    output[i] = sum;
  }
}

// gather (sign = +1): out[n, c, y, x] = sum_d w[n, d, y, x] * f[n, c, y + dy, x + dx]
// scatter (sign = -1): out[n, c, y, x] = sum_d w[n, d, y - dy, x - dx] * f[n, c, y - dy, x - dx]
template <typename scalar_t, typename acc_t>
__global__ void window_sum_kernel(int64_t total, Shape shape, int sign,
                                  const scalar_t* __restrict__ weights,
                                  const scalar_t* __restrict__ features,
                                  acc_t* __restrict__ output) {
  const int64_t hw = shape.height * shape.width;
  const int64_t side = 2 * shape.k + 1;
  const int64_t window = side * side;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t x = i % shape.width;
    const int64_t y = (i / shape.width) % shape.height;
    const int64_t n = i / (hw * shape.channels);
    const scalar_t* plane = features + (i / hw) * hw;
    const scalar_t* w = weights + n * window * hw;
    acc_t sum = 0;
    for (int64_t d = 0; d < window; ++d) {
      const int64_t ys = y + sign * (d / side - shape.k);
      const int64_t xs = x + sign * (d % side - shape.k);
      if (ys < 0 || ys >= shape.height || xs < 0 || xs >= shape.width) {
        continue;
      }
      const int64_t weight_position = sign > 0 ? y * shape.width + x : ys * shape.width + xs;
      sum += static_cast<acc_t>(w[d * hw + weight_position]) *
             static_cast<acc_t>(plane[ys * shape.width + xs]);
    }
    output[i] = sum;
  }
}

at::Tensor window_sum(const at::Tensor& weights, const at::Tensor& features, int64_t k, int sign) {
  c10::cuda::CUDAGuard guard(features.device());
  auto output = at::empty(features.sizes(),
                          features.options().dtype(at::toOpMathType(features.scalar_type())));
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const Shape shape{features.size(0), features.size(1), features.size(2), features.size(3), k};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "local_window_sum_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        window_sum_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total, shape, sign, weights.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
            output.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

}  // namespace

at::Tensor local_correlate_cuda(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t window = (2 * k + 1) * (2 * k + 1);
  auto output = at::empty({a.size(0), window, a.size(2), a.size(3)},
                          a.options().dtype(at::toOpMathType(a.scalar_type())));
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const Shape shape{a.size(0), a.size(1), a.size(2), a.size(3), k};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "local_correlate_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        correlate_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total, shape, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
            output.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

at::Tensor local_gather_cuda(const at::Tensor& weights, const at::Tensor& m, int64_t k) {
  return window_sum(weights, m, k, 1);
}

at::Tensor local_scatter_cuda(const at::Tensor& weights, const at::Tensor& grad, int64_t k) {
  return window_sum(weights, grad, k, -1);
}

}  // namespace vod_d2
