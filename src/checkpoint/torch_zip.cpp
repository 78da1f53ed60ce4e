#include <algorithm>
#include <map>
#include <string>

#include "bytes.hpp"
#include "instantid/checkpoint.hpp"
#include "instantid/error.hpp"

namespace instantid {

using namespace checkpoint_detail;

namespace {

constexpr std::uint32_t kLocalSig = 0x04034b50;
constexpr std::uint32_t kCentralSig = 0x02014b50;
constexpr std::uint32_t kEndSig = 0x06054b50;
constexpr std::uint32_t kEnd64Sig = 0x06064b50;
constexpr std::uint32_t kEnd64LocatorSig = 0x07064b50;
constexpr std::size_t kEndSize = 22;
constexpr std::size_t kEnd64LocatorSize = 20;
constexpr std::size_t kEnd64Size = 56;
constexpr std::size_t kCentralSize = 46;
constexpr std::size_t kLocalSize = 30;

struct Directory {
  std::uint64_t entries = 0;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::uint64_t end_record = 0;  // where the directory must end (start of the end records)
};

Directory find_directory(ByteSpan b) {
  if (b.size < kEndSize) {
    throw Error(make_message("zip: file too short: got ", b.size,
                             " bytes, expected an end-of-central-directory record (22 bytes)"));
  }
  // The end record sits at the end, followed only by its comment (at most 65535 bytes).
  std::size_t pos = b.size - kEndSize;
  const std::size_t lowest = b.size > kEndSize + 65535 ? b.size - kEndSize - 65535 : 0;
  for (;;) {
    if (read_u32(b.data + pos) == kEndSig &&
        pos + kEndSize + read_u16(b.data + pos + 20) == b.size) {
      break;
    }
    if (pos == lowest) {
      throw Error(
          "zip: no end-of-central-directory record found: the file is truncated or "
          "not a zip archive");
    }
    --pos;
  }
  const std::uint8_t* e = b.data + pos;
  Directory dir;
  dir.entries = read_u16(e + 10);
  dir.size = read_u32(e + 12);
  dir.offset = read_u32(e + 16);
  dir.end_record = pos;
  if (read_u16(e + 4) != 0 || read_u16(e + 6) != 0 || read_u16(e + 8) != read_u16(e + 10)) {
    throw Error("zip: multi-disk archives are not supported, expected a single-file archive");
  }
  if (pos >= kEnd64LocatorSize && read_u32(b.data + pos - kEnd64LocatorSize) == kEnd64LocatorSig) {
    // ZIP64 (torch.save always writes it): the 64-bit record holds the real values.
    const std::uint8_t* loc = b.data + pos - kEnd64LocatorSize;
    const std::uint64_t off64 = read_u64(loc + 8);
    if (read_u32(loc + 4) != 0 || read_u32(loc + 16) > 1) {
      throw Error("zip: multi-disk ZIP64 archives are not supported");
    }
    if (off64 > pos - kEnd64LocatorSize || pos - kEnd64LocatorSize - off64 < kEnd64Size) {
      throw Error(make_message("zip: ZIP64 end record offset ", off64,
                               " is out of range, expected below ", pos - kEnd64LocatorSize));
    }
    const std::uint8_t* e64 = b.data + off64;
    if (read_u32(e64) != kEnd64Sig) {
      throw Error(make_message("zip: no ZIP64 end record at offset ", off64));
    }
    if (read_u32(e64 + 16) != 0 || read_u32(e64 + 20) != 0 ||
        read_u64(e64 + 24) != read_u64(e64 + 32)) {
      throw Error("zip: multi-disk archives are not supported, expected a single-file archive");
    }
    dir.entries = read_u64(e64 + 32);
    dir.size = read_u64(e64 + 40);
    dir.offset = read_u64(e64 + 48);
    dir.end_record = off64;
  }
  std::uint64_t dir_end = 0;
  if (!checked_add(dir.offset, dir.size, &dir_end) || dir_end > dir.end_record) {
    throw Error(make_message("zip: central directory [", dir.offset, ", +", dir.size,
                             ") runs past its end record at ", dir.end_record,
                             ": the file is truncated or corrupt"));
  }
  return dir;
}

}  // namespace

std::vector<ZipEntry> read_zip_directory(ByteSpan b, const ReaderLimits& limits) {
  const Directory dir = find_directory(b);
  if (dir.entries > limits.max_zip_entries) {
    throw Error(make_message("zip: ", dir.entries, " entries exceed the limit max_zip_entries = ",
                             limits.max_zip_entries));
  }
  if (dir.entries > dir.size / kCentralSize) {
    throw Error(make_message("zip: ", dir.entries, " entries cannot fit a central directory of ",
                             dir.size, " bytes"));
  }
  struct Span {
    std::uint64_t begin, end;
    std::size_t index;
  };
  std::vector<ZipEntry> entries;
  std::vector<Span> spans;
  entries.reserve(dir.entries);
  std::map<std::string, std::size_t> seen;
  std::uint64_t p = dir.offset;
  const std::uint64_t dir_end = dir.offset + dir.size;
  for (std::uint64_t i = 0; i < dir.entries; ++i) {
    if (dir_end - p < kCentralSize || read_u32(b.data + p) != kCentralSig) {
      throw Error(make_message("zip: central directory entry ", i, " at offset ", p,
                               " is truncated or has a bad signature"));
    }
    const std::uint8_t* c = b.data + p;
    const std::uint16_t flags = read_u16(c + 8);
    const std::uint16_t method = read_u16(c + 10);
    std::uint64_t csize = read_u32(c + 20);
    std::uint64_t usize = read_u32(c + 24);
    const std::uint16_t name_len = read_u16(c + 28);
    const std::uint16_t extra_len = read_u16(c + 30);
    const std::uint16_t comment_len = read_u16(c + 32);
    std::uint64_t local = read_u32(c + 42);
    const std::uint64_t record = kCentralSize + name_len + extra_len + comment_len;
    if (dir_end - p < record) {
      throw Error(make_message("zip: central directory entry ", i, " at offset ", p,
                               " runs past the directory"));
    }
    if (name_len > limits.max_string_bytes) {
      throw Error(
          make_message("zip: entry name of ", name_len,
                       " bytes exceeds the limit max_string_bytes = ", limits.max_string_bytes));
    }
    ZipEntry entry;
    entry.name.assign(reinterpret_cast<const char*>(c + kCentralSize), name_len);
    // ZIP64 extended information: 8-byte values for the fields saturated at 0xFFFFFFFF, in order.
    const std::uint8_t* x = c + kCentralSize + name_len;
    const std::uint8_t* x_end = x + extra_len;
    while (x_end - x >= 4) {
      const std::uint16_t id = read_u16(x);
      const std::uint16_t len = read_u16(x + 2);
      if (x_end - x - 4 < len) break;
      if (id == 0x0001) {
        const std::uint8_t* f = x + 4;
        const std::uint8_t* f_end = f + len;
        for (std::uint64_t* field : {&usize, &csize, &local}) {
          if (*field != 0xffffffffu) continue;
          if (f_end - f < 8) {
            throw Error(
                make_message("zip: entry \"", entry.name, "\": ZIP64 extra field too short"));
          }
          *field = read_u64(f);
          f += 8;
        }
      }
      x += 4 + len;
    }
    if ((flags & 0x1) != 0) {
      throw Error(make_message("zip: entry \"", entry.name,
                               "\" is encrypted, expected plain stored entries"));
    }
    if (method != 0) {
      throw Error(make_message("zip: entry \"", entry.name, "\" is compressed (method ", method,
                               "), expected stored entries (method 0) as torch.save writes"));
    }
    if (csize != usize) {
      throw Error(make_message("zip: stored entry \"", entry.name, "\": compressed size ", csize,
                               " differs from size ", usize));
    }
    if (local > dir.offset || dir.offset - local < kLocalSize ||
        read_u32(b.data + local) != kLocalSig) {
      throw Error(make_message("zip: entry \"", entry.name, "\": no local header at offset ", local,
                               " (directory at ", dir.offset, ")"));
    }
    const std::uint8_t* l = b.data + local;
    const std::uint16_t l_name_len = read_u16(l + 26);
    const std::uint16_t l_extra_len = read_u16(l + 28);
    const std::uint64_t data_begin = local + kLocalSize + l_name_len + l_extra_len;
    std::uint64_t data_end = 0;
    if (data_begin > dir.offset || !checked_add(data_begin, usize, &data_end) ||
        data_end > dir.offset) {
      throw Error(make_message("zip: entry \"", entry.name, "\" (", usize, " bytes at offset ",
                               data_begin, ") runs past the central directory at ", dir.offset,
                               ": the file is truncated or corrupt"));
    }
    if (l_name_len != name_len || std::memcmp(l + kLocalSize, c + kCentralSize, name_len) != 0) {
      throw Error(
          make_message("zip: entry \"", entry.name, "\": local header names a different file"));
    }
    if (!seen.emplace(entry.name, i).second) {
      throw Error(make_message("zip: entry \"", entry.name, "\" appears twice"));
    }
    entry.data_offset = data_begin;
    entry.size = usize;
    spans.push_back(Span{local, data_end, entries.size()});
    entries.push_back(std::move(entry));
    p += record;
  }
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b2) { return a.begin < b2.begin; });
  for (std::size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].begin < spans[i - 1].end) {
      throw Error(make_message("zip: entries \"", entries[spans[i - 1].index].name, "\" and \"",
                               entries[spans[i].index].name, "\" overlap"));
    }
  }
  return entries;
}

