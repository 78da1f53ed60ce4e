#include "instantid/face/detector.hpp"

#include <algorithm>
#include <numeric>

#include "instantid/error.hpp"
#include "instantid/face/imgproc.hpp"
#include "instantid/onnx/executor.hpp"

namespace instantid::face {

namespace {

constexpr float kDetMean = 127.5f;
constexpr float kDetScale = 1.0f / 128.0f;

// Returns the [rows, cols] row-major data of a detector output, accepting a leading batch of 1.
const float* output_rows(const HostTensor& t, std::size_t index, std::int64_t rows,
                         std::int64_t cols) {
  std::vector<std::int64_t> expected2{rows, cols};
  std::vector<std::int64_t> expected3{1, rows, cols};
  if (t.shape() != expected2 && t.shape() != expected3) {
    throw_mismatch(make_message("scrfd: output ", index, " shape"), t.shape_str(),
                   shape_string(expected2) + " or " + shape_string(expected3));
  }
  return t.data();
}

}  // namespace

ScrfdConfig scrfd_config(std::size_t output_count) {
  ScrfdConfig c;
  switch (output_count) {
    case 6: c = {3, {8, 16, 32}, 2, false}; break;
    case 9: c = {3, {8, 16, 32}, 2, true}; break;
    case 10: c = {5, {8, 16, 32, 64, 128}, 1, false}; break;
    case 15: c = {5, {8, 16, 32, 64, 128}, 1, true}; break;
    default:
      throw_mismatch("scrfd: number of network outputs", output_count, "6, 9, 10 or 15");
  }
  return c;
}

std::vector<std::size_t> descending_score_order(const std::vector<float>& scores) {
  std::vector<std::size_t> order(scores.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  std::reverse(order.begin(), order.end());
  return order;
}

std::vector<std::size_t> nms(const std::vector<DetectedFace>& dets, float threshold) {
  const std::size_t n = dets.size();
  std::vector<float> areas(n);
  std::vector<float> scores(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& b = dets[i].bbox;
    areas[i] = (b[2] - b[0] + 1.f) * (b[3] - b[1] + 1.f);
    scores[i] = dets[i].score;
  }
  std::vector<std::size_t> order = descending_score_order(scores);
  std::vector<std::size_t> keep;
  while (!order.empty()) {
    const std::size_t i = order[0];
    keep.push_back(i);
    const auto& bi = dets[i].bbox;
    std::vector<std::size_t> rest;
    for (std::size_t k = 1; k < order.size(); ++k) {
      const std::size_t j = order[k];
      const auto& bj = dets[j].bbox;
      const float xx1 = std::max(bi[0], bj[0]);
      const float yy1 = std::max(bi[1], bj[1]);
      const float xx2 = std::min(bi[2], bj[2]);
      const float yy2 = std::min(bi[3], bj[3]);
      const float w = std::max(0.0f, xx2 - xx1 + 1.f);
      const float h = std::max(0.0f, yy2 - yy1 + 1.f);
      const float inter = w * h;
      const float ovr = inter / (areas[i] + areas[j] - inter);
      if (ovr <= threshold) rest.push_back(j);
    }
    order.swap(rest);
  }
  return keep;
}

std::vector<DetectedFace> scrfd_postprocess(const std::vector<HostTensor>& outputs,
                                            const ScrfdConfig& config, int input_width,
                                            int input_height, double det_scale,
                                            const DetectParams& params) {
  const std::size_t fmc = static_cast<std::size_t>(config.feature_maps);
  const std::size_t expected = fmc * (config.use_kps ? 3 : 2);
  INSTANTID_CHECK(outputs.size() == expected, "scrfd_postprocess: outputs: got ", outputs.size(),
                  ", expected ", expected, " for this detector layout");
  INSTANTID_CHECK(det_scale > 0.0, "scrfd_postprocess: det_scale: got ", det_scale, ", expected > 0");
  std::vector<DetectedFace> candidates;
  std::vector<float> scores;
  for (std::size_t idx = 0; idx < fmc; ++idx) {
    const int stride = config.strides[idx];
    const int h = input_height / stride;
    const int w = input_width / stride;
    const std::int64_t rows = static_cast<std::int64_t>(h) * w * config.num_anchors;
    const float* score = output_rows(outputs[idx], idx, rows, 1);
    const float* box = output_rows(outputs[idx + fmc], idx + fmc, rows, 4);
    const float* kps = config.use_kps ? output_rows(outputs[idx + 2 * fmc], idx + 2 * fmc, rows, 10)
                                      : nullptr;
    const float s = static_cast<float>(stride);
    for (std::int64_t j = 0; j < rows; ++j) {
      if (!(score[j] >= params.threshold)) continue;
      const std::int64_t cell = j / config.num_anchors;  // rows are (y, x, anchor)
      const float cx = static_cast<float>((cell % w) * stride);
      const float cy = static_cast<float>((cell / w) * stride);
      DetectedFace face;
      face.score = score[j];
      const float* b = box + j * 4;
      face.bbox = {cx - b[0] * s, cy - b[1] * s, cx + b[2] * s, cy + b[3] * s};
      if (kps != nullptr) {
        const float* k = kps + j * 10;
        for (int p = 0; p < 10; p += 2) {
          face.kps[static_cast<std::size_t>(p)] = cx + k[p] * s;
          face.kps[static_cast<std::size_t>(p) + 1] = cy + k[p + 1] * s;
        }
        face.has_kps = true;
      }
      candidates.push_back(face);
      scores.push_back(face.score);
    }
  }
  const float scale = static_cast<float>(det_scale);
  std::vector<DetectedFace> sorted;
  sorted.reserve(candidates.size());
  for (std::size_t i : descending_score_order(scores)) {
    DetectedFace face = candidates[i];
    for (float& v : face.bbox) v = v / scale;
    if (face.has_kps) {
      for (float& v : face.kps) v = v / scale;
    }
    sorted.push_back(face);
  }
  std::vector<DetectedFace> result;
  for (std::size_t i : nms(sorted, params.nms_threshold)) result.push_back(sorted[i]);
  return result;
}

Detector::Detector(std::shared_ptr<onnx::Executor> network) : network_(std::move(network)) {
  INSTANTID_CHECK(network_ != nullptr, "Detector: network: got null, expected a loaded SCRFD model");
  config_ = scrfd_config(network_->outputs().size());
  const auto& inputs = network_->inputs();
  INSTANTID_CHECK(inputs.size() == 1, "Detector: ", network_->path(), ": inputs: got ",
                  inputs.size(), ", expected 1 ([1, 3, H, W])");
  const auto& dims = inputs[0].dims;
  INSTANTID_CHECK(dims.size() == 4, "Detector: ", network_->path(), ": input rank: got ",
                  dims.size(), ", expected 4 ([1, 3, H, W])");
  if (dims[2] > 0 && dims[3] > 0) {
    fixed_size_ = {static_cast<int>(dims[3]), static_cast<int>(dims[2])};
  }
}

const std::string& Detector::path() const { return network_->path(); }

std::vector<DetectedFace> Detector::detect(const Image& bgr, int input_width, int input_height,
                                           const DetectParams& params) const {
  INSTANTID_CHECK(input_width > 0 && input_height > 0 && input_width % 32 == 0 &&
                      input_height % 32 == 0,
                  "Detector::detect: input size: got ", input_width, "x", input_height,
                  ", expected positive multiples of 32");
  Letterbox box;
  const Image canvas = letterbox(bgr, input_width, input_height, &box);
  std::vector<HostTensor> inputs;
  inputs.push_back(blob_from_image(canvas, kDetMean, kDetScale));
  const std::vector<HostTensor> outputs = network_->run(inputs);
  return scrfd_postprocess(outputs, config_, input_width, input_height, box.det_scale, params);
}

}  // namespace instantid::face
