// Deformable PS RoI pooling ops: input checks, then the device kernels of deform_psroi_pool.h.
#include "deform_psroi_pool/deform_psroi_pool.h"

namespace vod_d2 {

namespace {

// The offsets as the kernels take them: contiguous, or undefined for none.
at::Tensor check_inputs(const char* op, const at::Tensor& input, const at::Tensor& rois,
                        const c10::optional<at::Tensor>& offsets, int64_t k) {
  TORCH_CHECK(k >= 1, op, ": output_size must be >= 1, got ", k);
  TORCH_CHECK(input.dim() == 4, op, ": input must be (N, C, H, W), got ", input.sizes());
  check_floating(input, op, "input");
  TORCH_CHECK(input.size(1) % (k * k) == 0, op, ": input channels must be a multiple of ",
              "output_size^2 = ", k * k, ", got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": rois must be (R, 5) [batch_index, x1, y1, x2, y2], got ", rois.sizes());
  TORCH_CHECK(rois.scalar_type() == input.scalar_type(), op, ": rois and input dtypes differ");
  TORCH_CHECK(rois.device() == input.device(), op, ": rois and input devices differ");
  if (!offsets.has_value() || !offsets->defined()) {
    return at::Tensor();
  }
  TORCH_CHECK(offsets->dim() == 4 && offsets->size(0) == rois.size(0) && offsets->size(1) == 2 &&
                  offsets->size(2) == k && offsets->size(3) == k,
              op, ": offsets must be (R, 2, k, k) = (", rois.size(0), ", 2, ", k, ", ", k,
              "), got ", offsets->sizes());
  TORCH_CHECK(offsets->scalar_type() == input.scalar_type(), op,
              ": offsets and input dtypes differ");
  TORCH_CHECK(offsets->device() == input.device(), op, ": offsets and input devices differ");
  return offsets->contiguous();
}

}  // namespace

at::Tensor deform_ps_roi_pool_forward(const at::Tensor& input, const at::Tensor& rois,
                                      const c10::optional<at::Tensor>& offsets,
                                      double spatial_scale, int64_t output_size,
                                      int64_t sampling_ratio, double trans_std) {
  constexpr const char* op = "deform_ps_roi_pool_forward";
  const auto off = check_inputs(op, input, rois, offsets, output_size);
  if (use_cuda_kernel(input, op)) {
#ifdef WITH_CUDA
    return deform_ps_roi_pool_forward_cuda(input.contiguous(), rois.contiguous(), off,
                                           spatial_scale, output_size, sampling_ratio, trans_std);
#endif
  }
  return deform_ps_roi_pool_forward_cpu(input.contiguous(), rois.contiguous(), off, spatial_scale,
                                        output_size, sampling_ratio, trans_std);
}

std::tuple<at::Tensor, at::Tensor> deform_ps_roi_pool_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
    const c10::optional<at::Tensor>& offsets, double spatial_scale, int64_t output_size,
    int64_t sampling_ratio, double trans_std) {
  constexpr const char* op = "deform_ps_roi_pool_backward";
  const auto off = check_inputs(op, input, rois, offsets, output_size);
  const int64_t k = output_size;
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) &&
                  grad.size(1) == input.size(1) / (k * k) && grad.size(2) == k &&
                  grad.size(3) == k,
              op, ": grad must be the (R, C_out, k, k) shape of the output, got ", grad.sizes());
  TORCH_CHECK(grad.device() == input.device(), op, ": grad and input devices differ");
  const auto g = grad.to(input.scalar_type()).contiguous();
  if (use_cuda_kernel(input, op)) {
#ifdef WITH_CUDA
    return deform_ps_roi_pool_backward_cuda(g, input.contiguous(), rois.contiguous(), off,
                                            spatial_scale, k, sampling_ratio, trans_std);
#endif
  }
  return deform_ps_roi_pool_backward_cpu(g, input.contiguous(), rois.contiguous(), off,
                                         spatial_scale, k, sampling_ratio, trans_std);
}

}  // namespace vod_d2
