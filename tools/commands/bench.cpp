// instantid bench: runs the CUDA benchmarks (the `bench_cuda` program of benchmarks/) and lets
// its JSON rows through unchanged. Without a GPU it fails with a clear message instead.

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "commands/args.hpp"
#include "commands/device_buffer.hpp"
#include "commands/registry.hpp"
#include "instantid/error.hpp"
#include "instantid/patch.hpp"

namespace instantid::cli {
namespace {

std::string executable_dir() {
  std::vector<char> buffer(4096);
  const ssize_t length = ::readlink("/proc/self/exe", buffer.data(), buffer.size() - 1);
  if (length <= 0) return ".";
  std::string path(buffer.data(), static_cast<std::size_t>(length));
  const std::size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// Where bench_cuda may be: $INSTANTID_BENCH_CUDA, beside this binary (installed), or in the
// build tree (build/tools/instantid → build/benchmarks/.../bench_cuda).
std::vector<std::string> candidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("INSTANTID_BENCH_CUDA"); env != nullptr && *env != '\0') {
    paths.push_back(env);
  }
  const std::string dir = executable_dir();
  paths.push_back(dir + "/bench_cuda");
  paths.push_back(dir + "/" INSTANTID_BENCH_RELATIVE "/cuda/bench_cuda");
  paths.push_back(dir + "/" INSTANTID_BENCH_RELATIVE "/bench_cuda");
  return paths;
}

int run_bench(const std::vector<std::string>& args, std::ostream& out, std::ostream&) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    out << "usage: instantid bench [arguments of bench_cuda]\n\n"
           "Runs the CUDA benchmarks (bench_cuda) and prints their JSON rows: card name, shapes,\n"
           "bytes, GB/s and the peer measured in the same run. Needs a CUDA device; arguments are\n"
           "passed to bench_cuda unchanged (`instantid bench --help-bench` shows its own help).\n"
           "bench_cuda is looked for in $INSTANTID_BENCH_CUDA, beside this binary, then in\n"
           "../benchmarks/cuda/ and ../benchmarks/ relative to it.\n";
    return kExitOk;
  }
  if (!cuda_available()) {
    throw Error(make_message(
        "CUDA device: got none (this instantid was built ", cli_has_cuda() ? "with" : "without",
        " CUDA", cli_has_cuda() ? ", but no device is visible" : "",
        "), expected a visible NVIDIA GPU; the benchmarks only run on the GPU"));
  }
  std::string found;
  for (const std::string& path : candidates()) {
    if (::access(path.c_str(), X_OK) == 0) {
      found = path;
      break;
    }
  }
  if (found.empty()) {
    std::string tried;
    for (const std::string& path : candidates()) tried += "\n  " + path;
    throw Error("bench_cuda: got no such program, expected it at one of:" + tried +
                "\n(build the `bench_cuda` target, or set INSTANTID_BENCH_CUDA)");
  }
  std::vector<std::string> forwarded;
  for (const std::string& arg : args) forwarded.push_back(arg == "--help-bench" ? "--help" : arg);
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(found.c_str()));
  for (std::string& arg : forwarded) argv.push_back(arg.data());
  argv.push_back(nullptr);
  out.flush();
  ::execv(found.c_str(), argv.data());
  throw Error(make_message(found, ": cannot run: ", std::strerror(errno)));
}

const Registrar kRegistrar(Command{"bench", "run the CUDA benchmarks, print JSON (needs a GPU)",
                                   run_bench});

}  // namespace
}  // namespace instantid::cli
