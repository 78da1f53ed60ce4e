#include "jpeg_decoder.hpp"

#include <csetjmp>
#include <cstdio>  // before jpeglib.h, which uses FILE
#include <cstring>
#include <vector>

// After <cstdio>.
#include <jerror.h>
#include <jpeglib.h>

#include "instantid/error.hpp"

namespace instantid::face::detail {

namespace {

// libjpeg reports errors by calling error_exit, which must not return. A C++ exception may not
// unwind through libjpeg's C frames, so the callbacks longjmp back into guarded() below; every
// frame they jump over (libjpeg's, the callback's) holds only trivially destructible objects.
struct ErrorState {
  jpeg_error_mgr manager;  // first member: libjpeg passes &manager as cinfo->err
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;  // the data ended early (libjpeg's memory source hit its end)
  bool too_many_scans;
};

struct Decoder {
  jpeg_decompress_struct cinfo;
  ErrorState error;
  jpeg_progress_mgr progress;
};

ErrorState& state_of(j_common_ptr cinfo) { return *reinterpret_cast<ErrorState*>(cinfo->err); }

[[noreturn]] void on_error(j_common_ptr cinfo) {
  ErrorState& state = state_of(cinfo);
  (*cinfo->err->format_message)(cinfo, state.message);
  std::longjmp(state.jump, 1);
}

// msg_level -1: a corrupt-data warning. libjpeg then fills what it cannot decode with grey and
// carries on; PIL (ComfyUI's loader) ignores these warnings, so do we, except the end of the data:
// PIL refuses a truncated file ("image file is truncated") and so do we, instead of returning
// a half-grey image. Trace messages (msg_level >= 0) are ignored.
void on_message(j_common_ptr cinfo, int msg_level) {
  if (msg_level >= 0) return;
  ErrorState& state = state_of(cinfo);
  ++cinfo->err->num_warnings;
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
    (*cinfo->err->format_message)(cinfo, state.message);
    state.truncated = true;
    std::longjmp(state.jump, 1);
  }
}

// Called once per iMCU row while start_decompress consumes a multi-scan file, and per output row.
void on_progress(j_common_ptr cinfo) {
  if (!cinfo->is_decompressor) return;
  const auto* dinfo = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (dinfo->input_scan_number > kMaxJpegScans) {
    ErrorState& state = state_of(cinfo);
    std::snprintf(state.message, sizeof(state.message), "%d", dinfo->input_scan_number);
    state.too_many_scans = true;
    std::longjmp(state.jump, 1);
  }
}

// Runs `step` (calls into libjpeg); false when libjpeg reported an error through the callbacks.
// Not inlined: setjmp's frame must stay this one, holding nothing but the callable's reference.
template <typename Step>
__attribute__((noinline)) bool guarded(ErrorState& state, Step& step) {
  if (setjmp(state.jump) != 0) return false;
  step();
  return true;
}

// Owns the decompressor so that every exit (including an Error thrown between steps) frees it.
struct DecoderGuard {
  Decoder* decoder;
  ~DecoderGuard() { jpeg_destroy_decompress(&decoder->cinfo); }
};

// PIL's CMYK → RGB for JPEG: it reads the samples inverted ("CMYK;I", Adobe's convention), then
// convert("RGB") computes (255 - k) - c * (255 - k) / 255 per channel with its rounded MULDIV255.
// In the stored (raw) samples that is: nk = raw_k, c = 255 - raw_c.
void cmyk_row_to_bgr(const std::uint8_t* cmyk, int width, std::uint8_t* bgr) {
  // cmyk: [width, 4] raw libjpeg samples; bgr: [width, 3]
  for (int x = 0; x < width; ++x) {
    const int nk = cmyk[4 * x + 3];
    for (int k = 0; k < 3; ++k) {
      const int c = 255 - cmyk[4 * x + k];
      const int t = c * nk + 128;
      const int v = nk - (((t >> 8) + t) >> 8);
      bgr[3 * x + (2 - k)] = static_cast<std::uint8_t>(v < 0 ? 0 : v);
    }
  }
}

const char* color_space_name(J_COLOR_SPACE space) {
  switch (space) {
    case JCS_GRAYSCALE:
      return "grayscale";
    case JCS_RGB:
      return "RGB";
    case JCS_YCbCr:
      return "YCbCr";
    case JCS_CMYK:
      return "CMYK";
    case JCS_YCCK:
      return "YCCK";
    default:
      return "unknown";
  }
}

}  // namespace

