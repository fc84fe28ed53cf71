// CUDA kernels of deformable PS RoI pooling (see deform_psroi_pool.h).
//
// Forward: one thread per output element (RoI, channel, bin). Backward: one thread per output
// element adds its share into the input gradient with atomics (so its float sums are not
// bit-deterministic, and torch.use_deterministic_algorithms(True) refuses it), and one thread per
// (RoI, bin) sums the offset gradient over the channels and samples (no atomics).
#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "deform_psroi_pool/deform_psroi_pool.h"

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
  int64_t channels_out;
  int64_t sampling_ratio;
};

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(int64_t total, Shape shape, acc_t scale, acc_t gamma,
                               const scalar_t* __restrict__ input,
                               const scalar_t* __restrict__ rois,
                               const scalar_t* __restrict__ offsets,
                               scalar_t* __restrict__ output) {
  const int64_t bins = shape.k * shape.k;
  const int64_t hw = shape.height * shape.width;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t bin = index % bins;
    const int64_t c = (index / bins) % shape.channels_out;
    const int64_t r = index / (bins * shape.channels_out);
    const auto box =
        ps_roi_box<scalar_t, acc_t>(rois + r * 5, scale, shape.k, shape.sampling_ratio);
    if (box.batch < 0 || box.batch >= shape.batch) {
      output[index] = static_cast<scalar_t>(0);  // not an image: nothing to read
      continue;
    }
    acc_t hstart, wstart;
    ps_bin_start(box, offsets, r, bin / shape.k, bin % shape.k, shape.k, gamma, &hstart, &wstart);
    const scalar_t* plane = input + (box.batch * shape.channels + c * bins + bin) * hw;
    acc_t sum = 0;
    for (int64_t iy = 0; iy < box.grid_h; ++iy) {
      const acc_t y = ps_sample_coordinate(hstart, iy, box.bin_h, box.grid_h);
      for (int64_t ix = 0; ix < box.grid_w; ++ix) {
        const acc_t x = ps_sample_coordinate(wstart, ix, box.bin_w, box.grid_w);
        sum += ps_interpolate(plane, ps_sample<acc_t>(y, x, shape.height, shape.width));
      }
    }
    output[index] = static_cast<scalar_t>(sum / box.count);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void input_grad_kernel(int64_t total, Shape shape, acc_t scale, acc_t gamma,
                                  const scalar_t* __restrict__ grad,
                                  const scalar_t* __restrict__ rois,
                                  const scalar_t* __restrict__ offsets,
                                  acc_t* __restrict__ grad_input) {
  const int64_t bins = shape.k * shape.k;
  const int64_t hw = shape.height * shape.width;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t bin = index % bins;
    const int64_t c = (index / bins) % shape.channels_out;
    const int64_t r = index / (bins * shape.channels_out);
    const auto box =
        ps_roi_box<scalar_t, acc_t>(rois + r * 5, scale, shape.k, shape.sampling_ratio);
    if (box.batch < 0 || box.batch >= shape.batch) {
      continue;
    }
    acc_t hstart, wstart;
    ps_bin_start(box, offsets, r, bin / shape.k, bin % shape.k, shape.k, gamma, &hstart, &wstart);
    acc_t* plane = grad_input + (box.batch * shape.channels + c * bins + bin) * hw;
    const acc_t g = static_cast<acc_t>(grad[index]);
    for (int64_t iy = 0; iy < box.grid_h; ++iy) {
      const acc_t y = ps_sample_coordinate(hstart, iy, box.bin_h, box.grid_h);
      for (int64_t ix = 0; ix < box.grid_w; ++ix) {
        const acc_t x = ps_sample_coordinate(wstart, ix, box.bin_w, box.grid_w);
        const auto s = ps_sample<acc_t>(y, x, shape.height, shape.width);
        if (!s.inside) {
          continue;
        }
        for (int q = 0; q < 4; ++q) {
          atomicAdd(plane + s.index[q], g * s.weight[q] / box.count);
        }
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void offset_grad_kernel(int64_t total, Shape shape, acc_t scale, acc_t gamma,
                                   const scalar_t* __restrict__ grad,
                                   const scalar_t* __restrict__ input,
                                   const scalar_t* __restrict__ rois,
                                   const scalar_t* __restrict__ offsets,
                                   acc_t* __restrict__ grad_offsets) {
  const int64_t bins = shape.k * shape.k;
  const int64_t hw = shape.height * shape.width;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t bin = index % bins;
    const int64_t r = index / bins;
    const auto box =
        ps_roi_box<scalar_t, acc_t>(rois + r * 5, scale, shape.k, shape.sampling_ratio);
    acc_t* go = grad_offsets + r * 2 * bins + bin;
    if (box.batch < 0 || box.batch >= shape.batch) {
      go[0] = 0;
      go[bins] = 0;
      continue;
    }
    acc_t hstart, wstart;
    ps_bin_start(box, offsets, r, bin / shape.k, bin % shape.k, shape.k, gamma, &hstart, &wstart);
    const scalar_t* planes = input + (box.batch * shape.channels + bin) * hw;
    const scalar_t* g = grad + r * shape.channels_out * bins + bin;
    acc_t dy = 0;
    acc_t dx = 0;
    for (int64_t iy = 0; iy < box.grid_h; ++iy) {
      const acc_t y = ps_sample_coordinate(hstart, iy, box.bin_h, box.grid_h);
      for (int64_t ix = 0; ix < box.grid_w; ++ix) {
        const acc_t x = ps_sample_coordinate(wstart, ix, box.bin_w, box.grid_w);
        const auto s = ps_sample<acc_t>(y, x, shape.height, shape.width);
        if (!s.inside) {
          continue;
        }
        for (int64_t c = 0; c < shape.channels_out; ++c) {
          const scalar_t* v = planes + c * bins * hw;
          const acc_t gc = static_cast<acc_t>(g[c * bins]);
          for (int q = 0; q < 4; ++q) {
            const acc_t value = gc * static_cast<acc_t>(v[s.index[q]]);
            dy += s.dweight_dy[q] * value;
            dx += s.dweight_dx[q] * value;
          }
        }
      }
    }
    go[0] = dx / box.count * gamma * box.width;
    go[bins] = dy / box.count * gamma * box.height;
  }
}

Shape make_shape(const at::Tensor& input, int64_t k, int64_t sampling_ratio) {
  return {input.size(0), input.size(1), input.size(2), input.size(3), k,
          input.size(1) / (k * k), sampling_ratio};
}

}  // namespace

at::Tensor deform_ps_roi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                           const at::Tensor& offsets, double spatial_scale,
                                           int64_t k, int64_t sampling_ratio, double trans_std) {
  c10::cuda::CUDAGuard guard(input.device());
  const Shape shape = make_shape(input, k, sampling_ratio);
  auto output = at::empty({rois.size(0), shape.channels_out, k, k}, input.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "deform_ps_roi_pool_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        forward_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total, shape, static_cast<acc_t>(spatial_scale), static_cast<acc_t>(trans_std),
            input.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(),
            offsets.defined() ? offsets.data_ptr<scalar_t>() : nullptr,
            output.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor> deform_ps_roi_pool_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
    const at::Tensor& offsets, double spatial_scale, int64_t k, int64_t sampling_ratio,
    double trans_std) {
  c10::cuda::CUDAGuard guard(input.device());
  const Shape shape = make_shape(input, k, sampling_ratio);
  const auto acc_options = input.options().dtype(at::toOpMathType(input.scalar_type()));
  auto grad_input = at::zeros(input.sizes(), acc_options);
  auto grad_offsets = at::zeros({rois.size(0), 2, k, k}, acc_options);
  const int64_t total = grad.numel();
  if (total == 0) {
    return {grad_input.to(input.scalar_type()), grad_offsets.to(input.scalar_type())};
  }
  at::globalContext().alertNotDeterministic("deform_ps_roi_pool_backward_cuda");
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "deform_ps_roi_pool_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* offset_data = offsets.defined() ? offsets.data_ptr<scalar_t>() : nullptr;
        input_grad_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total, shape, static_cast<acc_t>(spatial_scale), static_cast<acc_t>(trans_std),
            grad.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), offset_data,
            grad_input.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (offset_data != nullptr) {
          const int64_t bins_total = rois.size(0) * k * k;
          offset_grad_kernel<scalar_t, acc_t><<<num_blocks(bins_total), kThreads, 0, stream>>>(
              bins_total, shape, static_cast<acc_t>(spatial_scale),
              static_cast<acc_t>(trans_std), grad.data_ptr<scalar_t>(),
              input.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), offset_data,
              grad_offsets.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return {grad_input.to(input.scalar_type()), grad_offsets.to(input.scalar_type())};
}

}  // namespace vod_d2
