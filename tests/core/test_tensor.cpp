#include <catch2/catch.hpp>
#include <dlpack/dlpack.h>

#include <cmath>
#include <cstring>

#include "instantid/tensor.hpp"

using namespace instantid;

TEST_CASE("half and bfloat16 conversions round to nearest even", "[tensor]") {
  CHECK(float_to_half(1.0f) == 0x3C00);
  CHECK(half_to_float(0x3C00) == 1.0f);
  CHECK(float_to_half(65504.0f) == 0x7BFF);
  CHECK(std::isinf(half_to_float(float_to_half(1e6f))));
  // 1 + 2^-11 is halfway between 1 and the next half: ties to even (1.0).
  CHECK(float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);
  CHECK(float_to_bfloat16(1.0f) == 0x3F80);
  CHECK(bfloat16_to_float(0x3F80) == 1.0f);
  CHECK(float_to_bfloat16(1.0f + std::ldexp(1.0f, -8)) == 0x3F80);
}

TEST_CASE("TensorView::contiguous gives row-major strides", "[tensor]") {
  float buffer[24];
  const TensorView v = TensorView::contiguous(buffer, DType::kF32, Device{}, {2, 3, 4});
  CHECK(v.ndim == 3);
  CHECK(v.strides[0] == 12);
  CHECK(v.strides[1] == 4);
  CHECK(v.strides[2] == 1);
  CHECK(v.numel() == 24);
  CHECK(v.is_contiguous());
  CHECK(v.shape_str() == "[2, 3, 4]");
}

TEST_CASE("HostTensor::from_view reads strided half views", "[tensor]") {
  std::uint16_t buffer[6];
  for (int i = 0; i < 6; ++i) buffer[i] = float_to_half(static_cast<float>(i));
  TensorView v = TensorView::contiguous(buffer, DType::kF16, Device{}, {2, 3});
  // Transposed view [3, 2].
  std::swap(v.shape[0], v.shape[1]);
  std::swap(v.strides[0], v.strides[1]);
  const HostTensor t = HostTensor::from_view(v);
  REQUIRE(t.shape() == std::vector<std::int64_t>{3, 2});
  CHECK(t.values() == std::vector<float>{0, 3, 1, 4, 2, 5});
}

TEST_CASE("HostTensor refuses values that do not fit the shape", "[tensor]") {
  REQUIRE_THROWS_WITH(HostTensor({2, 2}, std::vector<float>(3)),
                      Catch::Contains("got 3, expected 4"));
  REQUIRE_THROWS_WITH(HostTensor({-1, 2}), Catch::Contains("negative dimension"));
}

TEST_CASE("DLPack export and import round-trip", "[tensor][dlpack]") {
  HostTensor t({2, 2}, std::vector<float>{1, 2, 3, 4});
  DLManagedTensor* managed = to_dlpack(std::move(t));
  const TensorView v = from_dlpack(managed->dl_tensor);
  CHECK(v.dtype == DType::kF32);
  CHECK(v.shape_str() == "[2, 2]");
  CHECK(static_cast<float*>(v.data)[3] == 4.0f);
  managed->deleter(managed);
}

TEST_CASE("DLPack import refuses unsupported dtypes and devices", "[tensor][dlpack]") {
  std::int64_t shape[1] = {4};
  int data[4] = {};
  DLTensor t{};
  t.data = data;
  t.ndim = 1;
  t.shape = shape;
  t.device = DLDevice{kDLCPU, 0};
  t.dtype = DLDataType{kDLInt, 32, 1};
  REQUIRE_THROWS_WITH(from_dlpack(t), Catch::Contains("expected float32, float16 or bfloat16"));
  t.dtype = DLDataType{kDLFloat, 32, 1};
  t.device = DLDevice{kDLOpenCL, 0};
  REQUIRE_THROWS_WITH(from_dlpack(t), Catch::Contains("expected kDLCPU"));
}
