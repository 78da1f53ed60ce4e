#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <iterator>
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

}  // namespace

namespace {

// Reads element i of a contiguous run of `dtype` as float; random access so that
// std::vector::insert sizes the range once and constructs in place (no zero-fill pass).
class ConvertingIterator {
 public:
  using iterator_category = std::random_access_iterator_tag;
  using value_type = float;
  using difference_type = std::ptrdiff_t;
  using pointer = const float*;
  using reference = float;

  ConvertingIterator(const std::uint8_t* data, DType dtype, std::ptrdiff_t i)
      : data_(data), dtype_(dtype), i_(i) {}
  float operator*() const {
    if (dtype_ == DType::kF32) {
      float v;
      std::memcpy(&v, data_ + 4 * i_, 4);
      return v;
    }
    std::uint16_t bits;
    std::memcpy(&bits, data_ + 2 * i_, 2);
    if (dtype_ == DType::kF16) return half_to_float(bits);
    const std::uint32_t f = static_cast<std::uint32_t>(bits) << 16;
    float v;
    std::memcpy(&v, &f, 4);
    return v;
  }
  float operator[](std::ptrdiff_t k) const { return *(*this + k); }
  ConvertingIterator& operator++() {
    ++i_;
    return *this;
  }
  ConvertingIterator operator++(int) {
    ConvertingIterator t = *this;
    ++i_;
    return t;
  }
  ConvertingIterator& operator--() {
    --i_;
    return *this;
  }
  ConvertingIterator operator--(int) {
    ConvertingIterator t = *this;
    --i_;
    return t;
  }
  ConvertingIterator& operator+=(std::ptrdiff_t k) {
    i_ += k;
    return *this;
  }
  ConvertingIterator& operator-=(std::ptrdiff_t k) {
    i_ -= k;
    return *this;
  }
  ConvertingIterator operator+(std::ptrdiff_t k) const { return {data_, dtype_, i_ + k}; }
  ConvertingIterator operator-(std::ptrdiff_t k) const { return {data_, dtype_, i_ - k}; }
  std::ptrdiff_t operator-(const ConvertingIterator& o) const { return i_ - o.i_; }
  bool operator==(const ConvertingIterator& o) const { return i_ == o.i_; }
  bool operator!=(const ConvertingIterator& o) const { return i_ != o.i_; }
  bool operator<(const ConvertingIterator& o) const { return i_ < o.i_; }

 private:
  const std::uint8_t* data_;
  DType dtype_;
  std::ptrdiff_t i_;
};

// Appends n contiguous elements at src to out (capacity already reserved).
void append_run(const std::uint8_t* src, DType dtype, std::int64_t n, std::vector<float>& out) {
  if (dtype == DType::kF32 && reinterpret_cast<std::uintptr_t>(src) % alignof(float) == 0) {
    // Aligned fp32 (torch archives always, safetensors with the usual 8-byte header padding):
    // a plain copy. The mapping holds no objects, so reading it as float is well defined.
    const float* f = reinterpret_cast<const float*>(src);
    out.insert(out.end(), f, f + n);
  } else {
    out.insert(out.end(), ConvertingIterator(src, dtype, 0),
               ConvertingIterator(src, dtype, static_cast<std::ptrdiff_t>(n)));
  }
}

// Index of the first NaN/Inf in v[0, n), or -1. Integer test on the exponent, vectorisable.
std::int64_t first_non_finite(const float* v, std::int64_t n) {
  std::uint32_t any = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, v + i, 4);
    any |= static_cast<std::uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  if (any == 0) return -1;
  for (std::int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(v[i])) return i;
  }
  return -1;
}

// Asks the kernel to back a fresh allocation in one call rather than one fault per page (on a
// VM the faults dominate a 1.7 GB load). Best effort: older kernels refuse, which is harmless.
void prefault(void* p, std::size_t bytes) {
#ifdef __linux__
  constexpr std::size_t kPage = 4096;
  constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE (Linux 5.14)
  if (bytes < (1u << 20)) return;
  const std::uintptr_t begin = (reinterpret_cast<std::uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
  const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~(kPage - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, kPopulateWrite);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace

HostTensor CheckpointTensor::to_float(bool reject_non_finite) const {
  const std::int64_t n = numel();
  std::vector<float> values;
  values.reserve(static_cast<std::size_t>(n));
  prefault(values.data(), static_cast<std::size_t>(n) * sizeof(float));
  const std::size_t elem = dtype_size(dtype);
  // Convert in chunks so the finiteness check reads data still in cache.
  constexpr std::int64_t kChunk = 16384;
  if (is_contiguous()) {
    for (std::int64_t done = 0; done < n; done += kChunk) {
      const std::int64_t k = std::min(kChunk, n - done);
      append_run(data + static_cast<std::size_t>(done) * elem, dtype, k, values);
      if (reject_non_finite) {
        const std::int64_t bad = first_non_finite(values.data() + done, k);
        if (bad >= 0)
          throw_non_finite(name, done + bad, values[static_cast<std::size_t>(done + bad)]);
      }
    }
  } else if (n > 0) {
    // Materialise arbitrary (bounds-checked) strides: walk the index odometer, one element at a
    // time (only unusual files take this path).
    const std::size_t nd = shape.size();
    std::vector<std::int64_t> index(nd, 0);
    for (std::int64_t out = 0; out < n; ++out) {
      std::int64_t offset = 0;
      for (std::size_t d = 0; d < nd; ++d) offset += index[d] * strides[d];
      append_run(data + static_cast<std::size_t>(offset) * elem, dtype, 1, values);
      for (std::size_t d = nd; d-- > 0;) {
        if (++index[d] < shape[d]) break;
        index[d] = 0;
      }
    }
    if (reject_non_finite) {
      const std::int64_t bad = first_non_finite(values.data(), n);
      if (bad >= 0) throw_non_finite(name, bad, values[static_cast<std::size_t>(bad)]);
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
  if (detect_checkpoint_format(bytes) == CheckpointFormat::kTorchZip) {
    return read_torch_zip(bytes, limits);
  }
  try {
    return parse_safetensors(bytes, limits);
  } catch (const Error& e) {
    // A bare pickle (PROTO 2..5) is torch's legacy pre-1.6 format: say so rather than only
    // reporting a nonsensical safetensors header.
    if (bytes.size >= 2 && bytes.data[0] == 0x80 && bytes.data[1] >= 2 && bytes.data[1] <= 5) {
      throw Error(make_message(e.what(),
                               " (the file starts like a bare pickle: torch's legacy "
                               "pre-1.6 format is not supported; re-save it with a "
                               "current torch.save or as .safetensors)"));
    }
    throw;
  }
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
    throw Error(make_message(path,
                             ": checkpoint file is empty: got 0 bytes, expected a "
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