Image decode_jpeg(const std::uint8_t* data, std::size_t size, const std::string& name,
                  const std::function<void(int width, int height)>& check_header) {
  INSTANTID_CHECK(data != nullptr && size > 0, "decode_jpeg: ", name,
                  ": data: got an empty buffer, expected JPEG data");
  Decoder decoder{};
  ErrorState& error = decoder.error;
  jpeg_decompress_struct& cinfo = decoder.cinfo;
  cinfo.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = on_error;
  error.manager.emit_message = on_message;
  // jpeg_create_decompress reports out-of-memory through error_exit too.
  auto create = [&] { jpeg_create_decompress(&cinfo); };
  if (!guarded(error, create)) {
    throw Error(make_message("decode_image: ", name, ": libjpeg-turbo could not start (",
                             error.message, ")"));
  }
  DecoderGuard guard{&decoder};
  decoder.progress.progress_monitor = on_progress;
  cinfo.progress = &decoder.progress;

  auto failure = [&](const char* stage) {
    if (error.truncated) {
      return Error(make_message("decode_image: ", name, ": JPEG data is truncated: got ", size,
                                " bytes, the data ends inside the ", stage,
                                ", expected a complete file"));
    }
    if (error.too_many_scans) {
      return Error(make_message("decode_image: ", name, ": JPEG scans: got ", error.message,
                                " (reading stopped there), expected at most ", kMaxJpegScans,
                                " (each scan walks the whole image)"));
    }
    return Error(make_message("decode_image: ", name, ": JPEG ", stage,
                              " is corrupt (libjpeg-turbo: ", error.message, "): got ", size,
                              " bytes, expected a decodable baseline or progressive JPEG"));
  };

  auto read_header = [&] {
    jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
    jpeg_read_header(&cinfo, TRUE);
  };
  if (!guarded(error, read_header)) throw failure("header");

  const int width = static_cast<int>(cinfo.image_width);
  const int height = static_cast<int>(cinfo.image_height);
  check_header(width, height);  // may throw: the guard frees the decompressor

  const J_COLOR_SPACE source = cinfo.jpeg_color_space;
  const bool cmyk = source == JCS_CMYK || source == JCS_YCCK;
  const bool three = source == JCS_GRAYSCALE || source == JCS_RGB || source == JCS_YCbCr;
  if (!cmyk && !three) {
    throw Error(make_message("decode_image: ", name, ": JPEG colour space: got ",
                             color_space_name(source), " with ", cinfo.num_components,
                             " components, expected grayscale, YCbCr, RGB, CMYK or YCCK"));
  }
  // BGR straight from libjpeg-turbo's colour converter (the same arithmetic as its RGB output,
  // channels swapped); CMYK (YCCK converted by libjpeg) is turned into BGR below, like PIL.
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_EXT_BGR;
  cinfo.dct_method = JDCT_ISLOW;     // PIL's default (no draft mode)
  cinfo.do_fancy_upsampling = TRUE;  // PIL's default: triangular chroma upsampling
  cinfo.do_block_smoothing = TRUE;   // libjpeg's default for progressive files, as PIL leaves it
  cinfo.scale_num = 1;
  cinfo.scale_denom = 1;
  // Everything libjpeg allocates (a progressive file keeps all coefficients: 2 bytes × 64 per
  // block and component) stays under 16 bytes per padded pixel, as for stb_image; there is no
  // backing store, so a larger request fails with an error instead of growing.
  cinfo.mem->max_memory_to_use = static_cast<long>(16 * (static_cast<std::size_t>(width) + 16) *
                                                       (static_cast<std::size_t>(height) + 16) +
                                                   (std::size_t{16} << 20));

  auto start = [&] { jpeg_start_decompress(&cinfo); };
  if (!guarded(error, start)) throw failure("scan data");
  const int components = cmyk ? 4 : 3;
  if (static_cast<int>(cinfo.output_width) != width ||
      static_cast<int>(cinfo.output_height) != height || cinfo.output_components != components) {
    throw Error(make_message("decode_image: ", name, ": JPEG output: got ", cinfo.output_width, "x",
                             cinfo.output_height, "x", cinfo.output_components,
                             ", expected the header's ", width, "x", height, "x", components));
  }

  Image image(width, height, 3);
  std::vector<std::uint8_t> cmyk_row(cmyk ? static_cast<std::size_t>(width) * 4 : 0);  // [W, 4]
  auto read_rows = [&] {
    while (cinfo.output_scanline < cinfo.output_height) {
      const int y = static_cast<int>(cinfo.output_scanline);
      JSAMPROW row = cmyk ? cmyk_row.data() : image.row(y);
      if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) break;  // memory source never suspends
      if (cmyk) cmyk_row_to_bgr(cmyk_row.data(), width, image.row(y));
    }
    jpeg_finish_decompress(&cinfo);
  };
  if (!guarded(error, read_rows)) throw failure("scan data");
  INSTANTID_CHECK(cinfo.output_scanline == cinfo.output_height, "decode_image: ", name,
                  ": JPEG rows decoded: got ", cinfo.output_scanline, ", expected ",
                  cinfo.output_height);
  return image;
}

}  // namespace instantid::face::detail
