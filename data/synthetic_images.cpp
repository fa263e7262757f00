#include "data/synthetic_images.h"

#include <algorithm>

#include "engine/check.h"
#include "kernels/common/philox.h"

namespace tessera::data {

std::vector<uint8_t> synthetic_images(int64_t n, int channels, int height, int width, uint64_t seed) {
  TS_CHECK(channels == 1 || channels == 3, "synthetic images: expected 1 or 3 channels, found ", channels);
  TS_CHECK(n >= 0 && height > 0 && width > 0, "synthetic images: bad size ", n, "x", height, "x", width);
  const int64_t plane = int64_t{height} * width;
  std::vector<uint8_t> out(static_cast<size_t>(n * channels * plane));
  for (int64_t i = 0; i < n; ++i) {
    kernels::PhiloxState rng(seed, kernels::philox_subsequence(kernels::kStreamTest, 1000), static_cast<uint64_t>(i) * 256);
    auto colour = [&](float* c) {
      for (int k = 0; k < 3; ++k) c[k] = 255.0f * rng.uniform();
    };
    float a[3], b[3];
    colour(a);
    colour(b);
    std::vector<float> rgb(static_cast<size_t>(3 * plane));
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x) {
        const float t = static_cast<float>(x + y) / static_cast<float>(width + height - 2);
        for (int k = 0; k < 3; ++k) rgb[k * plane + y * width + x] = a[k] + (b[k] - a[k]) * t;
      }
    const int shapes = 2 + static_cast<int>(rng.uniform() * 2.99f);
    for (int s = 0; s < shapes; ++s) {
      float c[3];
      colour(c);
      const bool disc = rng.uniform() < 0.5f;
      const float cy = rng.uniform() * height, cx = rng.uniform() * width;
      const float ry = (0.1f + 0.25f * rng.uniform()) * height, rx = (0.1f + 0.25f * rng.uniform()) * width;
      for (int y = 0; y < height; ++y)
        for (int x = 0; x < width; ++x) {
          const float dy = (y + 0.5f - cy) / ry, dx = (x + 0.5f - cx) / rx;
          const bool inside = disc ? dy * dy + dx * dx <= 1.0f : std::max(dy < 0 ? -dy : dy, dx < 0 ? -dx : dx) <= 1.0f;
          if (inside)
            for (int k = 0; k < 3; ++k) rgb[k * plane + y * width + x] = c[k];
        }
    }
    uint8_t* img = out.data() + i * channels * plane;
    for (int64_t p = 0; p < plane; ++p) {
      if (channels == 3) {
        for (int k = 0; k < 3; ++k) img[k * plane + p] = static_cast<uint8_t>(std::min(255.0f, rgb[k * plane + p] + 0.5f));
      } else {
        const float g = 0.299f * rgb[p] + 0.587f * rgb[plane + p] + 0.114f * rgb[2 * plane + p];
        img[p] = static_cast<uint8_t>(std::min(255.0f, g + 0.5f));
      }
    }
  }
  return out;
}

Dataset synthetic_dataset(int64_t n, int channels, int height, int width, uint64_t seed) {
  Dataset d;
  d.name = "synthetic";
  d.size = n;
  d.channels = channels;
  d.height = height;
  d.width = width;
  d.images = synthetic_images(n, channels, height, width, seed);
  channel_stats(d, &d.mean, &d.std);
  return d;
}

}  // namespace tessera::data
