// bench_checkpoint_load [dir] [runs]
//
// Writes (once; reused when present with the right size) a 1.7 GB fp32 checkpoint with the real
// SDXL InstantID layout (D_out 2048) as .safetensors and as a torch.save-style zip, checks that
// both load to the values written, then times InstantIDModel::load from the page cache `runs`
// times per format (InstantIDModel construction; freeing it is not timed). A peer row times
// what any loader must do at least: copy the mapped file into fresh, pre-populated memory;
// percent_of_peer = peer time / load time. Prints one JSON row per measurement (median and spread).
// Without [dir], files go to a temporary directory that is removed at the end.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "instantid/checkpoint.hpp"
#include "instantid/model.hpp"

namespace {

using instantid::InstantIDModel;
using instantid::ModelLayout;
using Shapes = std::map<std::string, std::vector<std::int64_t>>;

// Deterministic finite values: element i of tensor t.
float value_at(std::size_t tensor_index, std::int64_t i) {
  std::uint32_t x = static_cast<std::uint32_t>(i) * 2654435761u +
                    static_cast<std::uint32_t>(tensor_index) * 40503u;
  x ^= x >> 15;
  return static_cast<float>(static_cast<std::int32_t>(x & 0xffff) - 32768) * (1.0f / 65536.0f);
}

std::int64_t numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

void fill(std::vector<float>& buf, std::size_t tensor_index, std::int64_t n) {
  buf.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) buf[static_cast<std::size_t>(i)] = value_at(tensor_index, i);
}

void write_all(std::ofstream& out, const void* p, std::size_t n) {
  out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
}

