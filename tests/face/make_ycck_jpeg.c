/* Writes tests/data/face/jpeg/ycck.jpg: a 64x48 YCCK JPEG (Adobe transform 2), which Pillow cannot
 * write. Not built by CMake; run once, then make_jpeg_goldens.py records PIL's pixels for it:
 *   cc tests/face/make_ycck_jpeg.c -ljpeg -o /tmp/make_ycck_jpeg && /tmp/make_ycck_jpeg OUT.jpg */
#include <stdio.h>
#include <stdlib.h>

#include <jpeglib.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s out.jpg\n", argv[0]);
    return 2;
  }
  enum { kWidth = 64, kHeight = 48 };
  static unsigned char cmyk[kHeight][kWidth * 4]; /* [H, W, 4], Adobe (inverted) CMYK */
  for (int y = 0; y < kHeight; ++y) {
    for (int x = 0; x < kWidth; ++x) {
      unsigned char* p = &cmyk[y][x * 4];
      p[0] = (unsigned char)(255 - x * 4);
      p[1] = (unsigned char)(255 - y * 5);
      p[2] = (unsigned char)((x * y) & 0xff);
      p[3] = (unsigned char)(200 + ((x + y) % 56));
    }
  }
  FILE* out = fopen(argv[1], "wb");
  if (out == NULL) return 1;
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  jpeg_stdio_dest(&cinfo, out);
  cinfo.image_width = kWidth;
  cinfo.image_height = kHeight;
  cinfo.input_components = 4;
  cinfo.in_color_space = JCS_CMYK;
  jpeg_set_defaults(&cinfo);
  jpeg_set_colorspace(&cinfo, JCS_YCCK); /* writes an Adobe marker with transform 2 */
  jpeg_set_quality(&cinfo, 90, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = cmyk[cinfo.next_scanline];
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  fclose(out);
  return 0;
}
