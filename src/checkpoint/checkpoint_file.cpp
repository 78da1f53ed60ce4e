#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <utility>

#include "instantid/checkpoint.hpp"
#include "instantid/error.hpp"

namespace instantid {

const char* checkpoint_format_name(CheckpointFormat format) {
  return format == CheckpointFormat::kTorchZip ? "torch zip" : "safetensors";
}

std::int64_t CheckpointTensor::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;  // the readers bound the product
  return n;
}

bool CheckpointTensor::is_contiguous() const {
  std::int64_t expected = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

namespace {

const char* non_finite_name(float v) { return std::isnan(v) ? "NaN" : "Inf"; }

[[noreturn]] void throw_non_finite(const std::string& name, std::int64_t index, float value) {
  throw Error(make_message("tensor \"", name, "\": value at flat index ", index, " is ",
                           non_finite_name(value), ", expected finite weights"));
}

// Converts n contiguous elements of `dtype` at src into dst.
void convert_run(const std::uint8_t* src, DType dtype, std::int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<std::size_t>(n) * 4);
      break;
    case DType::kF16:
      for (std::int64_t i = 0; i < n; ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, src + 2 * i, 2);
        dst[i] = half_to_float(bits);
      }
      break;
    case DType::kBF16:
      for (std::int64_t i = 0; i < n; ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, src + 2 * i, 2);
        const std::uint32_t f = static_cast<std::uint32_t>(bits) << 16;
        std::memcpy(dst + i, &f, 4);
      }
      break;
  }
}

}  // namespace

HostTensor CheckpointTensor::to_float(bool reject_non_finite) const {
  const std::int64_t n = numel();
  std::vector<float> values(static_cast<std::size_t>(n));
  const std::size_t elem = dtype_size(dtype);
  if (is_contiguous()) {
    convert_run(data, dtype, n, values.data());
  } else if (n > 0) {
    // Materialise arbitrary (bounds-checked) strides: walk the index odometer, converting runs
    // along the last dimension.
    const std::size_t nd = shape.size();
    std::vector<std::int64_t> index(nd, 0);
    const std::int64_t inner = shape[nd - 1];
    const std::int64_t inner_stride = strides[nd - 1];
    std::int64_t out = 0;
    while (out < n) {
      std::int64_t offset = 0;
      for (std::size_t d = 0; d + 1 < nd; ++d) offset += index[d] * strides[d];
      for (std::int64_t i = 0; i < inner; ++i) {
        convert_run(data + static_cast<std::size_t>(offset + i * inner_stride) * elem, dtype, 1,
                    values.data() + out + i);
      }
      out += inner;
      for (std::size_t d = nd - 1; d-- > 0;) {
        if (++index[d] < shape[d]) break;
        index[d] = 0;
      }
    }
  }
  if (reject_non_finite) {
    const float* v = values.data();
    for (std::int64_t i = 0; i < n; ++i) {
      // Exponent all ones ⇔ NaN or Inf; integer test keeps this vectorisable.
      std::uint32_t bits;
      std::memcpy(&bits, v + i, 4);
      if ((bits & 0x7f800000u) == 0x7f800000u) throw_non_finite(name, i, v[i]);
    }
  }
  return HostTensor(shape, std::move(values));
}

CheckpointFormat detect_checkpoint_format(ByteSpan bytes) {
  static const std::uint8_t kZipMagic[4] = {'P', 'K', 3, 4};
  if (bytes.size >= 4 && std::memcmp(bytes.data, kZipMagic, 4) == 0) {
    return CheckpointFormat::kTorchZip;
  }
  return CheckpointFormat::kSafetensors;
}

std::vector<CheckpointTensor> parse_checkpoint(ByteSpan bytes, const ReaderLimits& limits) {
  return detect_checkpoint_format(bytes) == CheckpointFormat::kTorchZip
             ? read_torch_zip(bytes, limits)
             : parse_safetensors(bytes, limits);
}

namespace {

struct Mapping {
  void* address = nullptr;
  std::size_t size = 0;
  ~Mapping() {
    if (address != nullptr) ::munmap(address, size);
  }
};

std::string errno_text() { return std::strerror(errno); }

}  // namespace

CheckpointFile CheckpointFile::open(const std::string& path, const ReaderLimits& limits) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(make_message(path, ": cannot open checkpoint: ", errno_text()));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    throw Error(make_message(path, ": cannot stat checkpoint: ", why));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(make_message(path, ": checkpoint is not a regular file"));
  }
  if (st.st_size == 0) {
    ::close(fd);
    throw Error(make_message(path, ": checkpoint file is empty: got 0 bytes, expected a "
                             "safetensors or torch.save file"));
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<std::size_t>(st.st_size);
  // MAP_POPULATE: the whole file is read by load() anyway; one prefault beats a fault per page.
  void* address = ::mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
  const std::string why = errno_text();
  ::close(fd);
  if (address == MAP_FAILED) throw Error(make_message(path, ": cannot map checkpoint: ", why));
  mapping->address = address;

  CheckpointFile file;
  file.bytes_ = ByteSpan{static_cast<const std::uint8_t*>(address), mapping->size};
  file.owner_ = mapping;
  file.source_ = path;
  file.format_ = detect_checkpoint_format(file.bytes_);
  try {
    file.tensors_ = parse_checkpoint(file.bytes_, limits);
  } catch (const Error& e) {
    throw Error(make_message(path, ": ", e.what()));
  }
  return file;
}

CheckpointFile CheckpointFile::from_bytes(std::vector<std::uint8_t> bytes,
                                          const ReaderLimits& limits, const std::string& source) {
  auto owned = std::make_shared<std::vector<std::uint8_t>>(std::move(bytes));
  CheckpointFile file;
  file.bytes_ = ByteSpan{owned->data(), owned->size()};
  file.owner_ = owned;
  file.source_ = source;
  file.format_ = detect_checkpoint_format(file.bytes_);
  try {
    file.tensors_ = parse_checkpoint(file.bytes_, limits);
  } catch (const Error& e) {
    throw Error(make_message(source, ": ", e.what()));
  }
  return file;
}

const CheckpointTensor* CheckpointFile::find(const std::string& name) const {
  for (const CheckpointTensor& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

}  // namespace instantid
