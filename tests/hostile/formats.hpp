#pragma once
// Byte-level writers for the file formats our parsers read: safetensors, stored zip archives,
// pickle streams, torch.save checkpoints and JPEG EXIF blocks. They write exactly what a test asks
// for — including lies about sizes and offsets — and validate nothing. Header-only, so the hostile
// tests and the fuzz seed writer (tests/fuzz/make_seeds.cpp) share them.

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace instantid::test::formats {

inline void put_le(std::string& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}
inline void put_be(std::string& out, std::uint64_t value, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

inline std::string float_bytes(const std::vector<float>& values) {
  std::string out(values.size() * sizeof(float), '\0');
  if (!values.empty()) std::memcpy(&out[0], values.data(), out.size());
  return out;
}

inline std::string shape_json(const std::vector<std::int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ",";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

// ---- safetensors -------------------------------------------------------------------------------

// An 8-byte little-endian header length, the header, the data. `claimed_header_length` lets a
// test lie about the header size (0 = tell the truth).
inline std::string safetensors_raw(const std::string& header_json, const std::string& data,
                                   std::uint64_t claimed_header_length = 0) {
  std::string out;
  put_le(out, claimed_header_length ? claimed_header_length : header_json.size(), 8);
  return out + header_json + data;
}

struct SafetensorsTensor {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", ...
  std::vector<std::int64_t> shape;
  std::string data;   // raw little-endian bytes
};

// A well-formed file: offsets are laid out back to back in the given order.
inline std::string safetensors(const std::vector<SafetensorsTensor>& tensors,
                               const std::string& metadata_json = "") {
  std::string header = "{";
  std::string data;
  bool first = true;
  if (!metadata_json.empty()) {
    header += "\"__metadata__\":" + metadata_json;
    first = false;
  }
  for (const auto& t : tensors) {
    if (!first) header += ",";
    first = false;
    const std::size_t begin = data.size();
    data += t.data;
    header += "\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":" + shape_json(t.shape) +
              ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(data.size()) +
              "]}";
  }
  header += "}";
  return safetensors_raw(header, data);
}

// ---- zip (stored entries, as torch.save writes them) -------------------------------------------

inline std::uint32_t crc32(const std::string& bytes) {
  std::uint32_t crc = 0xffffffffu;
  for (unsigned char c : bytes) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

struct ZipEntry {
  ZipEntry(std::string entry_name, std::string entry_data, std::uint32_t claimed = 0xffffffffu)
      : name(std::move(entry_name)), data(std::move(entry_data)), claimed_size(claimed) {}
  std::string name;
  std::string data;
  // Sizes written into both headers; ~0 = the truth. Lets a test claim sizes past the end.
  std::uint32_t claimed_size = 0xffffffffu;
};

inline std::string zip_stored(const std::vector<ZipEntry>& entries) {
  std::string out;
  std::string central;
  for (const auto& e : entries) {
    const std::uint32_t offset = static_cast<std::uint32_t>(out.size());
    const std::uint32_t crc = crc32(e.data);
    const std::uint32_t size =
        e.claimed_size == 0xffffffffu ? static_cast<std::uint32_t>(e.data.size()) : e.claimed_size;
    put_le(out, 0x04034b50, 4);  // local file header
    put_le(out, 20, 2);          // version needed
    put_le(out, 0, 2);           // flags
    put_le(out, 0, 2);           // method: stored
    put_le(out, 0, 4);           // time, date
    put_le(out, crc, 4);
    put_le(out, size, 4);
    put_le(out, size, 4);
    put_le(out, e.name.size(), 2);
    put_le(out, 0, 2);           // extra length
    out += e.name;
    out += e.data;

    put_le(central, 0x02014b50, 4);  // central directory header
    put_le(central, 20, 2);          // version made by
    put_le(central, 20, 2);
    put_le(central, 0, 2);
    put_le(central, 0, 2);
    put_le(central, 0, 4);
    put_le(central, crc, 4);
    put_le(central, size, 4);
    put_le(central, size, 4);
    put_le(central, e.name.size(), 2);
    put_le(central, 0, 2);  // extra
    put_le(central, 0, 2);  // comment
    put_le(central, 0, 2);  // disk
    put_le(central, 0, 2);  // internal attributes
    put_le(central, 0, 4);  // external attributes
    put_le(central, offset, 4);
    central += e.name;
  }
  const std::uint32_t central_offset = static_cast<std::uint32_t>(out.size());
  out += central;
  put_le(out, 0x06054b50, 4);  // end of central directory
  put_le(out, 0, 2);
  put_le(out, 0, 2);
  put_le(out, entries.size(), 2);
  put_le(out, entries.size(), 2);
  put_le(out, central.size(), 4);
  put_le(out, central_offset, 4);
  put_le(out, 0, 2);
  return out;
}

// ---- pickle (protocol 2, the opcodes torch.save emits) -----------------------------------------

class Pickle {
 public:
  Pickle& proto(int version) { return op('\x80').byte(version); }
  Pickle& mark() { return op('('); }
  Pickle& stop() { return op('.'); }
  Pickle& empty_dict() { return op('}'); }
  Pickle& empty_tuple() { return op(')'); }
  Pickle& tuple() { return op('t'); }
  Pickle& tuple2() { return op('\x86'); }
  Pickle& setitems() { return op('u'); }
  Pickle& setitem() { return op('s'); }
  Pickle& reduce() { return op('R'); }
  Pickle& binpersid() { return op('Q'); }
  Pickle& newfalse() { return op('\x89'); }
  Pickle& newtrue() { return op('\x88'); }
  Pickle& none() { return op('N'); }
  Pickle& global(const std::string& module, const std::string& name) {
    op('c');
    bytes_ += module + "\n" + name + "\n";
    return *this;
  }
  Pickle& unicode(const std::string& s) {
    op('X');
    put_le(bytes_, s.size(), 4);
    bytes_ += s;
    return *this;
  }
  Pickle& integer(std::int64_t v) {
    if (v >= 0 && v < 256) return op('K').byte(static_cast<int>(v));
    if (v >= -(std::int64_t{1} << 31) && v < (std::int64_t{1} << 31)) {
      op('J');
      put_le(bytes_, static_cast<std::uint32_t>(v), 4);
      return *this;
    }
    op('\x8a').byte(8);  // LONG1, 8 bytes little-endian two's complement
    put_le(bytes_, static_cast<std::uint64_t>(v), 8);
    return *this;
  }
  Pickle& binput(int index) { return op('q').byte(index); }
  Pickle& binget(int index) { return op('h').byte(index); }
  Pickle& raw(const std::string& b) {
    bytes_ += b;
    return *this;
  }
  // A tuple of integers built with MARK ... TUPLE (any length).
  Pickle& int_tuple(const std::vector<std::int64_t>& values) {
    mark();
    for (auto v : values) integer(v);
    return tuple();
  }
  const std::string& bytes() const { return bytes_; }

 private:
  Pickle& op(char c) {
    bytes_.push_back(c);
    return *this;
  }
  Pickle& byte(int b) {
    bytes_.push_back(static_cast<char>(b));
    return *this;
  }
  std::string bytes_;
};

struct TorchTensor {
  TorchTensor(std::string tensor_name, std::string storage_class, std::vector<std::int64_t> dims,
              std::string bytes)
      : name(std::move(tensor_name)), storage(std::move(storage_class)), shape(std::move(dims)),
        data(std::move(bytes)) {}
  std::string name;
  std::string storage = "FloatStorage";  // HalfStorage, BFloat16Storage, ...
  std::vector<std::int64_t> shape;
  std::string data;  // raw little-endian storage bytes
  std::int64_t storage_offset = 0;
  std::vector<std::int64_t> stride;  // empty = contiguous
  // numel written into the persistent id; -1 = derived from data and the element size.
  std::int64_t claimed_numel = -1;
};

inline std::vector<std::int64_t> contiguous_stride(const std::vector<std::int64_t>& shape) {
  std::vector<std::int64_t> stride(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i)
    stride[static_cast<std::size_t>(i)] =
        stride[static_cast<std::size_t>(i) + 1] * shape[static_cast<std::size_t>(i) + 1];
  return stride;
}

inline std::int64_t storage_element_size(const std::string& storage) {
  if (storage == "HalfStorage" || storage == "BFloat16Storage") return 2;
  if (storage == "DoubleStorage" || storage == "LongStorage") return 8;
  return 4;
}

// The pickle torch.save writes for {group: OrderedDict{name: tensor}} (storage keys "0", "1", ...).
inline std::string torch_pickle(
    const std::vector<std::pair<std::string, std::vector<TorchTensor>>>& groups) {
  Pickle p;
  p.proto(2).empty_dict().binput(0).mark();
  int key = 0;
  int memo = 1;
  for (const auto& group : groups) {
    p.unicode(group.first).binput(memo++);
    p.global("collections", "OrderedDict").binput(memo++);
    p.empty_tuple().reduce().binput(memo++);
    p.mark();
    for (const auto& t : group.second) {
      const std::int64_t numel =
          t.claimed_numel >= 0 ? t.claimed_numel
                               : static_cast<std::int64_t>(t.data.size()) /
                                     storage_element_size(t.storage);
      p.unicode(t.name).binput(memo++);
      p.global("torch._utils", "_rebuild_tensor_v2").binput(memo++);
      p.mark();
      p.mark().unicode("storage").global("torch", t.storage).unicode(std::to_string(key++))
          .unicode("cpu").integer(numel).tuple().binpersid();
      p.integer(t.storage_offset);
      p.int_tuple(t.shape);
      p.int_tuple(t.stride.empty() ? contiguous_stride(t.shape) : t.stride);
      p.newfalse();
      p.global("collections", "OrderedDict").empty_tuple().reduce();
      p.tuple().reduce().binput(memo++);
      if (memo > 250) memo = 1;  // BINPUT takes one byte; reuse slots in large test files
    }
    p.setitems();
  }
  p.setitems().stop();
  return p.bytes();
}

// A torch.save zip archive: <archive>/data.pkl, byteorder, data/<key>, version.
inline std::string torch_zip(
    const std::vector<std::pair<std::string, std::vector<TorchTensor>>>& groups,
    const std::string& archive = "archive") {
  std::vector<ZipEntry> entries;
  entries.push_back({archive + "/data.pkl", torch_pickle(groups)});
  entries.push_back({archive + "/byteorder", "little"});
  int key = 0;
  for (const auto& group : groups)
    for (const auto& t : group.second)
      entries.push_back({archive + "/data/" + std::to_string(key++), t.data});
  entries.push_back({archive + "/version", "3\n"});
  return zip_stored(entries);
}

// ---- JPEG EXIF ---------------------------------------------------------------------------------

// An APP1 "Exif" segment whose IFD0 holds one Orientation (0x0112) SHORT entry.
inline std::string exif_orientation_segment(int orientation, bool big_endian = false) {
  std::string tiff;
  auto put16 = [&](std::uint64_t v) { big_endian ? put_be(tiff, v, 2) : put_le(tiff, v, 2); };
  auto put32 = [&](std::uint64_t v) { big_endian ? put_be(tiff, v, 4) : put_le(tiff, v, 4); };
  tiff += big_endian ? "MM" : "II";
  put16(42);
  put32(8);  // IFD0 offset
  put16(1);  // one entry
  put16(0x0112);
  put16(3);  // SHORT
  put32(1);
  put16(static_cast<std::uint64_t>(orientation));
  put16(0);  // padding of the 4-byte value field
  put32(0);  // no next IFD
  std::string payload = std::string("Exif\0\0", 6) + tiff;
  std::string segment = "\xff\xe1";
  put_be(segment, payload.size() + 2, 2);
  return segment + payload;
}

// Inserts `segment` right after a JPEG's SOI marker.
inline std::string jpeg_with_segment(const std::string& jpeg, const std::string& segment) {
  if (jpeg.size() < 2) return jpeg;
  return jpeg.substr(0, 2) + segment + jpeg.substr(2);
}

// ---- PNG ---------------------------------------------------------------------------------------

// A PNG signature and an IHDR chunk claiming width × height (8-bit RGB), then an empty IDAT and
// IEND: a header that lies about a huge image without carrying its pixels.
inline std::string png_header_only(std::uint32_t width, std::uint32_t height) {
  auto chunk = [](const std::string& type, const std::string& data) {
    std::string c;
    put_be(c, data.size(), 4);
    c += type + data;
    put_be(c, crc32(type + data), 4);
    return c;
  };
  std::string ihdr;
  put_be(ihdr, width, 4);
  put_be(ihdr, height, 4);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // depth 8, RGB, deflate, no filter, no interlace
  return std::string("\x89PNG\r\n\x1a\n", 8) + chunk("IHDR", ihdr) + chunk("IDAT", "") +
         chunk("IEND", "");
}

}  // namespace instantid::test::formats