std::vector<CheckpointTensor> read_torch_zip(ByteSpan b, const ReaderLimits& limits) {
  const std::vector<ZipEntry> entries = read_zip_directory(b, limits);
  std::map<std::string, const ZipEntry*> by_name;
  const ZipEntry* pickle = nullptr;
  static const std::string kPickle = "data.pkl";
  for (const ZipEntry& e : entries) {
    by_name.emplace(e.name, &e);
    const bool is_pickle =
        e.name.size() >= kPickle.size() &&
        e.name.compare(e.name.size() - kPickle.size(), kPickle.size(), kPickle) == 0 &&
        (e.name.size() == kPickle.size() || e.name[e.name.size() - kPickle.size() - 1] == '/');
    // <archive>/data.pkl only: a deeper one (<archive>/x/data.pkl) is not torch's.
    if (is_pickle && std::count(e.name.begin(), e.name.end(), '/') <= 1) {
      if (pickle != nullptr) {
        throw Error(make_message("torch zip: two pickles \"", pickle->name, "\" and \"", e.name,
                                 "\", expected one <archive>/data.pkl"));
      }
      pickle = &e;
    }
  }
  if (pickle == nullptr) {
    throw Error("torch zip: no <archive>/data.pkl entry, expected a torch.save archive");
  }
  if (pickle->size > limits.max_pickle_bytes) {
    throw Error(
        make_message("torch zip: ", pickle->name, " has ", pickle->size,
                     " bytes, exceeding the limit max_pickle_bytes = ", limits.max_pickle_bytes));
  }
  const std::string prefix = pickle->name.substr(0, pickle->name.size() - kPickle.size());
  const std::vector<PickledTensor> pickled = parse_torch_pickle(
      ByteSpan{b.data + pickle->data_offset, static_cast<std::size_t>(pickle->size)}, limits);

  std::vector<CheckpointTensor> tensors;
  tensors.reserve(pickled.size());
  for (const PickledTensor& t : pickled) {
    const std::string entry_name = prefix + "data/" + t.storage_key;
    auto it = by_name.find(entry_name);
    if (it == by_name.end()) {
      throw Error(make_message("torch zip: tensor \"", t.name, "\": storage entry \"", entry_name,
                               "\" is missing from the archive"));
    }
    const ZipEntry& storage = *it->second;
    const std::uint64_t elem = dtype_size(t.dtype);
    std::uint64_t storage_bytes = 0;
    if (!checked_mul(static_cast<std::uint64_t>(t.storage_numel), elem, &storage_bytes) ||
        storage_bytes > storage.size) {
      throw Error(make_message("torch zip: tensor \"", t.name, "\": storage \"", entry_name,
                               "\" declares ", t.storage_numel, " ", dtype_name(t.dtype),
                               " elements, but the entry holds ", storage.size, " bytes"));
    }
    // Highest element reached: offset + sum((size - 1) * stride), all within the storage.
    std::int64_t last = t.storage_offset;
    bool empty = false;
    bool overflow = false;
    for (std::size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] == 0) empty = true;
      std::int64_t step = 0;
      overflow =
          overflow ||
          !checked_mul(t.shape[d] > 0 ? t.shape[d] - 1 : std::int64_t{0}, t.strides[d], &step) ||
          !checked_add(last, step, &last);
    }
    if (!empty && (overflow || last >= t.storage_numel)) {
      throw Error(make_message("torch zip: tensor \"", t.name, "\": shape ", shape_string(t.shape),
                               " with strides ", shape_string(t.strides), " at offset ",
                               t.storage_offset, " reaches past its storage of ", t.storage_numel,
                               " elements"));
    }
    CheckpointTensor out;
    out.name = t.name;
    out.dtype = t.dtype;
    out.shape = t.shape;
    out.strides = t.strides;
    out.data = b.data + storage.data_offset +
               (empty ? 0 : static_cast<std::uint64_t>(t.storage_offset) * elem);
    tensors.push_back(std::move(out));
  }
  return tensors;
}

}  // namespace instantid
