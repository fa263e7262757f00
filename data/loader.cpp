// The loader's machinery: a ring of staging slots filled in batch order by one background
// thread and drained in the same order by next().
//
//   producer (thread)                            consumer (next(), the training thread)
//   CPU run:                                     free the slot of the previous batch
//     wait for slot k % K to be free             wait for slot k % K to be ready  <- data wait
//     sample indices, run CPU transforms,        hand out the slot's tensors
//     gather labels into the slot; mark ready
//   CUDA run, two kinds of work, uploads first:
//     fill: wait for slot k % K to be free and   record "released" for batch k - 1 on the
//       its last copy done (blocking-sync          engine stream (the caller queued all its
//       event: the thread sleeps), fill it         work on it before calling next())
//     upload batch k once next() released        wait for slot k % K to be ready  <- data wait
//       batch k - 2: on the copy stream, wait    engine stream waits for the slot's copies
//       for that "released" event, copy the      (cudaStreamWaitEvent); CUDA transforms on the
//       slot into device batch k % 2, record     engine stream into device batch k % 2; free
//       the slot's "uploaded" event; ready       the slot (its copies are waited for on refill)
//
// Slot k % K only ever holds batch k, and batch k's contents depend only on the positions
// the producer reached by drawing batches 0..k-1 in order, so timing never changes a batch.
// Device batch k % 2 is rewritten (by batch k + 2) only after the engine stream has run the
// work queued on batch k, and the engine stream reads batch k only after its copies: the
// copy stream runs one batch ahead of the compute without a host synchronisation.
#include "data/loader.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include <omp.h>

#include "engine/check.h"
#include "engine/device.h"

#if TESSERA_CUDA
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"
#endif

