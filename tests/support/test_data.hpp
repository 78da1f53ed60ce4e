#pragma once
// Where tests find their data, and how they say it is missing.

#include <string>

namespace instantid::test {

// Committed fixtures (tests/data), or $INSTANTID_TEST_DATA.
std::string data_path(const std::string& relative);
// ../shared beside the project, or $INSTANTID_SHARED_DIR; "" when absent.
std::string shared_dir();
// Path to a file under shared/; "" (and a WARN naming the variable) when absent.
std::string shared_path(const std::string& relative);
bool file_exists(const std::string& path);
std::string read_file(const std::string& path);

// True when a CUDA device is visible to this process.
bool gpu_available();

}  // namespace instantid::test
