#include <catch2/catch.hpp>

#include "instantid/layout.hpp"

using namespace instantid;

TEST_CASE("SDXL layout: 70 layers in checkpoint-key order with the spec's widths", "[layout]") {
  const ModelLayout layout = ModelLayout::sdxl();
  REQUIRE(layout.num_layers() == 70);
  int w640 = 0, w1280 = 0;
  for (int i = 0; i < layout.num_layers(); ++i) {
    REQUIRE(layout.layers[i].checkpoint_key == 2 * i + 1);
    (layout.layers[i].width == 640 ? w640 : w1280) += 1;
  }
  CHECK(w640 == 10);
  CHECK(w1280 == 60);
  CHECK(layout.layers[0].id == LayerId{BlockType::kInput, 4, 0});
  CHECK(layout.layers[4].id == LayerId{BlockType::kInput, 7, 0});
  CHECK(layout.layers[60].id == LayerId{BlockType::kMiddle, 0, 0});
  CHECK(layout.layers[69].id == LayerId{BlockType::kMiddle, 0, 9});
  CHECK(layout.index_of(LayerId{BlockType::kOutput, 5, 1}) == 59);
}

TEST_CASE("The middle block is (middle, 0): (middle, 1) is not a layer", "[layout]") {
  const ModelLayout layout = ModelLayout::sdxl();
  CHECK_FALSE(layout.find(LayerId{BlockType::kMiddle, 1, 0}).has_value());
  REQUIRE_THROWS_WITH(layout.index_of(LayerId{BlockType::kMiddle, 1, 0}),
                      Catch::Contains("got middle 1.0"));
}

TEST_CASE("Reduced layouts keep the table and divide widths", "[layout]") {
  const ModelLayout layout = ModelLayout::reduced(10, 64, 64, 1);
  CHECK(layout.layers[0].width == 64);
  CHECK(layout.layers[4].width == 128);
  CHECK(layout.dim == 64);
  REQUIRE_THROWS_WITH(ModelLayout::reduced(3, 64, 64, 1), Catch::Contains("got 3"));
  REQUIRE_THROWS_WITH(ModelLayout::reduced(10, 64, 100, 1), Catch::Contains("dim == heads * 64"));
}

TEST_CASE("Block type names round-trip and unknown names are refused", "[layout]") {
  CHECK(parse_block_type("middle") == BlockType::kMiddle);
  CHECK(std::string(block_type_name(BlockType::kOutput)) == "output");
  REQUIRE_THROWS_WITH(parse_block_type("mid"), Catch::Contains("got \"mid\""));
}
