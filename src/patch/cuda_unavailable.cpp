// Built instead of the CUDA backend when this build has none (src/patch/CMakeLists.txt).

#include "patch/backend.hpp"

namespace instantid {

bool cuda_available() { return false; }

namespace detail {

std::unique_ptr<PatchBackend> make_cuda_backend(const ModelLayout&, const BackendOptions&) {
  throw Error("backend: got cuda, expected cpu (this build has no CUDA backend)");
}

}  // namespace detail
}  // namespace instantid
