// The `instantid` binary given hostile files: a checkpoint claiming 10^12 elements, a torch pickle
// nesting a million deep, embeddings holding NaN, an ONNX model with an absurd initializer. Each
// run must exit 1 with a message naming the file, and leave no output file (nor a temporary).

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <limits>
#include <string>
#include <sys/wait.h>
#include <vector>

#include "formats.hpp"
#include "support/test_data.hpp"

namespace fmt = instantid::test::formats;

namespace {

std::string temp_dir() {
  static std::string dir;
  if (dir.empty()) {
    char pattern[] = "/tmp/instantid_hostile_cli_XXXXXX";
    const char* made = ::mkdtemp(pattern);
    REQUIRE(made != nullptr);
    dir = made;
  }
  return dir;
}

std::string write(const std::string& name, const std::string& bytes) {
  const std::string path = temp_dir() + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

struct Result {
  int code = -1;
  std::string err;
};

Result run(const std::vector<std::string>& args) {
  auto quote = [](const std::string& s) { return "'" + s + "'"; };
  const std::string err_path = temp_dir() + "/stderr.txt";
  std::string command = quote(INSTANTID_CLI_PATH);
  for (const auto& a : args) command += " " + quote(a);
  command += " > /dev/null 2> " + quote(err_path);
  const int status = std::system(command.c_str());
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = instantid::test::read_file(err_path);
  return r;
}

int leftover_files(const std::string& prefix) {
  int count = 0;
  DIR* dir = ::opendir(temp_dir().c_str());
  if (dir == nullptr) return -1;
  while (const dirent* entry = ::readdir(dir)) {
    if (std::strncmp(entry->d_name, prefix.c_str(), prefix.size()) == 0) ++count;
  }
  ::closedir(dir);
  return count;
}

std::string good_embeds() {
  std::vector<float> values(64);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = 0.01f * static_cast<float>(i % 13);
  return fmt::safetensors({{"embeds", "F32", {1, 64}, fmt::float_bytes(values)}});
}

}  // namespace

TEST_CASE("cli: hostile input files exit 1, name the file, and leave no output", "[hostile]") {
  const std::string model = instantid::test::data_path("reference/model.safetensors");
  REQUIRE(instantid::test::file_exists(model));
  const std::string embeds = write("embeds.safetensors", good_embeds());
  const std::string out = temp_dir() + "/out.safetensors";

  // Control: the same command with good inputs writes `out`.
  Result r = run({"project", "--checkpoint", model, "--embeds", embeds, "--out", out});
  INFO(r.err);
  REQUIRE(r.code == 0);
  REQUIRE(instantid::test::file_exists(out));
  std::remove(out.c_str());

  std::vector<float> nan_values(64, 0.5f);
  nan_values[17] = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    const char* what;
    std::string checkpoint, embeds, expect;
  };
  const std::vector<Case> cases = {
      {"checkpoint claiming 10^12 elements",
       write("huge.safetensors",
             fmt::safetensors_raw(
                 R"({"image_proj.latents":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}})",
                 std::string(8, '\0'))),
       embeds, "max_tensor_elements"},
      {"torch pickle nesting a million deep",
       write("deep.bin", fmt::zip_stored({{"archive/data.pkl",
                                           "\x80\x02" + std::string(1000000, '(') + "."}})),
       embeds, "max_pickle_depth"},
      {"embeddings holding NaN", model,
       write("nan.safetensors",
             fmt::safetensors({{"embeds", "F32", {1, 64}, fmt::float_bytes(nan_values)}})),
       "nan.safetensors: tensor \"embeds\": value at flat index 17 is NaN"},
      {"embeddings file truncated", model,
       write("cut.safetensors", good_embeds().substr(0, 40)), "cut.safetensors"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    r = run({"project", "--checkpoint", c.checkpoint, "--embeds", c.embeds, "--out", out});
    INFO(r.err);
    CHECK(r.code == 1);
    CHECK(r.err.find("instantid project: error: ") == 0);
    CHECK(r.err.find(c.expect) != std::string::npos);
    CHECK_FALSE(instantid::test::file_exists(out));
    CHECK(leftover_files("out.safetensors") == 0);  // no out.safetensors.tmp-<pid> either
  }
}

TEST_CASE("cli: inspect refuses hostile files with a message", "[hostile]") {
  const std::vector<std::pair<std::string, std::string>> files = {
      {"lying.safetensors", fmt::safetensors_raw("{}", "", std::uint64_t{1} << 62)},
      {"lying.bin", fmt::zip_stored({{"archive/data.pkl", "\x80\x02}.", 0x7fffffffu}})},
      {"garbage.onnx", std::string("\x08\x07\x12\xff\xff\xff\xff\x0f", 8)},
  };
  for (const auto& [name, bytes] : files) {
    INFO(name);
    const Result r = run({"inspect", write(name, bytes)});
    INFO(r.err);
    CHECK(r.code == 1);
    CHECK(r.err.find(name) != std::string::npos);
  }
}
