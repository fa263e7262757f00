// CPU reference of kernels/augment.h: each image is one team of one worker running the shared
// pipeline (kernels/common/augment_pipeline.h); OpenMP spreads the images over the cores.
// Compiled with -ffp-contract=off (Makefile) so its float math matches the CUDA twin exactly.
#include "kernels/augment.h"

#include <stdexcept>
#include <string>

#include "kernels/common/augment_pipeline.h"

namespace kernels::cpu {

namespace {

struct SerialTeam {
  static constexpr int rank = 0;
  static constexpr int size = 1;
  void sync() {}
  void add(int32_t* counter, int32_t v) { *counter += v; }
  long long sum(long long v, unsigned long long*) { return v; }
  template <class F>
  void grid(int rows, int cols, F f) {
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) f(r, c);
  }
};

}  // namespace

void augment(const uint8_t* images, int64_t num_images, const int64_t* indices, const int64_t* epochs, int64_t n,
             const AugmentSpec& spec, float* out, float* scratch) {
  const std::string problem = augment_spec_problem(spec);
  if (!problem.empty()) throw std::invalid_argument("augment: " + problem);
  // Before the parallel loop: an exception may not leave an OpenMP region.
  for (int64_t i = 0; i < n; ++i)
    if (indices[i] < 0 || indices[i] >= num_images)
      throw std::out_of_range("augment: image index " + std::to_string(indices[i]) + " at batch position " +
                              std::to_string(i) + ", expected in [0, " + std::to_string(num_images) + ")");
  const int64_t in_size = int64_t{spec.channels} * spec.in_h * spec.in_w;
  const int64_t out_size = int64_t{spec.channels} * spec.out_h * spec.out_w;
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t i = 0; i < n; ++i) {
    SerialTeam team;
    AugmentShared shared;
    augment_image(team, spec, images + indices[i] * in_size, epochs[i], indices[i], out + i * out_size,
                  scratch + i * out_size, shared);
  }
}

}  // namespace kernels::cpu
