// MoCo's contrastive ops (kernels/contrastive.h): the InfoNCE loss of queries against their
// positive keys and a queue of negatives, and the queue's enqueue. Keys and queue are constants
// (the key encoder runs without a gradient), so the loss records a backward to the queries only.
// The keys and the queue are read again by the backward: the caller enqueues after backward().
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/check.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "kernels/contrastive.h"
#include "kernels/reduce.h"

namespace tessera::ops {

Var* infonce_loss(Graph& g, Var* q, const Tensor& k, const Tensor& queue, float temperature, const Tensor& accuracy) {
  const Shape &qs = q->value.shape, &ks = k.shape, &us = queue.shape;
  TS_CHECK(qs.ndim == 2 && qs[0] > 0 && qs[1] > 0, "infonce_loss: expected queries (N, D), found ", qs.str());
  TS_CHECK(ks == qs, "infonce_loss: keys ", ks.str(), " and queries ", qs.str(), " differ");
  TS_CHECK(us.ndim == 2 && us[0] > 0 && us[1] == qs[1], "infonce_loss: expected a queue (K, ", qs[1],
           ") for queries ", qs.str(), ", found ", us.str());
  // cuBLAS takes int sizes and leading dimensions (K + 1 and N (K + 1) elements per call).
  TS_CHECK(us[0] < INT_MAX && qs[0] * (us[0] + 1) < INT_MAX, "infonce_loss: queue ", us.str(), " with ", qs[0],
           " queries is too large (N (K + 1) must stay below 2^31)");
  TS_CHECK(temperature > 0 && std::isfinite(temperature), "infonce_loss: expected a temperature > 0, found ",
           temperature);
  TS_CHECK(k.dtype == DType::F32 && queue.dtype == DType::F32, "infonce_loss: keys and queue must be f32, found ",
           k.str(), " and ", queue.str());
  check_same_device("infonce_loss", q->value, k);
  check_same_device("infonce_loss", q->value, queue);
  if (accuracy.defined()) {
    TS_CHECK(accuracy.shape == Shape{1} && accuracy.dtype == DType::F32,
             "infonce_loss: expected accuracy f32 (1), found ", accuracy.str());
    check_same_device("infonce_loss", q->value, accuracy);
  }
  const int64_t n = qs[0], d = qs[1], kq = us[0];
  const float inv_temp = 1.0f / temperature;
  Tensor logits = g.workspace().alloc(Shape{n, kq + 1});
  Tensor row_loss = g.workspace().alloc(Shape{n});
  Tensor lse = g.workspace().alloc(Shape{n});
  Tensor correct = g.workspace().alloc(Shape{n});
  TS_DISPATCH(g.device(), infonce_forward, q->value.f32(), k.f32(), queue.f32(), logits.f32(), row_loss.f32(),
              lse.f32(), correct.f32(), n, kq, d, inv_temp);
  if (accuracy.defined())
    TS_DISPATCH(g.device(), sum_forward, correct.f32(), accuracy.f32(), n, 1.0f / static_cast<float>(n));
  Var* loss = g.make(Shape{1}, {q});
  TS_DISPATCH(g.device(), sum_forward, row_loss.f32(), loss->value.f32(), n, 1.0f / static_cast<float>(n));
  if (loss->requires_grad) {
    g.record("infonce_loss", q->name, [&g, q, k, queue, logits, lse, loss, n, kq, d, inv_temp] {
      Tensor dlogits = g.workspace().alloc(Shape{n, kq + 1});
      TS_DISPATCH(g.device(), infonce_backward, k.f32(), queue.f32(), logits.f32(), lse.f32(), g.grad(loss).f32(),
                  1.0f / static_cast<float>(n), dlogits.f32(), g.grad(q).f32(), n, kq, d, inv_temp);
    });
  }
  return loss;
}

namespace {

void check_enqueue(const Tensor& queue, const Tensor& keys) {
  const Shape &us = queue.shape, &ks = keys.shape;
  TS_CHECK(us.ndim == 2 && us[0] > 0 && us[1] > 0, "queue_enqueue: expected a queue (K, D), found ", us.str());
  TS_CHECK(ks.ndim == 2 && ks[0] > 0 && ks[1] == us[1], "queue_enqueue: expected keys (N, ", us[1],
           ") for the queue ", us.str(), ", found ", ks.str());
  TS_CHECK(us[0] % ks[0] == 0, "queue_enqueue: the batch of ", ks[0], " keys must divide the queue length ", us[0],
           " (MoCo's ring fills whole batches; choose --queue a multiple of --batch-size)");
  TS_CHECK(us[0] < INT32_MAX, "queue_enqueue: a queue of ", us[0], " rows is over the i32 pointer's range");
  TS_CHECK(queue.dtype == DType::F32 && keys.dtype == DType::F32, "queue_enqueue: queue and keys must be f32, found ",
           queue.str(), " and ", keys.str());
  check_same_device("queue_enqueue", queue, keys);
}

}  // namespace

void queue_enqueue(const Tensor& queue, const Tensor& keys, const Tensor& ptr, const int32_t* skip) {
  check_enqueue(queue, keys);
  TS_CHECK(ptr.shape == Shape{1} && ptr.dtype == DType::I32, "queue_enqueue: expected a pointer i32 (1), found ",
           ptr.str());
  check_same_device("queue_enqueue", queue, ptr);
  TS_DISPATCH(queue.device, queue_enqueue, queue.f32(), keys.f32(), queue.shape[0], keys.shape[0], keys.shape[1],
              ptr.i32(), skip);
}

int64_t queue_enqueue(const Tensor& queue, const Tensor& keys, int64_t ptr, const int32_t* skip) {
  check_enqueue(queue, keys);
  const int64_t k = queue.shape[0], n = keys.shape[0];
  TS_CHECK(ptr >= 0 && ptr < k && ptr % n == 0, "queue_enqueue: expected a pointer in [0, ", k,
           ") that is a multiple of ", n, ", found ", ptr);
  const OwnedTensor on_device(queue.device, Shape{1}, DType::I32);
  from_host(on_device.t, std::vector<int32_t>{static_cast<int32_t>(ptr)});
  queue_enqueue(queue, keys, on_device.t, skip);
  return (ptr + n) % k;
}

}  // namespace tessera::ops