namespace tessera::data {

namespace {

// Host staging: pinned (page-locked) for GPU runs, so cudaMemcpyAsync is a real asynchronous
// DMA instead of a staged synchronous copy; 64-byte aligned plain memory on the CPU.
class HostMemory {
 public:
  HostMemory(size_t bytes, bool pinned) : pinned_(pinned) {
    const size_t rounded = (bytes + 63) / 64 * 64;
    if (pinned_) {
#if TESSERA_CUDA
      CUDA_CHECK(cudaHostAlloc(&ptr_, rounded, cudaHostAllocDefault));
#endif
    } else {
      ptr_ = std::aligned_alloc(64, rounded);
      if (!ptr_) throw Error(cat("loader: out of host memory allocating ", rounded, " bytes of staging"));
    }
  }
  ~HostMemory() {
    if (!ptr_) return;
#if TESSERA_CUDA
    if (pinned_) {
      cudaFreeHost(ptr_);  // no check: destructors must not throw
      return;
    }
#endif
    std::free(ptr_);
  }
  HostMemory(const HostMemory&) = delete;
  HostMemory& operator=(const HostMemory&) = delete;
  char* data() const { return static_cast<char*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  bool pinned_;
};

// Carves 64-byte aligned pieces out of one allocation: first measuring, then for real.
struct Layout {
  size_t bytes = 0;
  size_t take(size_t n) {
    const size_t at = bytes;
    bytes += (n + 63) / 64 * 64;
    return at;
  }
};

}  // namespace

// ---- LoaderPosition --------------------------------------------------------------------

std::vector<int64_t> LoaderPosition::pack() const {
  std::vector<int64_t> v{batches};
  for (const SamplerPosition& p : streams) {
    v.push_back(p.epoch);
    v.push_back(p.index);
  }
  return v;
}

LoaderPosition LoaderPosition::unpack(const std::vector<int64_t>& v) {
  if (v.empty() || v.size() % 2 != 1 || v[0] < 0)
    throw Error(cat("loader position: expected [batches, epoch, index, ...] (an odd count >= 1), found ", v.size(),
                    " values"));
  LoaderPosition p;
  p.batches = v[0];
  for (size_t i = 1; i < v.size(); i += 2) {
    if (v[i] < 0 || v[i + 1] < 0) throw Error(cat("loader position: expected non-negative values, found ", v[i], ", ", v[i + 1]));
    p.streams.push_back(SamplerPosition{v[i], v[i + 1]});
  }
  return p;
}

// ---- Loader ----------------------------------------------------------------------------

struct Loader::Slot {
  enum class State { Free, Filled, Ready };  // Filled: staged on the host, not yet uploaded (CUDA)
  std::unique_ptr<HostMemory> staging;
  std::vector<Tensor> views;             // per view: host f32, undefined for CUDA transforms
  std::vector<Tensor> labels;            // per stream: host i32, undefined without labels
  std::vector<int64_t*> indices, epochs; // per stream: (B) in staging
  LoaderPosition after;                  // positions once this batch is drawn
  State state = State::Free;
#if TESSERA_CUDA
  // CUDA runs: recorded on the copy stream after this slot's copies; declared after staging,
  // so destroyed (and waited for) before it.
  std::unique_ptr<kernels::cuda::Event> uploaded;
#endif
};

#if TESSERA_CUDA
// One device copy of a batch: views (B, C, H, W) per view, labels (B) per stream, and per
// stream the batch's indices then epochs (int64) for the CUDA transforms.
struct DeviceBatch {
  std::vector<OwnedTensor> views, labels;
  Buffer keys;
  kernels::cuda::Event released{false};  // engine stream: the work queued on this batch is behind this
};
struct Loader::CudaState {
  int device = 0;  // the producer thread makes it current too
  kernels::cuda::Stream copy;
  DeviceBatch batches[2];
};
#else
struct Loader::CudaState {};
#endif

namespace {
// Samplers are built (and their arguments checked) in the constructor, used by the thread.
std::vector<IndexStream> make_samplers(const LoaderConfig& c) {
  std::vector<IndexStream> s;
  for (const LoaderStream& st : c.streams) s.emplace_back(st.pool, st.batch, c.seed, st.purpose, st.shuffle, st.drop_last);
  return s;
}
}  // namespace

Loader::Loader(LoaderConfig config, LoaderPosition start) : config_(std::move(config)), start_(std::move(start)) {
  const bool cuda = config_.device == Device::CUDA;
#if !TESSERA_CUDA
  if (cuda) no_cuda("Loader");
#endif
  if (config_.streams.empty() || config_.views.empty()) throw Error("loader: expected at least one stream and one view");
  if (config_.prefetch < 1) throw Error(cat("loader: expected prefetch >= 1, found ", config_.prefetch));
  if (config_.shards < 1 || config_.shard < 0 || config_.shard >= config_.shards)
    throw Error(cat("loader: expected shard in [0, ", config_.shards, "), found ", config_.shard));
  for (const LoaderStream& s : config_.streams)
    if (s.batch % config_.shards != 0)
      throw Error(cat("loader: a global batch of ", s.batch, " does not split evenly over ", config_.shards,
                      " ranks: expected a multiple of ", config_.shards));
  if (start_.streams.empty()) start_.streams.assign(config_.streams.size(), SamplerPosition{});
  if (start_.streams.size() != config_.streams.size())
    throw Error(cat("loader: a saved position for ", start_.streams.size(), " streams, expected ",
                    config_.streams.size(), " (a checkpoint of another kind of run?)"));
  for (const LoaderStream& s : config_.streams) {
    if (!s.dataset) throw Error("loader: a stream without a dataset");
    if (s.labels && !s.dataset->labeled()) throw Error(cat("loader: labels asked of ", s.dataset->name, ", which has none"));
    for (int64_t i : s.pool)
      if (i < 0 || i >= s.dataset->size)
        throw Error(cat("loader: expected pool indices in [0, ", s.dataset->size, ") of ", s.dataset->name, ", found ", i));
  }
  for (const LoaderView& v : config_.views) {
    if (v.stream < 0 || v.stream >= static_cast<int>(config_.streams.size()) || !v.transform)
      throw Error(cat("loader: a view of stream ", v.stream, " of ", config_.streams.size(), ", or without a transform"));
    if (v.transform->device() == Device::CUDA && !cuda)
      throw Error("loader: a CUDA transform needs a loader on the CUDA device");
  }
  samplers_ = make_samplers(config_);

  // Staging layout of one slot, then K = prefetch + 1 slots: one in the caller's hands, the
  // rest filled ahead.
  Layout layout;
  std::vector<size_t> view_at, label_at, index_at, epoch_at;
  for (const LoaderView& v : config_.views) {
    const LoaderStream& s = config_.streams[static_cast<size_t>(v.stream)];
    const Shape vs = v.transform->view_shape(*s.dataset);
    view_at.push_back(v.transform->device() == Device::CPU ? layout.take(size_t(local_batch(s) * vs.numel()) * 4) : 0);
  }
  for (const LoaderStream& s : config_.streams) {
    label_at.push_back(layout.take(size_t(local_batch(s)) * 4));
    index_at.push_back(layout.take(size_t(local_batch(s)) * 8));
    epoch_at.push_back(layout.take(size_t(local_batch(s)) * 8));
  }
  for (int k = 0; k <= config_.prefetch; ++k) {
    auto slot = std::make_unique<Slot>();
#if TESSERA_CUDA
    if (cuda) slot->uploaded = std::make_unique<kernels::cuda::Event>(/*blocking_sync=*/true);
#endif
    slot->staging = std::make_unique<HostMemory>(layout.bytes, cuda);
    char* base = slot->staging->data();
    for (size_t v = 0; v < config_.views.size(); ++v) {
      const LoaderView& lv = config_.views[v];
      const LoaderStream& s = config_.streams[static_cast<size_t>(lv.stream)];
      const Shape vs = lv.transform->view_shape(*s.dataset);
      slot->views.push_back(lv.transform->device() == Device::CPU
                                ? Tensor(base + view_at[v], Shape{local_batch(s), vs[0], vs[1], vs[2]}, DType::F32, Device::CPU)
                                : Tensor());
    }
    for (size_t i = 0; i < config_.streams.size(); ++i) {
      const LoaderStream& s = config_.streams[i];
      slot->labels.push_back(s.labels ? Tensor(base + label_at[i], Shape{local_batch(s)}, DType::I32, Device::CPU) : Tensor());
      slot->indices.push_back(reinterpret_cast<int64_t*>(base + index_at[i]));
      slot->epochs.push_back(reinterpret_cast<int64_t*>(base + epoch_at[i]));
    }
    slots_.push_back(std::move(slot));
  }

  // CUDA runs: two device copies of a batch (double buffering) and the copy stream.
  if (cuda) {
#if TESSERA_CUDA
    cuda_ = std::make_unique<CudaState>();
    CUDA_CHECK(cudaGetDevice(&cuda_->device));
    int64_t keys = 0;
    for (const LoaderStream& s : config_.streams) keys += 2 * local_batch(s);
    for (DeviceBatch& d : cuda_->batches) {
      d.keys = Buffer(Device::CUDA, size_t(keys) * 8);
      for (size_t v = 0; v < config_.views.size(); ++v) {
        const LoaderView& lv = config_.views[v];
        const LoaderStream& s = config_.streams[static_cast<size_t>(lv.stream)];
        const Shape vs = lv.transform->view_shape(*s.dataset);
        d.views.emplace_back(Device::CUDA, Shape{local_batch(s), vs[0], vs[1], vs[2]});
      }
      for (const LoaderStream& s : config_.streams)
        d.labels.emplace_back(Device::CUDA, s.labels ? Shape{local_batch(s)} : Shape{0}, DType::I32);
    }
#endif
  }

  batch_.views.resize(config_.views.size());
  batch_.labels.resize(config_.streams.size());
  batch_.indices.resize(config_.streams.size());
  batch_.epochs.resize(config_.streams.size());
  position_ = start_;
  delivered_ = start_.batches;
  released_below_ = start_.batches;
  thread_ = std::thread([this] { produce(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  thread_.join();
#if TESSERA_CUDA
  // The device batches are freed next: let the copies and the work queued on the batches end
  // first (unchecked: destructors must not throw).
  if (cuda_) {
    cudaStreamSynchronize(cuda_->copy.get());
    cudaStreamSynchronize(kernels::cuda::runtime().stream);
  }
#endif
}

int64_t Loader::batches_per_epoch() const { return samplers_[0].batches_per_epoch(); }

LoaderPosition Loader::position() const { return position_; }

void Loader::fill(Slot& slot, std::vector<SamplerPosition>* positions) {
  // Every rank draws the whole global batch (the same on every rank: the seed and the
  // positions are shared) and keeps its contiguous shard: rank r of R takes samples
  // [r B / R, (r + 1) B / R). Augmentations are keyed by (seed, image, epoch, view), not by
  // where a sample sits in the batch, so the ranks' shards together are exactly the batch
  // one process would have drawn.
  for (size_t s = 0; s < config_.streams.size(); ++s) {
    const int64_t local = local_batch(config_.streams[s]);
    drawn_indices_.resize(static_cast<size_t>(config_.streams[s].batch));
    drawn_epochs_.resize(drawn_indices_.size());
    samplers_[s].next_batch(&(*positions)[s], drawn_indices_.data(), drawn_epochs_.data());
    const size_t first = static_cast<size_t>(config_.shard * local);
    std::copy(drawn_indices_.begin() + first, drawn_indices_.begin() + first + local, slot.indices[s]);
    std::copy(drawn_epochs_.begin() + first, drawn_epochs_.begin() + first + local, slot.epochs[s]);
  }
  for (size_t v = 0; v < config_.views.size(); ++v) {
    const LoaderView& lv = config_.views[v];
    if (lv.transform->device() != Device::CPU) continue;
    const LoaderStream& s = config_.streams[static_cast<size_t>(lv.stream)];
    ViewRequest r;
    r.dataset = s.dataset;
    r.count = local_batch(s);
    r.indices = slot.indices[static_cast<size_t>(lv.stream)];
    r.epochs = slot.epochs[static_cast<size_t>(lv.stream)];
    r.seed = config_.seed;
    r.view = lv.view;
    lv.transform->apply(r, slot.views[v]);
  }
  for (size_t s = 0; s < config_.streams.size(); ++s) {
    if (!config_.streams[s].labels) continue;
    int32_t* y = slot.labels[s].i32();
    for (int64_t b = 0; b < local_batch(config_.streams[s]); ++b)
      y[b] = config_.streams[s].dataset->labels[static_cast<size_t>(slot.indices[s][b])];
  }
}

void Loader::upload(Slot& slot, int64_t k) {
#if TESSERA_CUDA
  DeviceBatch& d = cuda_->batches[k % 2];
  const cudaStream_t copy = cuda_->copy.get();
  d.released.wait_in(copy);  // the engine stream has run the work queued on batch k - 2
  auto h2d = [&](void* dst, const void* src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, copy));
  };
  char* keys = static_cast<char*>(d.keys.data());
  for (size_t s = 0; s < config_.streams.size(); ++s) {
    const size_t b = size_t(local_batch(config_.streams[s]));
    h2d(keys, slot.indices[s], b * 8);
    h2d(keys + b * 8, slot.epochs[s], b * 8);
    keys += 2 * b * 8;
  }
  for (size_t v = 0; v < config_.views.size(); ++v)
    if (config_.views[v].transform->device() == Device::CPU) h2d(d.views[v].t.ptr, slot.views[v].ptr, d.views[v].t.bytes());
  for (size_t s = 0; s < config_.streams.size(); ++s)
    if (config_.streams[s].labels) h2d(d.labels[s].t.ptr, slot.labels[s].ptr, d.labels[s].t.bytes());
  slot.uploaded->record(copy);
#else
  (void)slot, (void)k;
  no_cuda("loader upload");
#endif
}

void Loader::produce() {
  std::vector<SamplerPosition> positions = start_.streams;
  const int64_t k_slots = static_cast<int64_t>(slots_.size());
  const bool cuda = config_.device == Device::CUDA;
  int64_t to_fill = start_.batches, to_upload = start_.batches;
  try {
#if TESSERA_CUDA
    if (cuda) CUDA_CHECK(cudaSetDevice(cuda_->device));
#endif
    // CPU runs: this thread prepares batches on one core, beside the training thread's OpenMP
    // team that has all of them. A team of its own here would put more OpenMP threads on the
    // machine than it has cores, and libgomp then stops spinning at barriers (its "throttled"
    // spin count): every one of the step's hundreds of parallel regions would start with a
    // futex wake-up, which cost the BYOL demo 40% of its speed on 2 cores (bench/RESULTS.md,
    // "Threads"). GPU runs keep every core for the views: there the host waits on the device.
    if (!cuda) omp_set_num_threads(1);  // a per-thread setting: the training thread's team is unchanged
    for (;;) {
      bool upload_now = false;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] {
          if (stop_) return true;
          // Batch k goes into device batch k % 2 once next() has released batch k - 2.
          upload_now = cuda && to_upload < to_fill &&
                       (to_upload - 2 < start_.batches || released_below_ > to_upload - 2);
          return upload_now || slots_[static_cast<size_t>(to_fill % k_slots)]->state == Slot::State::Free;
        });
        if (stop_) return;
      }
      if (upload_now) {
        Slot& slot = *slots_[static_cast<size_t>(to_upload % k_slots)];
        upload(slot, to_upload);
        {
          std::lock_guard<std::mutex> lock(mutex_);
          slot.state = Slot::State::Ready;
        }
        changed_.notify_all();
        ++to_upload;
        continue;
      }
      Slot& slot = *slots_[static_cast<size_t>(to_fill % k_slots)];
#if TESSERA_CUDA
      if (cuda) slot.uploaded->synchronize();  // the copies of its last batch are done (sleeps)
#endif
      fill(slot, &positions);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        slot.after = LoaderPosition{positions, to_fill + 1};
        slot.state = cuda ? Slot::State::Filled : Slot::State::Ready;
      }
      changed_.notify_all();
      ++to_fill;
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    failure_ = std::current_exception();
    changed_.notify_all();
  }
}

