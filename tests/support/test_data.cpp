#include "support/test_data.hpp"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#ifdef INSTANTID_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

namespace instantid::test {

namespace {
std::string env_or(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return (value != nullptr && *value != '\0') ? std::string(value) : std::string(fallback);
}
}  // namespace

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string data_path(const std::string& relative) {
  return env_or("INSTANTID_TEST_DATA", INSTANTID_TEST_DATA_DIR) + "/" + relative;
}

std::string shared_dir() {
  std::string dir = env_or("INSTANTID_SHARED_DIR", INSTANTID_DEFAULT_SHARED_DIR);
  return file_exists(dir) ? dir : std::string();
}

std::string shared_path(const std::string& relative) {
  const std::string dir = shared_dir();
  if (dir.empty()) return {};
  const std::string path = dir + "/" + relative;
  return file_exists(path) ? path : std::string();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

bool gpu_available() {
#ifdef INSTANTID_HAS_CUDA
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
#else
  return false;
#endif
}

}  // namespace instantid::test
