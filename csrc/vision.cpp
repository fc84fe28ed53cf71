// Bindings of vod_d2._C: the ops are registered with the dispatcher as torch.ops.vod_d2.*, and the
// Python module only reports how the extension was built.
#include <torch/extension.h>

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

TORCH_LIBRARY(vod_d2, m) {
  m.def("deform_similarity_forward(Tensor query, Tensor key, Tensor offsets) -> Tensor",
        &vod_d2::deform_similarity_forward);
  m.def(
      "deform_similarity_backward(Tensor grad_similarity, Tensor query, Tensor key, "
      "Tensor offsets) -> (Tensor, Tensor, Tensor)",
      &vod_d2::deform_similarity_backward);
  m.def("deform_aggregate_forward(Tensor weights, Tensor value, Tensor offsets) -> Tensor",
        &vod_d2::deform_aggregate_forward);
  m.def(
      "deform_aggregate_backward(Tensor grad_output, Tensor weights, Tensor value, "
      "Tensor offsets) -> (Tensor, Tensor, Tensor)",
      &vod_d2::deform_aggregate_backward);
  m.def("local_correlation_forward(Tensor a, Tensor b, int k) -> Tensor",
        &vod_d2::local_correlation_forward);
  m.def(
      "local_correlation_backward(Tensor grad, Tensor a, Tensor b, int k) -> (Tensor, Tensor)",
      &vod_d2::local_correlation_backward);
  m.def("local_aggregate_forward(Tensor weights, Tensor m, int k) -> Tensor",
        &vod_d2::local_aggregate_forward);
  m.def(
      "local_aggregate_backward(Tensor grad, Tensor weights, Tensor m, int k) -> (Tensor, Tensor)",
      &vod_d2::local_aggregate_backward);
  m.def(
      "temporal_roi_align_forward(Tensor roi_features, Tensor support_features, "
      "Tensor roi_batch_index, int k) -> (Tensor, Tensor, Tensor)",
      &vod_d2::temporal_roi_align_forward);
  m.def(
      "temporal_roi_align_backward(Tensor grad_output, Tensor roi_features, "
      "Tensor support_features, Tensor roi_batch_index, Tensor topk_sim, Tensor topk_index) "
      "-> (Tensor, Tensor)",
      &vod_d2::temporal_roi_align_backward);
}
