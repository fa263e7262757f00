#include "data/transform.h"

#include "engine/check.h"

namespace tessera::data {

void NormalizeTransform::apply(const ViewRequest& r, const Tensor& out) {
  const Dataset& d = *r.dataset;
  const Shape want{r.count, d.channels, d.height, d.width};
  TS_CHECK(out.device == Device::CPU && out.shape == want, "normalize: expected f32", want.str(),
           " on cpu, found ", out.str());
  float* y = out.f32();
  const int64_t plane = int64_t{d.height} * d.width;
  for (int64_t b = 0; b < r.count; ++b) {
    const uint8_t* x = d.image(r.indices[b]);
    for (int c = 0; c < d.channels; ++c) {
      // One multiply-add per pixel: (x / 255 - m) / s = x * (1 / (255 s)) - m / s.
      const float scale = 1.0f / (255.0f * d.std[static_cast<size_t>(c)]);
      const float shift = -d.mean[static_cast<size_t>(c)] / d.std[static_cast<size_t>(c)];
      const uint8_t* xc = x + c * plane;
      float* yc = y + (b * d.channels + c) * plane;
      for (int64_t k = 0; k < plane; ++k) yc[k] = static_cast<float>(xc[k]) * scale + shift;
    }
  }
}

}  // namespace tessera::data
