// Helpers shared by the ops of vod_d2._C.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#if defined(__CUDACC__)
#define VOD_HOST_DEVICE __host__ __device__
#else
#define VOD_HOST_DEVICE
#endif

namespace vod_d2 {

// Kernels run on CPU, and on CUDA when the extension was compiled with it.
inline bool use_cuda_kernel(const at::Tensor& tensor, const char* op) {
  if (tensor.is_cuda()) {
#ifdef WITH_CUDA
    return true;
#else
    TORCH_CHECK(false, op,
                ": vod_d2._C was built without CUDA; rebuild it with FORCE_CUDA=1 "
                "(pip install --no-build-isolation -e .) to run on ",
                tensor.device());
#endif
  }
  TORCH_CHECK(tensor.is_cpu(), op, ": no kernel for device ", tensor.device());
  return false;
}

inline void check_floating(const at::Tensor& tensor, const char* op, const char* name) {
  TORCH_CHECK(at::isFloatingType(tensor.scalar_type()), op, ": ", name,
              " must be a floating point tensor, got ", tensor.scalar_type());
}

}  // namespace vod_d2
