#include "instantid/face/analysis.hpp"

#include <algorithm>
#include <dirent.h>
#include <sys/stat.h>

#include "instantid/error.hpp"
#include "instantid/face/draw.hpp"
#include "instantid/onnx/executor.hpp"

namespace instantid::face {

const std::vector<int> kComfyDetSizes = {640, 576, 512, 448, 384, 320, 256, 192};

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<std::string> sorted_onnx_files(const std::string& folder) {
  struct stat st {};
  INSTANTID_CHECK(::stat(folder.c_str(), &st) == 0 && S_ISDIR(st.st_mode),
                  "FaceAnalysis: model folder '", folder, "': not found, expected a directory "
                  "holding the .onnx files (e.g. models/antelopev2)");
  DIR* dir = ::opendir(folder.c_str());
  INSTANTID_CHECK(dir != nullptr, "FaceAnalysis: cannot read the model folder '", folder, "'");
  std::vector<std::string> files;
  while (const dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (ends_with(name, ".onnx")) files.push_back(folder + "/" + name);
  }
  ::closedir(dir);
  std::sort(files.begin(), files.end());  // Python sorted(glob(...)): code-point order
  return files;
}

std::string route(const onnx::Executor& model) {
  const auto& inputs = model.inputs();
  if (model.outputs().size() >= 5) return "detection";
  if (inputs.empty() || inputs[0].dims.size() < 4) return "unrecognized";
  const std::int64_t h = inputs[0].dims[2];
  const std::int64_t w = inputs[0].dims[3];
  if (h == 192 && w == 192) return "landmark";
  if (h == 96 && w == 96) return "attribute";
  if (inputs.size() == 2 && h == 128 && w == 128) return "inswapper";
  if (h == w && h >= 112 && h % 16 == 0) return "recognition";
  return "unrecognized";
}

std::string describe(const std::vector<ModelEntry>& models) {
  if (models.empty()) return "no .onnx files";
  std::string out;
  for (const auto& m : models) {
    if (!out.empty()) out += "; ";
    out += m.path + " (" + m.task + (m.note.empty() ? "" : ": " + m.note) + ")";
  }
  return out;
}

}  // namespace

std::optional<std::size_t> largest_face(const std::vector<DetectedFace>& faces) {
  std::optional<std::size_t> best_index;
  float best = 0.f;
  for (std::size_t i = 0; i < faces.size(); ++i) {
    const auto& b = faces[i].bbox;
    const float area = (b[2] - b[0]) * (b[3] - b[1]);
    if (!best_index || area >= best) {
      best = area;
      best_index = i;
    }
  }
  return best_index;
}

HostTensor stack_embeddings(const std::vector<ImageFaces>& results) {
  std::vector<float> values;
  std::int64_t found = 0;
  std::size_t dim = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const ImageFaces& r = results[i];
    if (!r.det_size || r.embedding.empty()) continue;
    if (found == 0) dim = r.embedding.size();
    INSTANTID_CHECK(r.embedding.size() == dim, "stack_embeddings: image ", i, " embedding size: got ",
                    r.embedding.size(), ", expected ", dim, " like the first found image");
    values.insert(values.end(), r.embedding.begin(), r.embedding.end());
    ++found;
  }
  if (found == 0) return HostTensor();
  return HostTensor({found, 1, static_cast<std::int64_t>(dim)}, std::move(values));
}

HostTensor kps_images(const std::vector<ImageFaces>& results) {
  std::vector<float> values;
  std::int64_t found = 0;
  int width = 0;
  int height = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const ImageFaces& r = results[i];
    if (!r.det_size || !r.selected) continue;
    if (found == 0) {
      width = r.width;
      height = r.height;
    }
    INSTANTID_CHECK(r.width == width && r.height == height, "kps_images: image ", i, " size: got ",
                    r.width, "x", r.height, ", expected ", width, "x", height,
                    " like the first found image");
    const Image drawn = draw_kps(width, height, r.faces[*r.selected].kps);
    for (std::uint8_t v : drawn.pixels) values.push_back(static_cast<float>(v) / 255.0f);
    ++found;
  }
  if (found == 0) return HostTensor();
  return HostTensor({found, height, width, 3}, std::move(values));
}

