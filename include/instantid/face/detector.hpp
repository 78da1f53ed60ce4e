#pragma once
// SCRFD face detection as insightface 0.7.3's RetinaFace class does it (spec §5): letterbox,
// blob, network, anchor decode, threshold, score sort, NMS — all float32 like NumPy.

#include <array>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "instantid/face/image.hpp"
#include "instantid/tensor.hpp"

namespace instantid::onnx {
class Executor;
}

namespace instantid::face {

// One detection in original-image pixels.
struct DetectedFace {
  std::array<float, 4> bbox{};  // x1, y1, x2, y2
  float score = 0.f;
  std::array<float, 10> kps{};  // (x, y) × 5: left eye, right eye, nose, left mouth, right mouth
  bool has_kps = false;
};

// Detector layout implied by the number of network outputs (6, 9, 10 or 15; spec §5.1).
struct ScrfdConfig {
  int feature_maps = 0;       // fmc
  std::vector<int> strides;   // 8,16,32 or 8,16,32,64,128
  int num_anchors = 0;
  bool use_kps = false;
};
ScrfdConfig scrfd_config(std::size_t output_count);

struct DetectParams {
  float threshold = 0.5f;      // scores >= threshold (float32 compare)
  float nms_threshold = 0.4f;  // kept when IoU <= nms_threshold
};

// Decodes raw network outputs (graph order: scores per stride, then boxes, then keypoints; each
// [rows, C] or [1, rows, C]) for an input of input_width × input_height letterboxed with
// det_scale, and returns the faces after NMS in descending score order.
std::vector<DetectedFace> scrfd_postprocess(const std::vector<HostTensor>& outputs,
                                            const ScrfdConfig& config, int input_width,
                                            int input_height, double det_scale,
                                            const DetectParams& params = {});

// Greedy NMS of insightface (float32, "+1" pixel areas). dets must be in descending score order
// (ties as insightface orders them); returns the kept indices into dets, in order.
std::vector<std::size_t> nms(const std::vector<DetectedFace>& dets, float threshold);

// Order of insightface's `scores.argsort()[::-1]`, made reproducible: stable ascending sort,
// reversed (so equal scores come out later-index first).
std::vector<std::size_t> descending_score_order(const std::vector<float>& scores);

class Detector {
 public:
  // Takes a loaded SCRFD network (>= 5 outputs); throws if its output count is not 6/9/10/15 or
  // it does not take one [1, 3, H, W] input.
  explicit Detector(std::shared_ptr<onnx::Executor> network);

  // The fixed input size of the network as (width, height), or (0, 0) when H/W are dynamic.
  std::array<int, 2> fixed_input_size() const { return fixed_size_; }
  const ScrfdConfig& config() const { return config_; }
  const std::string& path() const;

  // Detects faces in a BGR image with an input of input_width × input_height (multiples of 32).
  std::vector<DetectedFace> detect(const Image& bgr, int input_width, int input_height,
                                   const DetectParams& params = {}) const;

 private:
  std::shared_ptr<onnx::Executor> network_;
  ScrfdConfig config_;
  std::array<int, 2> fixed_size_{0, 0};
};

}  // namespace instantid::face
