#pragma once
// Direct-packing convolution for x86-64 CPUs with AVX2 + FMA (checked at run time): the im2col
// matrix is never materialised; 16-column panels of it are packed straight from the image and
// multiplied by the packed weights with a 6x16 register-blocked FMA kernel.

#include <cstdint>

#include "onnx/shape_rules.hpp"

namespace instantid::onnx {

// True when the CPU supports AVX2 and FMA and INSTANTID_ONNX_NO_AVX2 is not set to 1.
bool cpu_has_avx2_fma();

// One group of one image: y [mg, OH*OW] = clamp(w [mg, cg*KH*KW] * im2col(x [cg, H, W]) +
// bias [mg], lo, hi). bias may be null; lo/hi = -inf/inf for no activation. Splits the work over
// the cores. Requires cpu_has_avx2_fma().
void conv2d_group_avx2(const Conv2dGeometry& g, std::int64_t cg, std::int64_t mg, const float* x,
                       const float* w, const float* bias, float* y, float lo, float hi);

}  // namespace instantid::onnx
