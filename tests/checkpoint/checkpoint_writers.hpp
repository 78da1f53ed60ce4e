#pragma once
// Small writers for hand-made (often broken) checkpoints in the error tests: a stored-entry zip
// archive, a torch-style pickle and a safetensors file.

#include <cstdint>
#include <string>
#include <vector>

namespace instantid::test {

using Bytes = std::vector<std::uint8_t>;

inline void put_u16(Bytes& b, std::uint32_t v) {
  b.push_back(static_cast<std::uint8_t>(v));
  b.push_back(static_cast<std::uint8_t>(v >> 8));
}
inline void put_u32(Bytes& b, std::uint32_t v) {
  put_u16(b, v & 0xffff);
  put_u16(b, v >> 16);
}
inline void put_u64(Bytes& b, std::uint64_t v) {
  put_u32(b, static_cast<std::uint32_t>(v));
  put_u32(b, static_cast<std::uint32_t>(v >> 32));
}
inline void put_text(Bytes& b, const std::string& s) { b.insert(b.end(), s.begin(), s.end()); }

struct ZipItem {
  std::string name;
  Bytes data;
  std::uint16_t method = 0;  // 0 stored, 8 deflate (the bytes are not really compressed)
  std::uint16_t flags = 0;
};

// A single-disk zip; with zip64, central entries carry saturated sizes/offsets and the ZIP64
// extra field, and ZIP64 end records are written (as torch.save does).
inline Bytes make_zip(const std::vector<ZipItem>& items, bool zip64 = false) {
  Bytes out;
  std::vector<std::uint64_t> offsets;
  for (const ZipItem& it : items) {
    offsets.push_back(out.size());
    put_u32(out, 0x04034b50);
    put_u16(out, 20);
    put_u16(out, it.flags);
    put_u16(out, it.method);
    put_u32(out, 0);  // time, date
    put_u32(out, 0);  // crc (not checked)
    put_u32(out, static_cast<std::uint32_t>(it.data.size()));
    put_u32(out, static_cast<std::uint32_t>(it.data.size()));
    put_u16(out, static_cast<std::uint32_t>(it.name.size()));
    put_u16(out, 0);
    put_text(out, it.name);
    out.insert(out.end(), it.data.begin(), it.data.end());
  }
  const std::uint64_t dir_offset = out.size();
  for (std::size_t i = 0; i < items.size(); ++i) {
    const ZipItem& it = items[i];
    put_u32(out, 0x02014b50);
    put_u16(out, 45);
    put_u16(out, 45);
    put_u16(out, it.flags);
    put_u16(out, it.method);
    put_u32(out, 0);
    put_u32(out, 0);
    const std::uint32_t size = zip64 ? 0xffffffffu : static_cast<std::uint32_t>(it.data.size());
    put_u32(out, size);
    put_u32(out, size);
    put_u16(out, static_cast<std::uint32_t>(it.name.size()));
    put_u16(out, zip64 ? 28 : 0);
    put_u16(out, 0);
    put_u16(out, 0);
    put_u16(out, 0);
    put_u32(out, 0);
    put_u32(out, zip64 ? 0xffffffffu : static_cast<std::uint32_t>(offsets[i]));
    put_text(out, it.name);
    if (zip64) {
      put_u16(out, 0x0001);
      put_u16(out, 24);
      put_u64(out, it.data.size());
      put_u64(out, it.data.size());
      put_u64(out, offsets[i]);
    }
  }
  const std::uint64_t dir_size = out.size() - dir_offset;
  if (zip64) {
    const std::uint64_t end64 = out.size();
    put_u32(out, 0x06064b50);
    put_u64(out, 44);
    put_u16(out, 45);
    put_u16(out, 45);
    put_u32(out, 0);
    put_u32(out, 0);
    put_u64(out, items.size());
    put_u64(out, items.size());
    put_u64(out, dir_size);
    put_u64(out, dir_offset);
    put_u32(out, 0x07064b50);
    put_u32(out, 0);
    put_u64(out, end64);
    put_u32(out, 1);
  }
  put_u32(out, 0x06054b50);
  put_u16(out, 0);
  put_u16(out, 0);
  put_u16(out, zip64 ? 0xffff : static_cast<std::uint32_t>(items.size()));
  put_u16(out, zip64 ? 0xffff : static_cast<std::uint32_t>(items.size()));
  put_u32(out, zip64 ? 0xffffffffu : static_cast<std::uint32_t>(dir_size));
  put_u32(out, zip64 ? 0xffffffffu : static_cast<std::uint32_t>(dir_offset));
  put_u16(out, 0);
  return out;
}

// Protocol-2 pickle opcodes, written the way torch.save writes them.
struct PickleWriter {
  Bytes b{0x80, 0x02};
  PickleWriter& op(std::uint8_t c) {
    b.push_back(c);
    return *this;
  }
  PickleWriter& str(const std::string& s) {
    op('X');
    put_u32(b, static_cast<std::uint32_t>(s.size()));
    put_text(b, s);
    return *this;
  }
  PickleWriter& global(const std::string& module, const std::string& name) {
    op('c');
    put_text(b, module + "\n" + name + "\n");
    return *this;
  }
  PickleWriter& integer(std::int64_t v) {  // LONG1 with 8 bytes: any value
    op(0x8a).op(8);
    put_u64(b, static_cast<std::uint64_t>(v));
    return *this;
  }
  PickleWriter& int_tuple(const std::vector<std::int64_t>& v) {
    op('(');
    for (std::int64_t x : v) integer(x);
    return op('t');
  }
  // _rebuild_tensor_v2(("storage", cls, key, "cpu", numel), offset, size, stride, False, {}).
  PickleWriter& tensor(const std::string& storage_class, const std::string& key, std::int64_t numel,
                       std::int64_t offset, const std::vector<std::int64_t>& size,
                       const std::vector<std::int64_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v2").op('(');
    op('(').str("storage").global("torch", storage_class).str(key).str("cpu").integer(numel);
    op('t').op('Q');
    integer(offset).int_tuple(size).int_tuple(stride).op(0x89);
    global("collections", "OrderedDict").op(')').op('R');
    return op('t').op('R');
  }
  Bytes done() {
    op('.');
    return b;
  }
};

struct SafetensorsItem {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  Bytes data;
};

inline std::string json_shape(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// Header length + JSON + data, offsets laid out back to back.
inline Bytes make_safetensors(const std::vector<SafetensorsItem>& items) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  std::uint64_t offset = 0;
  Bytes data;
  for (const SafetensorsItem& it : items) {
    header += ",\"" + it.name + "\":{\"dtype\":\"" + it.dtype +
              "\",\"shape\":" + json_shape(it.shape) + ",\"data_offsets\":[" +
              std::to_string(offset) + "," + std::to_string(offset + it.data.size()) + "]}";
    offset += it.data.size();
    data.insert(data.end(), it.data.begin(), it.data.end());
  }
  header += "}";
  Bytes out;
  put_u64(out, header.size());
  put_text(out, header);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// Header length + the given header text + data.
inline Bytes make_safetensors_raw(const std::string& header, const Bytes& data) {
  Bytes out;
  put_u64(out, header.size());
  put_text(out, header);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

}  // namespace instantid::test
