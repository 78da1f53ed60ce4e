// The face pipeline with the ONNX executor's CUDA backend, against the CPU backend on the same
// decoded images (identical pre/post-processing, so differences are the networks' only).

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <unistd.h>

#include "face_test_util.hpp"
#include "instantid/face/analysis.hpp"

using namespace instantid::face;
namespace itest = instantid::test;

namespace {

struct Folder {
  std::string path;
  std::vector<std::string> links;
  Folder() {
    char tmpl[] = "/tmp/instantid_face_cuda_XXXXXX";
    const char* dir = ::mkdtemp(tmpl);
    REQUIRE(dir != nullptr);
    path = dir;
    for (const auto& [name, target] : {std::pair<std::string, std::string>{"det.onnx", "models/scrfd_2.5g.onnx"},
                                       {"rec.onnx", "models/mobilefacenet_128d.onnx"}}) {
      links.push_back(path + "/" + name);
      REQUIRE(::symlink(itest::shared_path(target).c_str(), links.back().c_str()) == 0);
    }
  }
  ~Folder() {
    for (const auto& l : links) std::remove(l.c_str());
    ::rmdir(path.c_str());
  }
};

}  // namespace

TEST_CASE("FaceAnalysis on CUDA agrees with the CPU backend", "[face][gpu]") {
  if (itest::shared_path("models/scrfd_2.5g.onnx").empty() ||
      itest::shared_path("models/mobilefacenet_128d.onnx").empty()) {
    WARN("shared models absent: skipped");
    return;
  }
  Folder folder;
  const FaceAnalysis cpu = FaceAnalysis::load(folder.path);
  for (const instantid::DType dtype : {instantid::DType::kF32, instantid::DType::kF16}) {
    AnalysisOptions options;
    options.device = instantid::Device{instantid::DeviceType::kCuda, 0};
    options.cuda_dtype = dtype;
    const FaceAnalysis gpu = FaceAnalysis::load(folder.path, options);
    double worst_px = 0.0;
    double worst_score = 0.0;
    double worst_cos = 1.0;
    for (const std::string name : {"astronaut.png", "kaifu_resize.png", "musk_resize.jpeg", "pose.jpg",
                                   "pose2.jpg", "yann-lecun_resize.jpg", "no_face_coffee.png"}) {
      const std::string path = itest::shared_path("faces/" + name);
      if (path.empty()) continue;
      const Image img = load_image(path);
      const ImageFaces a = cpu.extract({img}).front();
      const ImageFaces b = gpu.extract({img}).front();
      INFO(instantid::dtype_name(dtype) << " " << name);
      REQUIRE(a.det_size == b.det_size);
      REQUIRE(a.faces.size() == b.faces.size());
      for (std::size_t i = 0; i < a.faces.size(); ++i) {
        for (std::size_t k = 0; k < 4; ++k) {
          worst_px = std::max(worst_px, double(std::abs(a.faces[i].bbox[k] - b.faces[i].bbox[k])));
        }
        for (std::size_t k = 0; k < 10; ++k) {
          worst_px = std::max(worst_px, double(std::abs(a.faces[i].kps[k] - b.faces[i].kps[k])));
        }
        worst_score = std::max(worst_score, double(std::abs(a.faces[i].score - b.faces[i].score)));
      }
      if (a.det_size) worst_cos = std::min(worst_cos, cosine_similarity(a.embedding, b.embedding));
    }
    WARN(instantid::dtype_name(dtype) << " CUDA vs CPU: worst box/keypoint " << worst_px
                                      << " px, worst score " << worst_score << ", worst cosine "
                                      << worst_cos);
    const bool f32 = dtype == instantid::DType::kF32;
    CHECK(worst_px <= (f32 ? 0.05 : 0.5));
    CHECK(worst_score <= (f32 ? 1e-3 : 5e-3));
    CHECK(worst_cos >= (f32 ? 0.9999 : 0.999));
  }
}
