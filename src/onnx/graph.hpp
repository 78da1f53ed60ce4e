#pragma once
// The executor's own graph form: a checked, topologically ordered list of nodes over numbered
// values, built from an onnx::ModelProto by parse_model(). Nothing here depends on protobuf, so the
// CPU and CUDA backends include only this header.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "instantid/onnx/executor.hpp"

namespace instantid::onnx {

enum class ElemType : std::uint8_t { kFloat, kInt64 };

inline const char* elem_type_name(ElemType t) { return t == ElemType::kFloat ? "float" : "int64"; }

// A host tensor of float32 or int64 elements, contiguous row-major.
struct Tensor {
  ElemType type = ElemType::kFloat;
  std::vector<std::int64_t> shape;
  std::vector<float> f;         // used when type == kFloat
  std::vector<std::int64_t> i;  // used when type == kInt64

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  int rank() const { return static_cast<int>(shape.size()); }
  static Tensor floats(std::vector<std::int64_t> shape, std::vector<float> values = {});
  static Tensor ints(std::vector<std::int64_t> shape, std::vector<std::int64_t> values = {});
};

struct Attribute {
  enum class Kind : std::uint8_t { kInt, kFloat, kString, kInts, kFloats, kTensor };
  Kind kind = Kind::kInt;
  std::int64_t i = 0;
  float f = 0.0f;
  std::string s;
  std::vector<std::int64_t> ints;
  std::vector<float> floats;
  Tensor t;
};

enum class Op : std::uint8_t {
  kConv, kBatchNorm, kPRelu, kRelu, kClip, kAdd, kSub, kMul, kDiv, kSigmoid, kMaxPool,
  kAveragePool, kGlobalAveragePool, kResize, kUpsample, kShape, kGather, kUnsqueeze, kSqueeze,
  kSlice, kConcat, kReshape, kTranspose, kFlatten, kGemm, kMatMul, kConstant, kIdentity, kDropout
};

struct Node {
  std::string name;
  std::string op_type;
  Op op = Op::kIdentity;
  std::vector<int> inputs;   // value ids; -1 for an omitted optional input
  std::vector<int> outputs;  // value ids; -1 for an omitted optional output
  std::map<std::string, Attribute> attrs;

  bool has(const std::string& key) const { return attrs.count(key) != 0; }
  std::int64_t attr_int(const std::string& key, std::int64_t fallback) const;
  float attr_float(const std::string& key, float fallback) const;
  std::string attr_string(const std::string& key, const std::string& fallback) const;
  std::vector<std::int64_t> attr_ints(const std::string& key,
                                      std::vector<std::int64_t> fallback = {}) const;
  // "node 'name' (Op)" for messages.
  std::string where() const;
};

struct Graph {
  std::string path;
  std::int64_t opset = 0;  // version of the default ("" / ai.onnx) domain
  std::vector<std::string> value_names;   // by value id
  std::map<int, Tensor> initializers;     // constant values by id
  std::vector<int> input_ids;             // graph inputs that are not initializers, in order
  std::vector<int> output_ids;            // graph outputs, in order
  std::vector<ValueInfo> inputs;
  std::vector<ValueInfo> outputs;
  std::vector<Node> nodes;                // topological (graph) order, checked
  std::vector<int> last_use;              // by value id: index of the last node reading it
};

// Limits applied while reading a model.
constexpr std::int64_t kMaxModelBytes = std::int64_t{1} << 31;  // protobuf's own 2 GiB limit
constexpr std::size_t kMaxNodes = 100000;
constexpr std::int64_t kMaxTensorElements = std::int64_t{1} << 31;
constexpr int kMaxRank = 8;

// The element limit Tensor::floats/ints enforce on this thread before allocating: kMaxTensorElements
// while a model is read, ExecutorOptions::max_tensor_elements while Executor::run runs (this scope).
class TensorElementLimit {
 public:
  explicit TensorElementLimit(std::int64_t limit);
  ~TensorElementLimit();
  TensorElementLimit(const TensorElementLimit&) = delete;
  TensorElementLimit& operator=(const TensorElementLimit&) = delete;
  static std::int64_t current();

 private:
  std::int64_t previous_;
};
// Element count of `shape`; throws Error on a negative dim or a count over the current limit.
std::int64_t checked_numel(const std::vector<std::int64_t>& shape);

Graph parse_model(const std::string& bytes, const std::string& name);

}  // namespace instantid::onnx