FaceAnalysis FaceAnalysis::load(const std::string& folder, const AnalysisOptions& options) {
  FaceAnalysis fa;
  fa.options_ = options;
  onnx::ExecutorOptions exec;
  exec.device = options.device;
  exec.cuda_dtype = options.cuda_dtype;
  for (const std::string& path : sorted_onnx_files(folder)) {
    ModelEntry entry;
    entry.path = path;
    std::shared_ptr<onnx::Executor> model;
    try {
      model = std::make_shared<onnx::Executor>(onnx::Executor::load(path, exec));
    } catch (const Error& e) {
      // insightface would fail on such a file; we only need the detector and the recogniser,
      // so an unreadable landmark/attribute model is reported and skipped.
      entry.task = "unloadable";
      entry.note = e.what();
      fa.models_.push_back(entry);
      continue;
    }
    entry.task = route(*model);
    if (entry.task == "detection" && !fa.detector_) {
      fa.detector_ = std::make_shared<Detector>(model);
      entry.used = true;
    } else if (entry.task == "recognition" && !fa.recognizer_) {
      fa.recognizer_ = std::make_shared<Recognizer>(model);
      entry.used = true;
    }
    fa.models_.push_back(entry);
  }
  INSTANTID_CHECK(fa.detector_ != nullptr, "FaceAnalysis: model folder '", folder,
                  "': no detection model (an .onnx with >= 5 outputs, e.g. scrfd_10g_bnkps.onnx); found: ",
                  describe(fa.models_));
  INSTANTID_CHECK(fa.recognizer_ != nullptr, "FaceAnalysis: model folder '", folder,
                  "': no recognition model (an .onnx with one [N, 3, S, S] input, S >= 112 and S % 16 == 0, "
                  "e.g. glintr100.onnx); found: ", describe(fa.models_));
  return fa;
}

std::vector<DetectedFace> FaceAnalysis::detect(const Image& bgr, int det_size) const {
  int w = det_size;
  int h = det_size;
  if (det_size == 0) {
    const auto fixed = detector_->fixed_input_size();
    if (fixed[0] > 0) {
      w = fixed[0];
      h = fixed[1];
    } else {
      w = h = options_.det_size;
    }
  }
  return detector_->detect(bgr, w, h, options_.detect);
}

std::vector<ImageFaces> FaceAnalysis::extract(const std::vector<Image>& images,
                                              const std::vector<int>& sizes) const {
  INSTANTID_CHECK(!sizes.empty(), "FaceAnalysis::extract: sizes: got none, expected e.g. 640..192");
  std::vector<ImageFaces> results;
  results.reserve(images.size());
  for (const Image& image : images) {
    ImageFaces r;
    r.width = image.width;
    r.height = image.height;
    for (int size : sizes) {
      std::vector<DetectedFace> faces = detector_->detect(image, size, size, options_.detect);
      if (faces.empty()) continue;
      r.det_size = size;
      r.faces = std::move(faces);
      r.selected = largest_face(r.faces);
      const DetectedFace& face = r.faces[*r.selected];
      INSTANTID_CHECK(face.has_kps, "FaceAnalysis::extract: detector ", detector_->path(),
                      " gives no keypoints: got a 6/10-output SCRFD, expected one with keypoints");
      r.embedding = recognizer_->embed(image, face.kps);
      break;
    }
    results.push_back(std::move(r));
  }
  return results;
}

ImageFaces FaceAnalysis::extract_one(const Image& bgr, const std::vector<int>& sizes,
                                     const std::string& name) const {
  ImageFaces r = extract({bgr}, sizes).front();
  if (!r.det_size) {
    std::string tried;
    for (int s : sizes) tried += (tried.empty() ? "" : ",") + std::to_string(s);
    throw Error(make_message("FaceAnalysis: ", name, " (", bgr.width, "x", bgr.height,
                             "): no face detected at any detection size (", tried, ")"));
  }
  return r;
}

}  // namespace instantid::face