void write_safetensors(const std::string& path, const Shapes& shapes) {
  std::string header = "{";
  std::uint64_t offset = 0;
  for (const auto& [name, shape] : shapes) {
    std::string dims;
    for (std::size_t i = 0; i < shape.size(); ++i)
      dims += (i ? "," : "") + std::to_string(shape[i]);
    const std::uint64_t bytes = static_cast<std::uint64_t>(numel(shape)) * 4;
    header += (offset || header.size() > 1 ? "," : "") + std::string("\"") + name +
              "\":{\"dtype\":\"F32\",\"shape\":[" + dims + "],\"data_offsets\":[" +
              std::to_string(offset) + "," + std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t len = header.size();
  write_all(out, &len, 8);
  write_all(out, header.data(), header.size());
  std::vector<float> buf;
  std::size_t t = 0;
  for (const auto& [name, shape] : shapes) {
    fill(buf, t++, numel(shape));
    write_all(out, buf.data(), buf.size() * 4);
  }
}

// ---- torch.save-style zip: protocol-2 pickle of {"image_proj": {...}, "ip_adapter": {...}} ----

struct Pickle {
  std::string b = "\x80\x02";
  void str(const std::string& s) {
    b += 'X';
    const std::uint32_t n = static_cast<std::uint32_t>(s.size());
    b.append(reinterpret_cast<const char*>(&n), 4);
    b += s;
  }
  void integer(std::int64_t v) {
    b += "\x8a\x08";
    b.append(reinterpret_cast<const char*>(&v), 8);
  }
  void tensor(const std::string& key, const std::vector<std::int64_t>& shape) {
    b += "ctorch._utils\n_rebuild_tensor_v2\n(";
    b += "(";
    str("storage");
    b += "ctorch\nFloatStorage\n";
    str(key);
    str("cpu");
    integer(numel(shape));
    b += "tQ";
    integer(0);
    b += "(";
    for (std::int64_t d : shape) integer(d);
    b += "t(";
    std::int64_t stride = 1;
    std::vector<std::int64_t> strides(shape.size());
    for (std::size_t i = shape.size(); i-- > 0;) {
      strides[i] = stride;
      stride *= shape[i];
    }
    for (std::int64_t s : strides) integer(s);
    b += "t\x89"
         "ccollections\nOrderedDict\n)R";
    b += "tR";
  }
};

struct ZipWriter {
  std::ofstream out;
  struct Entry {
    std::string name;
    std::uint64_t offset, size;
  };
  std::vector<Entry> entries;
  std::uint64_t pos = 0;

  explicit ZipWriter(const std::string& path) : out(path, std::ios::binary) {}
  void put(const void* p, std::size_t n) {
    write_all(out, p, n);
    pos += n;
  }
  void u16(std::uint32_t v) { put(&v, 2); }
  void u32(std::uint32_t v) { put(&v, 4); }
  void u64(std::uint64_t v) { put(&v, 8); }
  // Local header with an extra field padding the data to 64 bytes, as torch.save does.
  void begin(const std::string& name, std::uint64_t size) {
    entries.push_back({name, pos, size});
    const std::uint64_t unpadded = pos + 30 + name.size() + 4;
    const std::uint32_t pad = static_cast<std::uint32_t>((64 - unpadded % 64) % 64);
    u32(0x04034b50);
    u16(20);
    u16(0);
    u16(0);
    u32(0);
    u32(0);
    u32(static_cast<std::uint32_t>(size));
    u32(static_cast<std::uint32_t>(size));
    u16(static_cast<std::uint32_t>(name.size()));
    u16(4 + pad);
    put(name.data(), name.size());
    u16(0x4b46);  // "FB": torch's padding field id
    u16(pad);
    const std::string zeros(pad, 'Z');
    put(zeros.data(), pad);
  }
  void finish() {
    const std::uint64_t dir = pos;
    for (const Entry& e : entries) {
      u32(0x02014b50);
      u16(45);
      u16(45);
      u16(0);
      u16(0);
      u32(0);
      u32(0);
      u32(static_cast<std::uint32_t>(e.size));
      u32(static_cast<std::uint32_t>(e.size));
      u16(static_cast<std::uint32_t>(e.name.size()));
      u16(0);
      u16(0);
      u16(0);
      u16(0);
      u32(0);
      u32(static_cast<std::uint32_t>(e.offset));
      put(e.name.data(), e.name.size());
    }
    const std::uint64_t dir_size = pos - dir;
    const std::uint64_t end64 = pos;
    u32(0x06064b50);
    u64(44);
    u16(45);
    u16(45);
    u32(0);
    u32(0);
    u64(entries.size());
    u64(entries.size());
    u64(dir_size);
    u64(dir);
    u32(0x07064b50);
    u32(0);
    u64(end64);
    u32(1);
    u32(0x06054b50);
    u16(0);
    u16(0);
    u16(0xffff);
    u16(0xffff);
    u32(0xffffffffu);
    u32(0xffffffffu);
    u16(0);
  }
};

void write_torch_zip(const std::string& path, const Shapes& shapes) {
  // Keep the safetensors tensor order (map order) for the storages: key i = i-th tensor.
  Pickle p;
  p.b += "}(";
  std::size_t key = 0;
  for (const char* top : {"image_proj", "ip_adapter"}) {
    p.str(top);
    p.b += "ccollections\nOrderedDict\n)R(";
    const std::string prefix = std::string(top) + ".";
    std::size_t k = 0;
    for (const auto& [name, shape] : shapes) {
      if (name.compare(0, prefix.size(), prefix) == 0) {
        p.str(name.substr(prefix.size()));
        p.tensor(std::to_string(k), shape);
      }
      ++k;
    }
    p.b += "u";
  }
  p.b += "u.";
  (void)key;
  ZipWriter zip(path);
  zip.begin("archive/data.pkl", p.b.size());
  zip.put(p.b.data(), p.b.size());
  std::vector<float> buf;
  std::size_t t = 0;
  for (const auto& [name, shape] : shapes) {
    fill(buf, t, numel(shape));
    zip.begin("archive/data/" + std::to_string(t), buf.size() * 4);
    zip.put(buf.data(), buf.size() * 4);
    ++t;
  }
  zip.begin("archive/version", 2);
  zip.put("3\n", 2);
  zip.finish();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      std::string name = line.substr(line.find(':') + 2);
      for (char& c : name) {
        if (c == '"') c = '\'';
      }
      return name;
    }
  }
  return "unknown cpu";
}

std::uint64_t file_size(const std::string& path) {
  std::error_code ec;
  const auto n = std::filesystem::file_size(path, ec);
  return ec ? 0 : static_cast<std::uint64_t>(n);
}

struct Stats {
  double median, min, max;
};

Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