const Batch& Loader::next() {
  const size_t k_slots = slots_.size();
  const size_t index = static_cast<size_t>(delivered_) % k_slots;
  Slot& slot = *slots_[index];
  const bool cuda = config_.device == Device::CUDA;
#if TESSERA_CUDA
  // The caller has queued all its work on the last batch: its device batch may be rewritten
  // once the engine stream gets past this point.
  if (cuda && delivered_ > start_.batches) cuda_->batches[(delivered_ - 1) % 2].released.record(kernels::cuda::runtime().stream);
#endif
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (held_ >= 0) slots_[static_cast<size_t>(held_)]->state = Slot::State::Free;  // hand the last slot back
    held_ = -1;
    released_below_ = delivered_;
    changed_.notify_all();
    const auto t0 = std::chrono::steady_clock::now();
    changed_.wait(lock, [&] { return slot.state == Slot::State::Ready || failure_; });
    wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (slot.state != Slot::State::Ready && failure_) std::rethrow_exception(failure_);
  }

  for (size_t s = 0; s < config_.streams.size(); ++s) {
    const int64_t b = local_batch(config_.streams[s]);
    batch_.indices[s].assign(slot.indices[s], slot.indices[s] + b);
    batch_.epochs[s].assign(slot.epochs[s], slot.epochs[s] + b);
  }
  batch_.number = delivered_;
  position_ = slot.after;  // before a CUDA run hands the slot back to the producer

  if (!cuda) {
    for (size_t v = 0; v < config_.views.size(); ++v) batch_.views[v] = slot.views[v];
    for (size_t s = 0; s < config_.streams.size(); ++s) batch_.labels[s] = slot.labels[s];
    held_ = static_cast<int>(index);  // the caller reads the staging itself until next()
  } else {
#if TESSERA_CUDA
    DeviceBatch& d = cuda_->batches[delivered_ % 2];
    slot.uploaded->wait_in(kernels::cuda::runtime().stream);  // the engine stream waits for the copies
    const int64_t* keys = static_cast<const int64_t*>(d.keys.data());
    std::vector<const int64_t*> keys_device;
    for (size_t s = 0; s < config_.streams.size(); ++s) {
      keys_device.push_back(keys);
      keys += 2 * local_batch(config_.streams[s]);
    }
    for (size_t v = 0; v < config_.views.size(); ++v) {
      const LoaderView& lv = config_.views[v];
      const size_t s = static_cast<size_t>(lv.stream);
      const Tensor& out = d.views[v].t;
      if (lv.transform->device() == Device::CUDA) {  // on the engine stream, after the copies
        ViewRequest r;
        r.dataset = config_.streams[s].dataset;
        r.count = local_batch(config_.streams[s]);
        r.indices = batch_.indices[s].data();
        r.epochs = batch_.epochs[s].data();
        r.indices_device = keys_device[s];
        r.epochs_device = keys_device[s] + r.count;
        r.seed = config_.seed;
        r.view = lv.view;
        lv.transform->apply(r, out);
      }
      batch_.views[v] = out;
    }
    for (size_t s = 0; s < config_.streams.size(); ++s)
      batch_.labels[s] = config_.streams[s].labels ? d.labels[s].t : Tensor();
    std::lock_guard<std::mutex> lock(mutex_);
    slot.state = Slot::State::Free;  // staging read; the producer waits for its copies before refilling
    changed_.notify_all();
#endif
  }
  delivered_++;
  return batch_;
}

