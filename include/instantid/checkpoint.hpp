#pragma once
// Checkpoint readers (spec instantid_patch.md §1): safetensors and PyTorch `torch.save` zip
// archives, read without executing anything. The readers only describe tensors (name, dtype,
// shape, strides, bytes) inside a buffer they do not copy; InstantIDModel (model.hpp) converts
// them to float32. Every parsing entry point also works on an in-memory byte buffer, so fuzzers
// and tests can drive them without files. docs/formats.md describes what is accepted.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "instantid/tensor.hpp"

namespace instantid {

// Bounds on what a reader accepts; anything beyond them is refused with an Error naming the
// limit, before memory is allocated for it. Defaults fit the 1.7 GB InstantID checkpoint with a
// wide margin.
struct ReaderLimits {
  std::uint64_t max_header_bytes = 100ull << 20;  // safetensors JSON header (as safetensors-rs)
  std::uint64_t max_tensors = 1u << 16;           // tensors per file
  std::int64_t max_tensor_elements = 1ll << 34;   // elements of one tensor (64 GiB of f32)
  int max_ndim = 8;                               // dimensions of one tensor
  std::uint64_t max_zip_entries = 1u << 17;       // entries of a torch zip archive
  std::uint64_t max_pickle_bytes = 64ull << 20;   // size of <archive>/data.pkl
  int max_pickle_depth = 32;                      // nesting of containers in the pickle
  std::uint64_t max_pickle_stack = 1u << 20;      // pickle VM stack entries
  std::uint64_t max_pickle_memo = 1u << 20;       // pickle memo entries
  std::uint64_t max_pickle_objects = 1u << 22;    // objects built + references held by containers
  std::uint64_t max_string_bytes = 1u << 16;      // one pickle string, a name or a zip entry name
};

enum class CheckpointFormat : std::uint8_t { kSafetensors, kTorchZip };
const char* checkpoint_format_name(CheckpointFormat format);  // "safetensors", "torch zip"

// A non-owning read-only byte range.
struct ByteSpan {
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
};

// One tensor inside a checkpoint buffer. `data` points at element 0 (storage offset applied);
// element (i0, i1, ...) is at data + dtype_size * sum(i_k * strides[k]). The readers guarantee
// every reachable element lies within the buffer. The pointer may be unaligned.
struct CheckpointTensor {
  std::string name;  // flat: "image_proj.latents", "ip_adapter.1.to_k_ip.weight"
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;  // in elements; row-major contiguous for safetensors
  const std::uint8_t* data = nullptr;

  std::int64_t numel() const;
  bool is_contiguous() const;
  // Copies the tensor into a contiguous float32 HostTensor (fp16/bf16 converted exactly,
  // non-contiguous strides materialised). Throws Error naming the tensor if a value is NaN or
  // infinite and `reject_non_finite` is set.
  HostTensor to_float(bool reject_non_finite = true) const;
};

// ---- Parsers over in-memory buffers (the buffer must outlive the returned tensors) ----

// Detects the format by content: "PK\x03\x04" → torch zip, otherwise safetensors.
CheckpointFormat detect_checkpoint_format(ByteSpan bytes);

// Safetensors: 8-byte little-endian header length N (N <= max_header_bytes, 8 + N <= size), a
// JSON object {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}, then the
// data section. Offsets must be consistent with dtype × shape, inside the data section and
// without overlaps or holes. Tensors are returned in file order of their offsets.
std::vector<CheckpointTensor> parse_safetensors(ByteSpan bytes, const ReaderLimits& limits = {});

// One entry of a zip archive (stored entries only).
struct ZipEntry {
  std::string name;
  std::uint64_t data_offset = 0;  // of the entry's bytes within the archive
  std::uint64_t size = 0;
};

// Parses the end-of-central-directory record (ZIP64 too), the central directory and each local
// header. Compressed or encrypted entries, entries overlapping each other or the directory, and
// sizes past the end are errors naming the entry.
std::vector<ZipEntry> read_zip_directory(ByteSpan bytes, const ReaderLimits& limits = {});

// A tensor as the pickle describes it, before its storage is resolved.
struct PickledTensor {
  std::string name;           // flat name (nested dict keys joined by '.')
  std::string storage_key;    // archive entry <archive>/data/<storage_key>
  DType dtype = DType::kF32;  // from FloatStorage / HalfStorage / BFloat16Storage
  std::int64_t storage_numel = 0;
  std::int64_t storage_offset = 0;  // in elements
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;
};

// Interprets a protocol-2 pickle as torch.save writes it for a (nested) dict of tensors, with a
// fixed set of opcodes and globals (collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch.{Float,Half,BFloat16}Storage, torch._utils._rebuild_parameter). Nothing is executed;
// anything else is an Error naming the opcode or global and its byte position.
std::vector<PickledTensor> parse_torch_pickle(ByteSpan pickle, const ReaderLimits& limits = {});

// A torch.save zip archive: the directory, the pickle (<archive>/data.pkl) and each tensor's
// storage (<archive>/data/<key>), with offset, size and strides checked against the storage.
std::vector<CheckpointTensor> read_torch_zip(ByteSpan bytes, const ReaderLimits& limits = {});

// Either format, detected by content.
std::vector<CheckpointTensor> parse_checkpoint(ByteSpan bytes, const ReaderLimits& limits = {});

// ---- Files ----

// An opened checkpoint: the file memory-mapped read-only (or a byte buffer it owns) and its
// tensors, which point into the mapping and stay valid as long as this object lives.
class CheckpointFile {
 public:
  // Maps `path` and parses it (format by content). Errors name the path.
  static CheckpointFile open(const std::string& path, const ReaderLimits& limits = {});
  // Parses a copy of `bytes` held by this object; `source` names it in errors.
  static CheckpointFile from_bytes(std::vector<std::uint8_t> bytes, const ReaderLimits& limits = {},
                                   const std::string& source = "memory");

  CheckpointFormat format() const { return format_; }
  const std::string& source() const { return source_; }
  std::uint64_t file_bytes() const { return bytes_.size; }
  const std::vector<CheckpointTensor>& tensors() const { return tensors_; }
  // By flat name, or nullptr.
  const CheckpointTensor* find(const std::string& name) const;

 private:
  std::shared_ptr<const void> owner_;  // keeps the mapping / buffer alive
  ByteSpan bytes_;
  CheckpointFormat format_ = CheckpointFormat::kSafetensors;
  std::string source_;
  std::vector<CheckpointTensor> tensors_;
};

}  // namespace instantid
