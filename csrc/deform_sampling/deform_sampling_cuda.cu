// CUDA primitives of deformable similarity sampling (see deform_sampling.h).
//
// One thread per output element; the bilinear coefficients are recomputed by each thread
// (cheaper than reading them back from memory). Gather and correlate are plain reductions; scatter
// adds into an opmath-typed buffer with atomics (so its float sums are not bit-deterministic, and
// torch.use_deterministic_algorithms(True) refuses it).
#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "deform_sampling/deform_sampling.h"

namespace vod_d2 {

namespace {

constexpr int kThreads = 256;

inline unsigned int num_blocks(int64_t total) {
  return static_cast<unsigned int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20));
}

struct Grid {
  int64_t batch;
  int64_t channels;
  int64_t num_points;
  int64_t height;
  int64_t width;
  bool shared;
};

Grid make_grid(const at::Tensor& features, const at::Tensor& offsets) {
  const bool shared = offsets.dim() == 2;
  return {features.size(0), features.size(1), shared ? offsets.size(0) : offsets.size(1) / 2,
          features.size(2), features.size(3), shared};
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t interpolate(const scalar_t* plane,
                                             const BilinearSample<acc_t>& s) {
  return s.weight[0] * static_cast<acc_t>(plane[s.index[0]]) +
         s.weight[1] * static_cast<acc_t>(plane[s.index[1]]) +
         s.weight[2] * static_cast<acc_t>(plane[s.index[2]]) +
         s.weight[3] * static_cast<acc_t>(plane[s.index[3]]);
}

// out[b, c, p] = sum_n weights[b, n, p] * bilinear(features[b, c], p_n)
template <typename scalar_t, typename acc_t>
__global__ void gather_kernel(int64_t total, Grid grid, const scalar_t* __restrict__ weights,
                              const scalar_t* __restrict__ features,
                              const acc_t* __restrict__ offsets, acc_t* __restrict__ output) {
  const int64_t hw = grid.height * grid.width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t p = i % hw;
    const int64_t bc = i / hw;
    const int64_t b = bc / grid.channels;
    const scalar_t* plane = features + bc * hw;
    acc_t sum = 0;
    for (int64_t n = 0; n < grid.num_points; ++n) {
      const auto s = sample_location<acc_t>(offsets, grid.shared, b, n, p,
                                                      grid.num_points, grid.height, grid.width);
      const acc_t weight = static_cast<acc_t>(weights[(b * grid.num_points + n) * hw + p]);
      sum += weight * interpolate(plane, s);
    }
    output[i] = sum;
  }
}

// out[b, c, q] += weights[b, n, p] * G(p_n, q) * grad[b, c, p]
template <typename scalar_t, typename acc_t>
__global__ void scatter_kernel(int64_t total, Grid grid, const scalar_t* __restrict__ weights,
                               const scalar_t* __restrict__ grad,
                               const acc_t* __restrict__ offsets, acc_t* __restrict__ output) {
  const int64_t hw = grid.height * grid.width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t p = i % hw;
    const int64_t bc = i / hw;
    const int64_t b = bc / grid.channels;
    const acc_t g = static_cast<acc_t>(grad[i]);
    acc_t* plane = output + bc * hw;
    for (int64_t n = 0; n < grid.num_points; ++n) {
      const auto s = sample_location<acc_t>(offsets, grid.shared, b, n, p,
                                                      grid.num_points, grid.height, grid.width);
      const acc_t value = static_cast<acc_t>(weights[(b * grid.num_points + n) * hw + p]) * g;
      for (int k = 0; k < 4; ++k) {
        if (s.weight[k] != acc_t(0)) {
          atomicAdd(plane + s.index[k], value * s.weight[k]);
        }
      }
    }
  }
}