// ---- the two recipes and evaluation ----------------------------------------------------

std::unique_ptr<Loader> make_byol_loader(const Dataset& d, int64_t batch, Transform& view1, Transform& view2,
                                         uint64_t seed, Device device, LoaderPosition start, int shard, int shards) {
  LoaderConfig c;
  c.shard = shard;
  c.shards = shards;
  c.streams.push_back(LoaderStream{&d, all_indices(d.size), batch, SamplerPurpose::Main, true, true, false});
  c.views = {LoaderView{0, &view1, 0}, LoaderView{0, &view2, 1}};
  c.seed = seed;
  c.device = device;
  return std::make_unique<Loader>(std::move(c), std::move(start));
}

std::unique_ptr<Loader> make_fixmatch_loader(const Dataset& labeled, const std::vector<int64_t>& subset,
                                             const Dataset& unlabeled, int64_t batch, int64_t mu,
                                             Transform& weak, Transform& strong, uint64_t seed, Device device,
                                             LoaderPosition start, int shard, int shards) {
  LoaderConfig c;
  c.shard = shard;
  c.shards = shards;
  // Batches run across epoch boundaries: 40 labels still fill a labeled batch of 64.
  c.streams.push_back(LoaderStream{&labeled, subset, batch, SamplerPurpose::Main, true, false, true});
  c.streams.push_back(
      LoaderStream{&unlabeled, all_indices(unlabeled.size), batch * mu, SamplerPurpose::Unlabeled, true, false,
                   unlabeled.labeled()});
  // The labeled batch's weak view is view 2, so it never repeats an unlabeled weak view.
  c.views = {LoaderView{0, &weak, 2}, LoaderView{1, &weak, 0}, LoaderView{1, &strong, 1}};
  c.seed = seed;
  c.device = device;
  return std::make_unique<Loader>(std::move(c), std::move(start));
}

void for_each_batch(const Dataset& d, int64_t batch, Transform& transform, Device device,
                    const std::function<void(const Tensor& images, const Tensor& labels, int64_t first)>& fn) {
  LoaderConfig c;
  c.streams.push_back(LoaderStream{&d, all_indices(d.size), std::min(batch, d.size), SamplerPurpose::Main, false,
                                   false, d.labeled()});
  c.views = {LoaderView{0, &transform, 0}};
  c.device = device;
  c.prefetch = 1;
  // An in-order stream of whole batches; the last batch's tail wraps into the next pass and is
  // cut off here, so every image is seen exactly once.
  Loader loader(std::move(c));
  for (int64_t first = 0; first < d.size; first += batch) {
    const Batch& b = loader.next();
    const int64_t n = std::min(batch, d.size - first);
    const Tensor& x = b.views[0];
    const Tensor images(x.ptr, Shape{n, x.shape[1], x.shape[2], x.shape[3]}, DType::F32, x.device);
    const Tensor labels = b.labels[0].defined() ? Tensor(b.labels[0].ptr, Shape{n}, DType::I32, b.labels[0].device)
                                                : Tensor();
    fn(images, labels, first);
  }
}

}  // namespace tessera::data
