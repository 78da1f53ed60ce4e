#include "instantid/face/recognizer.hpp"

#include <cmath>

#include "instantid/error.hpp"
#include "instantid/face/align.hpp"
#include "instantid/face/imgproc.hpp"
#include "instantid/onnx/executor.hpp"

namespace instantid::face {

namespace {
bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }
}  // namespace

InputNormalization recognizer_normalization(const std::vector<std::string>& first_node_names) {
  bool find_sub = false;
  bool find_mul = false;
  for (std::size_t i = 0; i < first_node_names.size() && i < 8; ++i) {
    const std::string& name = first_node_names[i];
    if (starts_with(name, "Sub") || starts_with(name, "_minus")) find_sub = true;
    if (starts_with(name, "Mul") || starts_with(name, "_mul")) find_mul = true;
  }
  if (find_sub && find_mul) return {0.0f, 1.0f};
  return {127.5f, 127.5f};
}

Recognizer::Recognizer(std::shared_ptr<onnx::Executor> network) : network_(std::move(network)) {
  INSTANTID_CHECK(network_ != nullptr, "Recognizer: network: got null, expected a loaded model");
  const auto& inputs = network_->inputs();
  INSTANTID_CHECK(inputs.size() == 1, "Recognizer: ", network_->path(), ": inputs: got ",
                  inputs.size(), ", expected 1 ([N, 3, S, S])");
  const auto& dims = inputs[0].dims;
  INSTANTID_CHECK(dims.size() == 4 && dims[1] == 3 && dims[2] > 0 && dims[2] == dims[3],
                  "Recognizer: ", network_->path(), ": input shape: got ", shape_string(dims),
                  ", expected [N, 3, S, S] with a fixed S");
  INSTANTID_CHECK(network_->outputs().size() == 1, "Recognizer: ", network_->path(),
                  ": outputs: got ", network_->outputs().size(), ", expected 1");
  input_size_ = static_cast<int>(dims[2]);
  norm_ = recognizer_normalization(network_->node_names(8));
}

const std::string& Recognizer::path() const { return network_->path(); }

std::vector<float> Recognizer::embed(const Image& bgr, const std::array<float, 10>& kps) const {
  return embed_aligned(norm_crop(bgr, kps, input_size_));
}

std::vector<float> Recognizer::embed_aligned(const Image& crop) const {
  INSTANTID_CHECK(crop.width == input_size_ && crop.height == input_size_ && crop.channels == 3,
                  "Recognizer::embed_aligned: crop: got ", crop.width, "x", crop.height, "x",
                  crop.channels, ", expected ", input_size_, "x", input_size_, "x3 BGR");
  std::vector<HostTensor> inputs;
  const float scale = static_cast<float>(1.0 / static_cast<double>(norm_.std));
  inputs.push_back(blob_from_image(crop, norm_.mean, scale));
  const std::vector<HostTensor> outputs = network_->run(inputs);
  INSTANTID_CHECK(outputs.size() == 1 && outputs[0].numel() > 0, "Recognizer: ", network_->path(),
                  ": outputs: got ", outputs.size(), ", expected one non-empty embedding");
  return outputs[0].values();
}

std::vector<float> normed_embedding(const std::vector<float>& embedding) {
  double sum = 0.0;
  for (float v : embedding) sum += static_cast<double>(v) * v;
  const float norm = static_cast<float>(std::sqrt(sum));
  INSTANTID_CHECK(norm > 0.f, "normed_embedding: norm: got 0, expected a non-zero embedding");
  std::vector<float> out(embedding.size());
  for (std::size_t i = 0; i < embedding.size(); ++i) out[i] = embedding[i] / norm;
  return out;
}

double cosine_similarity(const std::vector<float>& a, const std::vector<float>& b) {
  INSTANTID_CHECK(a.size() == b.size() && !a.empty(), "cosine_similarity: sizes: got ", a.size(),
                  " and ", b.size(), ", expected equal and non-zero");
  double dot = 0.0;
  double na = 0.0;
  double nb = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    dot += static_cast<double>(a[i]) * b[i];
    na += static_cast<double>(a[i]) * a[i];
    nb += static_cast<double>(b[i]) * b[i];
  }
  return dot / std::sqrt(na * nb);
}

}  // namespace instantid::face
