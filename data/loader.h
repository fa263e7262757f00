// The batch loader: samples indices (data/sampler.h), turns images into float views through
// Transforms (data/transform.h) and hands the training loop ready batches on its device.
//
// A background thread prepares up to `prefetch` batches ahead in host staging memory (pinned
// with cudaHostAlloc for GPU runs, so uploads are true asynchronous DMA). GPU runs: the same
// thread uploads each batch on a copy stream of its own into one of two device batches
// (double buffering), so the upload of batch k + 1 overlaps the compute on batch k; next()
// makes the engine stream wait for that upload (an event, not a host wait), and the upload of
// batch k + 2 into batch k's buffer waits, on the copy stream, for the engine stream to finish
// the work queued on batch k. Host waits on copies use blocking-sync events: the thread sleeps
// instead of spinning a core. The time next() spends waiting for the thread is summed in
// wait_seconds(): the programs log it as the data-wait share.
//
// Deterministic: batch k depends only on the seed and the stream positions, never on thread
// timing (the thread prepares batches strictly in order). position() after batch k, given to
// a new Loader, continues with batch k + 1 exactly as the uninterrupted run would have.
//
//   auto loader = make_byol_loader(train, 256, view1, view2, seed, device, saved_position);
//   for (...) {
//     const Batch& b = loader->next();   // b.views[0], b.views[1]: f32 (256, C, H, W)
//     ...step...
//     checkpoint.loader = loader->position();
//   }
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "data/sampler.h"
#include "data/transform.h"
#include "engine/tensor.h"

namespace tessera::data {

// One sampled stream: its own pool, batch size, shuffle and position.
struct LoaderStream {
  const Dataset* dataset = nullptr;
  std::vector<int64_t> pool;  // dataset indices to draw from (all_indices, or a labeled subset)
  int64_t batch = 0;
  SamplerPurpose purpose = SamplerPurpose::Main;
  bool shuffle = true;
  bool drop_last = true;  // epochs line up with batches (see IndexStream)
  bool labels = false;    // deliver this stream's labels
};

// One output view: images of stream `stream` through `transform` (not owned), as view number
// `view` of each sample (ViewRequest::view).
struct LoaderView {
  int stream = 0;
  Transform* transform = nullptr;
  int view = 0;
};

struct LoaderConfig {
  std::vector<LoaderStream> streams;
  std::vector<LoaderView> views;
  uint64_t seed = 0;
  Device device = Device::CPU;  // where the batch tensors live
  int prefetch = 2;             // batches prepared ahead of the one in use (>= 1)
  // Data parallel (engine/distributed.h): this rank's shard of each global batch. Streams'
  // `batch` stays the global batch; the loader delivers batch / shards samples of it, and its
  // position is that of the global sequence (the same on every rank).
  int shard = 0, shards = 1;
};

// The resumable state of a loader: one position per stream and the batches delivered.
struct LoaderPosition {
  std::vector<SamplerPosition> streams;
  int64_t batches = 0;
  // As int64 values [batches, epoch0, index0, epoch1, index1, ...], for a checkpoint tensor.
  std::vector<int64_t> pack() const;
  static LoaderPosition unpack(const std::vector<int64_t>& v);  // an Error when malformed
  bool operator==(const LoaderPosition& o) const { return streams == o.streams && batches == o.batches; }
};

struct Batch {
  std::vector<Tensor> views;                  // per LoaderView: f32 (B_stream, C, H, W) on the device
  std::vector<Tensor> labels;                 // per stream: i32 (B_stream) on the device, or undefined
  std::vector<std::vector<int64_t>> indices;  // per stream: the dataset indices, host
  std::vector<std::vector<int64_t>> epochs;   // per stream: the epoch of each sample, host
  int64_t number = 0;                         // batches delivered before this one
};

class Loader {
 public:
  explicit Loader(LoaderConfig config, LoaderPosition start = {});
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The next batch. Its tensors stay valid until the next call; on CUDA, work queued on the
  // engine stream before the next call sees this batch (the buffer is rewritten only after
  // that work is done).
  const Batch& next();
  // Where the next batch starts: what a checkpoint saves after the step that used next().
  LoaderPosition position() const;
  double wait_seconds() const { return wait_seconds_; }
  int64_t batches_per_epoch() const;  // of stream 0

 private:
  struct Slot;
  struct CudaState;  // CUDA runs: the copy stream and the two device batches (loader.cpp)
  void produce();
  void fill(Slot& slot, std::vector<SamplerPosition>* positions);
  void upload(Slot& slot, int64_t k);  // CUDA: batch k's staging into device batch k % 2
  int64_t local_batch(const LoaderStream& s) const { return s.batch / config_.shards; }

  LoaderConfig config_;
  LoaderPosition start_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<IndexStream> samplers_;  // used by the thread only
  std::vector<int64_t> drawn_indices_, drawn_epochs_;  // the thread's: a global batch before sharding
  std::unique_ptr<CudaState> cuda_;
  Batch batch_;
  LoaderPosition position_;  // after the last batch next() returned
  int64_t delivered_ = 0;
  int held_ = -1;            // slot the caller's batch lives in
  double wait_seconds_ = 0;
  int64_t released_below_ = 0;  // CUDA: the engine stream's work on batches before this is queued

  std::mutex mutex_;
  std::condition_variable changed_;
  bool stop_ = false;
  std::exception_ptr failure_;
  std::thread thread_;
};

// `batch` is the global batch; `shard` / `shards` pick this rank's part (LoaderConfig).
std::unique_ptr<Loader> make_byol_loader(const Dataset& d, int64_t batch, Transform& view1, Transform& view2,
                                         uint64_t seed, Device device, LoaderPosition start = {}, int shard = 0,
                                         int shards = 1);

// FixMatch: views[0] labeled (B), labels[0]; views[1] unlabeled weak (mu B), views[2] strong.
// The unlabeled stream draws from all of `unlabeled`; when that dataset has labels they come as
// labels[1], for the pseudo-label accuracy the program logs (never for training).
std::unique_ptr<Loader> make_fixmatch_loader(const Dataset& labeled, const std::vector<int64_t>& subset,
                                             const Dataset& unlabeled, int64_t batch, int64_t mu,
                                             Transform& weak, Transform& strong, uint64_t seed, Device device,
                                             LoaderPosition start = {}, int shard = 0, int shards = 1);

// Evaluation: the whole dataset in order, synchronously, in batches of `batch` (the last one
// smaller): fn(images f32 (b, C, H, W) on device, labels i32 (b) on device or undefined,
// first dataset index of the batch).
void for_each_batch(const Dataset& d, int64_t batch, Transform& transform, Device device,
                    const std::function<void(const Tensor& images, const Tensor& labels, int64_t first)>& fn);

}  // namespace tessera::data
