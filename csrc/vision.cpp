// Bindings of vod_d2._C: the ops are registered with the dispatcher as torch.ops.vod_d2.*, and the
// Python module only reports how the extension was built.
#include <torch/extension.h>

#include "deform_psroi_pool/deform_psroi_pool.h"
#include "deform_sampling/deform_sampling.h"
#include "match_trans/match_trans.h"
#include "temporal_roi_align/temporal_roi_align.h"

namespace vod_d2 {

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace vod_d2

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "C++/CUDA ops of vod_d2 (registered as torch.ops.vod_d2.*)";
  m.def("with_cuda", &vod_d2::with_cuda, "Whether the CUDA kernels were compiled");
  m.attr("max_temporal_roi_align_k") = vod_d2::kMaxTopK;
}

// Schemas only: the kernels are registered per backend below, and fake (meta) kernels and autograd
// in Python (vod_d2/layers), so torch.compile and torch.export can trace the ops.
TORCH_LIBRARY(vod_d2, m) {
  m.def("deform_similarity_forward(Tensor query, Tensor key, Tensor offsets) -> Tensor");
  m.def(
      "deform_similarity_backward(Tensor grad_similarity, Tensor query, Tensor key, "
      "Tensor offsets) -> (Tensor, Tensor, Tensor)");
  m.def("deform_aggregate_forward(Tensor weights, Tensor value, Tensor offsets) -> Tensor");
  m.def(
      "deform_aggregate_backward(Tensor grad_output, Tensor weights, Tensor value, "
      "Tensor offsets) -> (Tensor, Tensor, Tensor)");
  m.def("local_correlation_forward(Tensor a, Tensor b, int k) -> Tensor");
  m.def("local_correlation_backward(Tensor grad, Tensor a, Tensor b, int k) -> (Tensor, Tensor)");
  m.def("local_aggregate_forward(Tensor weights, Tensor m, int k) -> Tensor");
  m.def(
      "local_aggregate_backward(Tensor grad, Tensor weights, Tensor m, int k) -> (Tensor, Tensor)");
  m.def(
      "temporal_roi_align_forward(Tensor roi_features, Tensor support_features, "
      "Tensor roi_batch_index, int k) -> (Tensor, Tensor, Tensor)");
  m.def(
      "temporal_roi_align_backward(Tensor grad_output, Tensor roi_features, "
      "Tensor support_features, Tensor roi_batch_index, Tensor topk_sim, Tensor topk_index) "
      "-> (Tensor, Tensor)");
  m.def(
      "deform_ps_roi_pool_forward(Tensor input, Tensor rois, Tensor? offsets, "
      "float spatial_scale, int output_size, int sampling_ratio, float trans_std) -> Tensor");
  m.def(
      "deform_ps_roi_pool_backward(Tensor grad, Tensor input, Tensor rois, Tensor? offsets, "
      "float spatial_scale, int output_size, int sampling_ratio, float trans_std) "
      "-> (Tensor, Tensor)");
}

namespace {

// The entry points are device-agnostic (each picks its CPU or CUDA kernel, and says clearly when
// the CUDA kernels were not compiled), so both backends register the same functions.
void register_kernels(torch::Library& m) {
  m.impl("deform_similarity_forward", &vod_d2::deform_similarity_forward);
  m.impl("deform_similarity_backward", &vod_d2::deform_similarity_backward);
  m.impl("deform_aggregate_forward", &vod_d2::deform_aggregate_forward);
  m.impl("deform_aggregate_backward", &vod_d2::deform_aggregate_backward);
  m.impl("local_correlation_forward", &vod_d2::local_correlation_forward);
  m.impl("local_correlation_backward", &vod_d2::local_correlation_backward);
  m.impl("local_aggregate_forward", &vod_d2::local_aggregate_forward);
  m.impl("local_aggregate_backward", &vod_d2::local_aggregate_backward);
  m.impl("temporal_roi_align_forward", &vod_d2::temporal_roi_align_forward);
  m.impl("temporal_roi_align_backward", &vod_d2::temporal_roi_align_backward);
  m.impl("deform_ps_roi_pool_forward", &vod_d2::deform_ps_roi_pool_forward);
  m.impl("deform_ps_roi_pool_backward", &vod_d2::deform_ps_roi_pool_backward);
}

}  // namespace

TORCH_LIBRARY_IMPL(vod_d2, CPU, m) { register_kernels(m); }

TORCH_LIBRARY_IMPL(vod_d2, CUDA, m) { register_kernels(m); }
