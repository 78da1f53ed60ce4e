/* stb_image, compiled here from Debian's header (libstb-dev, v2.27) rather than taken from
 * libstb.so, so that every allocation it makes is bounded. A corrupt PNG zlib stream makes stb's
 * inflater read zeros past the end of its input and keep doubling its output buffer:
 * fuzz_image found a 1.4 GB request for a 48 x 32 PNG (tests/fuzz/regressions/image/
 * png_zlib_bomb). decode_image() sets the bound from the header's dimensions before decoding; a
 * request over it fails and stb reports "outofmem", which decode_image turns into an Error.
 * The symbols defined here take precedence over libstb.so's for everything linking
 * instantid_face (static archive members resolve first).
 * JPEG is not compiled in (STBI_NO_JPEG): fuzz_image found an out-of-bounds read in stb 2.27's
 * JPEG decoder (tests/fuzz/regressions/image/stb_jpeg_decode_block_oob); decode_image decodes
 * JPEG with libjpeg-turbo instead (jpeg_decoder.cpp). */
#include <stddef.h>
#include <stdlib.h>

static _Thread_local size_t g_max_allocation = (size_t)1 << 30;

void instantid_stbi_set_max_allocation(size_t bytes) { g_max_allocation = bytes; }

static void* bounded_malloc(size_t bytes) {
  return bytes > g_max_allocation ? NULL : malloc(bytes);
}

static void* bounded_realloc(void* p, size_t bytes) {
  return bytes > g_max_allocation ? NULL : realloc(p, bytes);
}

#define STBI_MALLOC(bytes) bounded_malloc(bytes)
#define STBI_REALLOC(p, bytes) bounded_realloc(p, bytes)
#define STBI_FREE(p) free(p)
#define STBI_NO_JPEG
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>
