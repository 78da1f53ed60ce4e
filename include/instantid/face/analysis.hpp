#pragma once
// FaceAnalysis: the model folder of insightface (antelopev2, buffalo_l, ...) and ComfyUI_InstantID's
// extraction loop on top of it (spec §2.3, §3).

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "instantid/face/detector.hpp"
#include "instantid/face/image.hpp"
#include "instantid/face/recognizer.hpp"
#include "instantid/tensor.hpp"

namespace instantid::face {

// Detection sizes ComfyUI_InstantID tries, largest first (128 is never tried).
extern const std::vector<int> kComfyDetSizes;

struct AnalysisOptions {
  Device device{};                 // cpu or cuda:N for the ONNX executor
  DType cuda_dtype = DType::kF32;  // compute type of the CUDA executor
  DetectParams detect{};           // det_thresh 0.5, nms 0.4
  int det_size = 640;              // FaceAnalysis.prepare(det_size) for get()
};

// How a model file of the folder was routed (insightface ModelRouter rules, first match wins).
struct ModelEntry {
  std::string path;
  std::string task;  // detection, landmark, attribute, inswapper, recognition, unrecognized, unloadable
  bool used = false; // the first file of its task among detection/recognition
  std::string note;  // load error for unloadable files
};

// One image of an extract() batch.
struct ImageFaces {
  int width = 0;
  int height = 0;
  std::optional<int> det_size;        // the first size that found a face
  std::vector<DetectedFace> faces;    // at det_size, detection (score-descending) order
  std::optional<std::size_t> selected;  // largest face (later in NMS order wins ties)
  std::vector<float> embedding;       // raw embedding of the selected face; empty when none
};

// insightface/ComfyUI's largest face: area (x2-x1)*(y2-y1) in float32, scan in order, `area >= best`.
std::optional<std::size_t> largest_face(const std::vector<DetectedFace>& faces);

// ComfyUI_InstantID's embedding output for a batch: the raw embeddings of the images where a face
// was found, stacked as [N_found, 1, D] float32; a tensor with no dims when none was found
// (ComfyUI returns None, and ApplyInstantID raises "No face detected").
HostTensor stack_embeddings(const std::vector<ImageFaces>& results);

// The keypoint path: draw_kps of each found image's selected face as [N_found, H, W, 3] float32
// RGB in [0, 1] (value / 255); no dims when none was found. Found images must share one size.
HostTensor kps_images(const std::vector<ImageFaces>& results);

class FaceAnalysis {
 public:
  // Loads every *.onnx of `folder` in sorted order and routes each by its inputs/outputs. Needs a
  // detector and a recogniser; otherwise throws listing what was found.
  static FaceAnalysis load(const std::string& folder, const AnalysisOptions& options = {});

  const Detector& detector() const { return *detector_; }
  const Recognizer& recognizer() const { return *recognizer_; }
  const std::vector<ModelEntry>& models() const { return models_; }
  const AnalysisOptions& options() const { return options_; }

  // The detection half of FaceAnalysis.get: faces at det_size × det_size in NMS order. det_size 0
  // means the model's fixed input size, or options().det_size for dynamic models.
  std::vector<DetectedFace> detect(const Image& bgr, int det_size = 0) const;

  // ComfyUI_InstantID extractFeatures for each image: tries sizes in order until a face is found,
  // selects the largest and embeds it. Images without a face stay in the result with no det_size.
  std::vector<ImageFaces> extract(const std::vector<Image>& images,
                                  const std::vector<int>& sizes = kComfyDetSizes) const;
  // One image; throws instantid::Error when it has no face at any size.
  ImageFaces extract_one(const Image& bgr, const std::vector<int>& sizes = kComfyDetSizes,
                         const std::string& name = "image") const;

 private:
  FaceAnalysis() = default;
  AnalysisOptions options_;
  std::shared_ptr<Detector> detector_;
  std::shared_ptr<Recognizer> recognizer_;
  std::vector<ModelEntry> models_;
};

}  // namespace instantid::face