// corr[b, n, p] = sum_c x[b, c, p] * bilinear(features[b, c], p_n), and optionally
// offset_grad[b, n, :, p] = coef[b, n, p] * sum_c x[b, c, p] * d bilinear / d(y, x).
template <typename scalar_t, typename acc_t>
__global__ void correlate_kernel(int64_t total, Grid grid, const scalar_t* __restrict__ x,
                                 const scalar_t* __restrict__ features,
                                 const acc_t* __restrict__ offsets,
                                 const scalar_t* __restrict__ coef, acc_t* __restrict__ correlation,
                                 acc_t* __restrict__ offset_grad) {
  const int64_t hw = grid.height * grid.width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t p = i % hw;
    const int64_t bn = i / hw;
    const int64_t b = bn / grid.num_points;
    const int64_t n = bn % grid.num_points;
    const auto s = sample_location<acc_t>(offsets, grid.shared, b, n, p,
                                                    grid.num_points, grid.height, grid.width);
    acc_t corr = 0;
    acc_t grad_y = 0;
    acc_t grad_x = 0;
    for (int64_t c = 0; c < grid.channels; ++c) {
      const int64_t plane_offset = (b * grid.channels + c) * hw;
      const scalar_t* plane = features + plane_offset;
      const acc_t xv = static_cast<acc_t>(x[plane_offset + p]);
      acc_t f[4];
      for (int k = 0; k < 4; ++k) {
        f[k] = static_cast<acc_t>(plane[s.index[k]]);
      }
      corr += xv * (s.weight[0] * f[0] + s.weight[1] * f[1] + s.weight[2] * f[2] +
                    s.weight[3] * f[3]);
      if (offset_grad != nullptr) {
        grad_y += xv * (s.dweight_dy[0] * f[0] + s.dweight_dy[1] * f[1] +
                        s.dweight_dy[2] * f[2] + s.dweight_dy[3] * f[3]);
        grad_x += xv * (s.dweight_dx[0] * f[0] + s.dweight_dx[1] * f[1] +
                        s.dweight_dx[2] * f[2] + s.dweight_dx[3] * f[3]);
      }
    }
    correlation[i] = corr;
    if (offset_grad != nullptr) {
      const acc_t scale = static_cast<acc_t>(coef[i]);
      offset_grad[(2 * bn) * hw + p] = scale * grad_y;
      offset_grad[(2 * bn + 1) * hw + p] = scale * grad_x;
    }
  }
}

}  // namespace

at::Tensor deform_gather_cuda(const at::Tensor& weights, const at::Tensor& features,
                              const at::Tensor& offsets) {
  c10::cuda::CUDAGuard guard(features.device());
  const Grid grid = make_grid(features, offsets);
  auto output = at::empty(features.sizes(),
                          features.options().dtype(at::toOpMathType(features.scalar_type())));
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "deform_gather_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        gather_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total, grid, weights.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
            offsets.data_ptr<acc_t>(), output.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

at::Tensor deform_scatter_cuda(const at::Tensor& weights, const at::Tensor& grad,
                               const at::Tensor& offsets) {
  c10::cuda::CUDAGuard guard(grad.device());
  const Grid grid = make_grid(grad, offsets);
  auto output =
      at::zeros(grad.sizes(), grad.options().dtype(at::toOpMathType(grad.scalar_type())));
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  at::globalContext().alertNotDeterministic("deform_scatter_cuda");
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "deform_scatter_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        scatter_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total, grid, weights.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
            offsets.data_ptr<acc_t>(), output.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor> deform_correlate_cuda(const at::Tensor& x,
                                                          const at::Tensor& features,
                                                          const at::Tensor& offsets,
                                                          const at::Tensor& coef,
                                                          bool with_offset_grad) {
  c10::cuda::CUDAGuard guard(features.device());
  const Grid grid = make_grid(features, offsets);
  const int64_t hw = grid.height * grid.width;
  const auto acc_options = features.options().dtype(at::toOpMathType(features.scalar_type()));
  auto correlation =
      at::empty({grid.batch, grid.num_points, grid.height, grid.width}, acc_options);
  auto offset_grad = with_offset_grad
                         ? at::empty({grid.batch, grid.num_points, 2, hw}, acc_options)
                         : at::Tensor();
  const int64_t total = correlation.numel();
  if (total == 0) {
    return {correlation, offset_grad};
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "deform_correlate_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        correlate_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total, grid, x.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
            offsets.data_ptr<acc_t>(),
            with_offset_grad ? coef.data_ptr<scalar_t>() : nullptr,
            correlation.data_ptr<acc_t>(),
            with_offset_grad ? offset_grad.data_ptr<acc_t>() : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {correlation, offset_grad};
}

}  // namespace vod_d2
