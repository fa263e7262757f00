// Evaluation of a backbone from its frozen features, for any backbone (teacher, student, a
// randomly initialised baseline) and any program.
//
// Both protocols run on host feature matrices: extracting the features (a no-grad forward
// over a split, on whatever device trains) is the only device work, and the matrices are
// small (Fashion-MNIST with a width-16 ResNet-18: 60,000 x 128 floats). On the host the
// similarity matrix is one OpenBLAS sgemm per block of test rows, and the probe's steps are
// sgemms on a (batch x dim) block, so an evaluation costs seconds next to training.
//
//   kNN monitor (as lightly's benchmarks): rows L2-normalised, cosine similarity to every
//     train row, the k = 200 nearest vote for their class with weight exp(similarity / T),
//     T = 0.1; the prediction is the class with the largest summed weight.
//   Linear probe: features standardised with the train split's mean and standard deviation,
//     then a softmax classifier trained with Adam on mini-batches (cosine-decayed learning
//     rate, a fixed number of epochs, shuffles drawn from Philox), reported on the test split.
//     Deterministic: the same features and seed give the same accuracy on any machine with
//     the same BLAS.
#pragma once

#include <cstdint>
#include <vector>

namespace tessera {

struct FeatureSet {
  int64_t n = 0, dim = 0;
  std::vector<float> x;      // (n, dim) row-major
  std::vector<int32_t> y;    // (n) class ids in [0, num_classes)
};

struct KnnOptions {
  int k = 200;
  float temperature = 0.1f;
};
// Top-1 accuracy in percent of the weighted kNN vote of `test` against the bank `train`.
double knn_top1(const FeatureSet& train, const FeatureSet& test, int num_classes, const KnnOptions& opt = {});

struct LinearProbeOptions {
  int epochs = 30;
  int batch_size = 256;
  float lr = 1e-3f;            // Adam, cosine-decayed to 0 over all steps
  float weight_decay = 1e-5f;  // L2 on the weights (not the bias)
  uint64_t seed = 0;
};
struct LinearProbeResult {
  double train_top1 = 0, test_top1 = 0;  // percent
  double final_loss = 0;                 // mean train cross-entropy of the last epoch
};
LinearProbeResult linear_probe(const FeatureSet& train, const FeatureSet& test, int num_classes,
                               const LinearProbeOptions& opt = {});

}  // namespace tessera
