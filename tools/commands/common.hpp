#pragma once
// Helpers shared by the subcommands: checkpoint layout inference, option parsing of library
// enums, and dtype names.

#include <string>

#include "instantid/layout.hpp"
#include "instantid/model.hpp"
#include "instantid/tensor.hpp"

namespace instantid::cli {

// The layout of the checkpoint at `path`, read from its tensor shapes without converting any
// weights: ModelLayout::sdxl() when the widths are SDXL's, else ModelLayout::reduced() with the
// width divisor, embedding size and Resampler width found in the file (64-wide heads). Throws
// Error naming the file when it is not an InstantID checkpoint.
ModelLayout infer_layout(const std::string& path);

// InstantIDModel::load with the inferred layout.
InstantIDModel load_model(const std::string& path);

// "f32" | "f16" | "bf16"; throws UsageError naming `what`.
DType parse_dtype(const std::string& name, const std::string& what);

// A short human description of a layout: "SDXL (70 layers, widths 640/1280, Resampler 1280)".
std::string describe_layout(const ModelLayout& layout);

}  // namespace instantid::cli
