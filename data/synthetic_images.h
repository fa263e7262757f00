// Generated images for tests, benchmarks and `augment-grid --data synthetic`: a two-colour
// diagonal gradient with a few rectangles and discs of random colours, so crops, flips and
// colour changes are easy to see. Drawn from Philox(seed, kStreamTest): reproducible.
#pragma once

#include <cstdint>
#include <vector>

#include "data/dataset.h"

namespace tessera::data {

// n images as uint8 (n, channels, height, width); channels 1 (grey) or 3 (RGB).
std::vector<uint8_t> synthetic_images(int64_t n, int channels, int height, int width, uint64_t seed);

// The same as an unlabeled Dataset named "synthetic", with its channel mean / std.
Dataset synthetic_dataset(int64_t n, int channels, int height, int width, uint64_t seed);

}  // namespace tessera::data
