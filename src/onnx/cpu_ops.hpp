#pragma once
// The CPU backend: one function per ONNX op over host Tensors (float32 math, Eigen GEMM for
// Conv/Gemm/MatMul, im2col convolution split over the machine's cores with std::thread).

#include <vector>

#include "onnx/graph.hpp"

namespace instantid::onnx {

// Runs one node; in[k] is null for an omitted optional input. Returns the node's outputs (one per
// entry of node.outputs; omitted ones are empty tensors). `reusable`, when given, is in[0]'s
// storage, dead after this node: elementwise and reshaping ops work in it instead of copying.
std::vector<Tensor> run_cpu_node(const Node& node, std::int64_t opset,
                                 const std::vector<const Tensor*>& in, Tensor* reusable = nullptr);

// Relu → [0, inf); Clip → its [min, max] (attributes, or scalar inputs in `in` = the Clip's
// inputs). False for other ops or non-scalar bounds.
bool activation_bounds(const Node& act, std::int64_t opset, const std::vector<const Tensor*>& in,
                       float* lo, float* hi);
// Conv with the following activation's clamp fused into its output pass.
Tensor run_cpu_conv_clamped(const Node& conv_node, const std::vector<const Tensor*>& in, float lo,
                            float hi);

// Reads a host int64/float tensor as a list of integers (for shape-like inputs).
std::vector<std::int64_t> as_int_list(const Node& node, const Tensor& t, const char* what);

}  // namespace instantid::onnx
