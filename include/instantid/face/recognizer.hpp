#pragma once
// ArcFace-style recognition (insightface model_zoo/arcface_onnx.py, spec §7).

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "instantid/face/image.hpp"

namespace instantid::onnx {
class Executor;
}

namespace instantid::face {

// insightface's normalisation rule: when one of the first 8 node names starts with "Sub" or
// "_minus" and one with "Mul" or "_mul", the network normalises itself (mean 0, std 1); otherwise
// the input is (p - 127.5) / 127.5.
struct InputNormalization {
  float mean = 127.5f;
  float std = 127.5f;
};
InputNormalization recognizer_normalization(const std::vector<std::string>& first_node_names);

class Recognizer {
 public:
  // Takes a loaded recogniser: one [N, 3, S, S] input (S from the model) and exactly one output.
  explicit Recognizer(std::shared_ptr<onnx::Executor> network);

  int input_size() const { return input_size_; }
  InputNormalization normalization() const { return norm_; }
  const std::string& path() const;

  // Raw (not L2-normalised) embedding of the face at kps (original-image pixels) in a BGR image:
  // norm_crop → blob (p - mean) * float(1/std) RGB → network → flattened output.
  std::vector<float> embed(const Image& bgr, const std::array<float, 10>& kps) const;
  // Same, from an already aligned input_size × input_size BGR crop.
  std::vector<float> embed_aligned(const Image& crop) const;

 private:
  std::shared_ptr<onnx::Executor> network_;
  InputNormalization norm_;
  int input_size_ = 112;
};

// embedding / ||embedding|| in float32 (insightface Face.normed_embedding).
std::vector<float> normed_embedding(const std::vector<float>& embedding);
// dot(a, b) / (||a|| ||b||), accumulated in double.
double cosine_similarity(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace instantid::face