void print_row(const std::string& bench, const std::string& format, std::uint64_t bytes,
               const Stats& s, int runs, const std::string& device, double peer_median) {
  std::printf(
      "{\"bench\":\"%s\",\"format\":\"%s\",\"device\":\"%s\",\"bytes\":%llu,\"runs\":%d,"
      "\"seconds\":%.4f,\"min_seconds\":%.4f,\"max_seconds\":%.4f,\"GB_per_s\":%.3f,"
      "\"percent_of_peer\":%.1f}\n",
      bench.c_str(), format.c_str(), device.c_str(), static_cast<unsigned long long>(bytes), runs,
      s.median, s.min, s.max, static_cast<double>(bytes) / s.median / 1e9,
      100.0 * peer_median / s.median);
  std::fflush(stdout);
}

// The peer: map the file and copy it into fresh memory that is populated in one call first
// (MADV_POPULATE_WRITE; the loader does the same per tensor): the least work any loader into
// new float32 memory must do.
double copy_peer(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  struct stat st {};
  ::fstat(fd, &st);
  const auto t0 = std::chrono::steady_clock::now();
  const std::size_t n = static_cast<std::size_t>(st.st_size);
  void* p = ::mmap(nullptr, n, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
  void* dst = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ::madvise(dst, n, 23 /* MADV_POPULATE_WRITE */);
  std::memcpy(dst, p, n);
  const double s = seconds_since(t0);
  volatile char sink = static_cast<char*>(dst)[n / 2];
  (void)sink;
  ::munmap(dst, n);
  ::munmap(p, n);
  ::close(fd);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const bool temp = argc < 2;
  const std::filesystem::path dir = temp
                                        ? std::filesystem::temp_directory_path() /
                                              ("instantid_bench_ckpt_" + std::to_string(::getpid()))
                                        : std::filesystem::path(argv[1]);
  const int runs = argc >= 3 ? std::max(1, std::atoi(argv[2])) : 5;
  std::filesystem::create_directories(dir);
  const ModelLayout layout = ModelLayout::sdxl();
  const Shapes shapes = InstantIDModel::expected_shapes(layout, 2048);
  std::uint64_t payload = 0;
  for (const auto& [name, shape] : shapes) payload += static_cast<std::uint64_t>(numel(shape)) * 4;

  const std::string st_path = (dir / "sdxl_f32.safetensors").string();
  const std::string bin_path = (dir / "sdxl_f32.bin").string();
  if (file_size(st_path) < payload) write_safetensors(st_path, shapes);
  if (file_size(bin_path) < payload) write_torch_zip(bin_path, shapes);

  const std::string device =
      "cpu: " + cpu_name() + " x" + std::to_string(std::thread::hardware_concurrency());
  int status = 0;
  for (const auto& [format, path] :
       {std::pair<std::string, std::string>{"safetensors", st_path}, {"torch_zip", bin_path}}) {
    // Correctness before timing: every tensor holds the values written.
    {
      const InstantIDModel model = InstantIDModel::load(path, layout);
      std::size_t t = 0;
      for (const auto& [name, shape] : shapes) {
        const auto& values = model.tensor(name).values();
        for (std::int64_t i : {std::int64_t{0}, numel(shape) / 3, numel(shape) - 1}) {
          if (values[static_cast<std::size_t>(i)] != value_at(t, i)) {
            std::fprintf(stderr, "%s: %s[%lld] differs from the value written\n", path.c_str(),
                         name.c_str(), static_cast<long long>(i));
            status = 1;
          }
        }
        ++t;
      }
      if (model.output_dim() != 2048) status = 1;
    }
    std::vector<double> load, peer;
    for (int r = 0; r < runs; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      {
        const InstantIDModel model = InstantIDModel::load(path, layout);
        load.push_back(seconds_since(t0));
      }
      peer.push_back(copy_peer(path));
    }
    const std::uint64_t bytes = file_size(path);
    const Stats peer_stats = stats(peer);
    print_row("checkpoint_load", format, bytes, stats(load), runs, device, peer_stats.median);
    print_row("checkpoint_copy_peer", format, bytes, peer_stats, runs, device, peer_stats.median);
  }
  if (temp) std::filesystem::remove_all(dir);
  return status;
}
