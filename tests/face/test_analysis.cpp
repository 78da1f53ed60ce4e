#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <sstream>
#include <unistd.h>

#include "commands/registry.hpp"
#include "face_test_util.hpp"
#include "instantid/error.hpp"
#include "instantid/face/analysis.hpp"

using namespace instantid::face;
using instantid::face::test::goldens;
namespace itest = instantid::test;

namespace {

// A temporary folder of symlinks to ../shared/models files, removed on destruction.
class ModelFolder {
 public:
  explicit ModelFolder(const std::vector<std::pair<std::string, std::string>>& links) {
    char tmpl[] = "/tmp/instantid_face_XXXXXX";
    const char* dir = ::mkdtemp(tmpl);
    REQUIRE(dir != nullptr);
    path_ = dir;
    for (const auto& [name, target] : links) {
      const std::string link = path_ + "/" + name;
      REQUIRE(::symlink(target.c_str(), link.c_str()) == 0);
      names_.push_back(link);
    }
  }
  ~ModelFolder() {
    for (const auto& n : names_) std::remove(n.c_str());
    ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::string> names_;
};

bool have_models() {
  return !itest::shared_path("models/scrfd_2.5g.onnx").empty() &&
         !itest::shared_path("models/scrfd_500m.onnx").empty() &&
         !itest::shared_path("models/mobilefacenet_128d.onnx").empty() &&
         !itest::shared_path("faces/astronaut.png").empty();
}

DetectedFace face_at(float x1, float y1, float x2, float y2) {
  DetectedFace f;
  f.bbox = {x1, y1, x2, y2};
  return f;
}

}  // namespace

TEST_CASE("largest_face: float32 area, ties go to the later face", "[face][analysis]") {
  CHECK_FALSE(largest_face({}).has_value());
  CHECK(*largest_face({face_at(0, 0, 10, 10), face_at(0, 0, 20, 5), face_at(5, 5, 9, 9)}) == 1);
  CHECK(*largest_face({face_at(0, 0, 10, 10), face_at(1, 1, 11, 11), face_at(0, 0, 5, 5)}) == 1);
}

TEST_CASE("Recogniser normalisation from the first node names", "[face][analysis]") {
  CHECK(recognizer_normalization({"Sub_0", "Mul_1", "conv0"}).mean == 0.0f);
  CHECK(recognizer_normalization({"_minus0", "_mul0"}).std == 1.0f);
  CHECK(recognizer_normalization({"Sub_0", "conv0"}).mean == 127.5f);  // no Mul
  CHECK(recognizer_normalization({"Conv_0", "PRelu_1"}).std == 127.5f);
  // Only the first 8 names count.
  CHECK(recognizer_normalization({"a", "b", "c", "d", "e", "f", "g", "Sub", "Mul"}).mean == 127.5f);
}

TEST_CASE("FaceAnalysis on real models agrees with onnxruntime + insightface processing",
          "[face][analysis][shared]") {
  if (!have_models()) {
    WARN("shared models/faces absent: real-model checks skipped");
    return;
  }
  for (const std::string det : {"scrfd_2.5g.onnx", "scrfd_500m.onnx"}) {
    // Recogniser first in sorted order, a second detector that must be ignored, a non-model file.
    const std::string other = det == "scrfd_2.5g.onnx" ? "scrfd_500m.onnx" : "scrfd_2.5g.onnx";
    ModelFolder folder({{"1_mobilefacenet.onnx", itest::shared_path("models/mobilefacenet_128d.onnx")},
                        {"2_" + det, itest::shared_path("models/" + det)},
                        {"3_" + other, itest::shared_path("models/" + other)},
                        {"README.md", itest::shared_path("models/README.md")}});
    const FaceAnalysis fa = FaceAnalysis::load(folder.path());
    REQUIRE(fa.models().size() == 3);
    CHECK(fa.models()[0].task == "recognition");
    CHECK(fa.models()[1].task == "detection");
    CHECK(fa.models()[1].used);
    CHECK(fa.models()[2].task == "detection");
    CHECK_FALSE(fa.models()[2].used);
    CHECK(fa.recognizer().input_size() == 112);
    CHECK(fa.recognizer().normalization().mean == 127.5f);

    double worst_px = 0.0;
    double worst_score = 0.0;
    double worst_cos = 1.0;
    for (const auto& [name, photo] : goldens().at("photos").items()) {
      const std::string path = itest::shared_path("faces/" + name);
      if (path.empty()) continue;
      const auto& g = photo.at("detectors").at(det);
      const Image img = load_image(path);
      INFO(det << " / " << name);
      if (!g.contains("selected")) {
        // The coffee image: no face at any size 640..192.
        const ImageFaces r = fa.extract({img}).front();
        CHECK_FALSE(r.det_size.has_value());
        CHECK(r.faces.empty());
        CHECK_FALSE(r.selected.has_value());
        CHECK(r.embedding.empty());
        REQUIRE_THROWS_WITH(fa.extract_one(img, kComfyDetSizes, name),
                            Catch::Contains("no face detected at any detection size (640,576,512,448,384,320,256,192)"));
        continue;
      }
      const ImageFaces r = fa.extract_one(img, kComfyDetSizes, name);
      const auto& sel = g.at("selected");
      REQUIRE(r.det_size == sel.at("det_size").get<int>());
      const auto& want = g.at("sizes").at(std::to_string(*r.det_size));
      REQUIRE(r.faces.size() == want.at("bbox").size());
      REQUIRE(r.selected == sel.at("index").get<std::size_t>());
      for (std::size_t i = 0; i < r.faces.size(); ++i) {
        for (std::size_t k = 0; k < 4; ++k) {
          const double d = std::abs(r.faces[i].bbox[k] - want.at("bbox")[i][k].get<double>());
          worst_px = std::max(worst_px, d);
          CHECK(d <= 0.01);
        }
        for (std::size_t k = 0; k < 10; ++k) {
          const double d = std::abs(r.faces[i].kps[k] - want.at("kps")[i][k].get<double>());
          worst_px = std::max(worst_px, d);
          CHECK(d <= 0.01);
        }
        const double ds = std::abs(r.faces[i].score - want.at("score")[i].get<double>());
        worst_score = std::max(worst_score, ds);
        CHECK(ds <= 1e-5);
      }
      const std::vector<float> golden_emb = sel.at("embedding").get<std::vector<float>>();
      REQUIRE(r.embedding.size() == golden_emb.size());
      const double cos = cosine_similarity(r.embedding, golden_emb);
      worst_cos = std::min(worst_cos, cos);
      CHECK(cos >= 0.99999);
    }
    // Bounds: JPEGs decode exactly like cv2/PIL (libjpeg-turbo), so what is left is our executor's
    // summation order vs onnxruntime's; measured about 2e-4 px, 1.2e-7 score, 1 - cos 1e-6.
    WARN(det << ": worst box/keypoint difference " << worst_px << " px, score " << worst_score
             << ", worst embedding 1 - cosine " << 1.0 - worst_cos << " (vs onnxruntime + OpenCV)");
  }
}

TEST_CASE("Face detection at every size 640..192 matches the reference face count",
          "[face][analysis][shared]") {
  if (!have_models()) {
    WARN("shared models/faces absent: skipped");
    return;
  }
  ModelFolder folder({{"det.onnx", itest::shared_path("models/scrfd_2.5g.onnx")},
                      {"rec.onnx", itest::shared_path("models/mobilefacenet_128d.onnx")}});
  const FaceAnalysis fa = FaceAnalysis::load(folder.path());
  for (const std::string name : {"astronaut.png", "kaifu_resize.png"}) {
    const std::string path = itest::shared_path("faces/" + name);
    if (path.empty()) continue;
    const Image img = load_image(path);
    for (int s : kComfyDetSizes) {
      const auto& want = goldens().at("photos").at(name).at("detectors").at("scrfd_2.5g.onnx")
                             .at("sizes").at(std::to_string(s));
      const auto faces = fa.detect(img, s);
      INFO(name << " at " << s);
      REQUIRE(faces.size() == want.at("bbox").size());
      for (std::size_t i = 0; i < faces.size(); ++i) {
        for (std::size_t k = 0; k < 4; ++k) {
          CHECK(std::abs(faces[i].bbox[k] - want.at("bbox")[i][k].get<double>()) <= 0.5);
        }
      }
    }
  }
}

TEST_CASE("Model folders without a detector or recogniser are clear errors", "[face][analysis]") {
  REQUIRE_THROWS_WITH(FaceAnalysis::load("/nonexistent/antelopev2"), Catch::Contains("not found"));
  {
    ModelFolder empty({});
    REQUIRE_THROWS_WITH(FaceAnalysis::load(empty.path()),
                        Catch::Contains("no detection model") && Catch::Contains("found: no .onnx files"));
  }
  const std::string rec = itest::shared_path("models/mobilefacenet_128d.onnx");
  const std::string det = itest::shared_path("models/scrfd_500m.onnx");
  if (rec.empty() || det.empty()) {
    WARN("shared models absent: folder routing errors skipped");
    return;
  }
  {
    ModelFolder only_rec({{"glintr100.onnx", rec}});
    REQUIRE_THROWS_WITH(FaceAnalysis::load(only_rec.path()),
                        Catch::Contains("no detection model") && Catch::Contains("glintr100.onnx (recognition)"));
  }
  {
    ModelFolder only_det({{"scrfd.onnx", det}});
    REQUIRE_THROWS_WITH(FaceAnalysis::load(only_det.path()),
                        Catch::Contains("no recognition model") && Catch::Contains("scrfd.onnx (detection)"));
  }
}

TEST_CASE("instantid embed: JSON, safetensors, exit codes", "[face][embed][shared]") {
  const instantid::cli::Command* embed = nullptr;
  for (const auto& c : instantid::cli::registry()) {
    if (c.name == "embed") embed = &c;
  }
  REQUIRE(embed != nullptr);
  auto run = [&](const std::vector<std::string>& args, std::string* out_text = nullptr,
                 std::string* err_text = nullptr) {
    std::ostringstream out;
    std::ostringstream err;
    const int code = embed->run(args, out, err);
    if (out_text) *out_text = out.str();
    if (err_text) *err_text = err.str();
    return code;
  };
  std::string err;
  CHECK(run({}, nullptr, &err) == instantid::cli::kExitUsage);
  CHECK(err.find("--models DIR is required") != std::string::npos);
  CHECK(run({"--models", "x"}, nullptr, &err) == instantid::cli::kExitUsage);
  CHECK(run({"--models", "x", "--device", "tpu", "a.png"}, nullptr, &err) == instantid::cli::kExitUsage);
  CHECK(err.find("--device: got 'tpu'") != std::string::npos);
  CHECK(run({"--models", "x", "--det-size", "100", "a.png"}, nullptr, &err) == instantid::cli::kExitUsage);
  CHECK(run({"--models", "x", "--bogus", "a.png"}, nullptr, &err) == instantid::cli::kExitUsage);
  CHECK(run({"--models", "/nonexistent", "a.png"}, nullptr, &err) == instantid::cli::kExitFailure);
  CHECK(err.find("not found") != std::string::npos);
  std::string help;
  CHECK(run({"--help"}, &help) == instantid::cli::kExitOk);
  CHECK(help.find("usage: instantid embed") != std::string::npos);

  if (!have_models() || itest::shared_path("faces/no_face_coffee.png").empty()) {
    WARN("shared models/faces absent: embed run skipped");
    return;
  }
  ModelFolder folder({{"det.onnx", itest::shared_path("models/scrfd_2.5g.onnx")},
                      {"rec.onnx", itest::shared_path("models/mobilefacenet_128d.onnx")}});
  const std::string astronaut = itest::shared_path("faces/astronaut.png");
  const std::string coffee = itest::shared_path("faces/no_face_coffee.png");
  char tmpl[] = "/tmp/instantid_embed_XXXXXX";
  const char* dir = ::mkdtemp(tmpl);
  REQUIRE(dir != nullptr);
  const std::string out_file = std::string(dir) + "/embeds.safetensors";
  std::string out;
  const int code = run({"--models", folder.path(), "--json", "--out", out_file, astronaut, coffee}, &out, &err);
  CHECK(code == instantid::cli::kExitNoFace);
  CHECK(err.find("no_face_coffee.png: no face detected") != std::string::npos);
  const auto j = nlohmann::json::parse(out);
  REQUIRE(j.at("images").size() == 2);
  const auto& a = j.at("images")[0];
  CHECK(a.at("width") == 512);
  CHECK(a.at("det_size") == 640);
  REQUIRE(a.at("faces").size() == 1);
  CHECK(a.at("faces")[0].at("kps").size() == 5);
  CHECK(a.at("selected") == 0);
  const auto emb = a.at("embedding").get<std::vector<float>>();
  REQUIRE(emb.size() == 128);
  const auto& c = j.at("images")[1];
  CHECK(c.at("det_size").is_null());
  CHECK(c.at("selected").is_null());
  CHECK(c.at("embedding").is_null());
  CHECK(c.at("faces").empty());

  // safetensors: [8-byte LE header length][JSON][data]
  const std::string bytes = itest::read_file(out_file);
  REQUIRE(bytes.size() > 8);
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)])) << (8 * i);
  REQUIRE(n % 8 == 0);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  CHECK(header.at("embeds").at("dtype") == "F32");
  CHECK(header.at("embeds").at("shape") == nlohmann::json::array({1, 128}));
  REQUIRE(bytes.size() == 8 + n + 128 * 4);
  std::vector<float> stored(128);
  std::memcpy(stored.data(), bytes.data() + 8 + n, 128 * 4);
  CHECK(stored == emb);
  std::remove(out_file.c_str());
  ::rmdir(dir);

  // Single image with a face: exit 0; plain text output.
  CHECK(run({"--models", folder.path(), "--det-size", "320", astronaut}, &out, &err) == instantid::cli::kExitOk);
  CHECK(out.find("at det size 320") != std::string::npos);
}
