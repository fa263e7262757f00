// Backend-ops cases for MoCo's contrastive ops (engine/ops_contrastive.cpp): InfoNCE against a
// queue and the queue's enqueue; plus what the gradient check cannot see: every case's loss,
// accuracy and query gradient against a float64 reference written from the definition, a
// hand-computed case that pins the positive index and the temperature, one where the first
// negative wins with logits too large for exp, the ring's wrap-around (also inside a batch, from
// a device pointer) and the shape errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/ops.h"
#include "tests/op_case.h"

namespace tessera::testing {

namespace {

InputSpec queries(Shape s, float range = 1.0f) { return InputSpec{s, InputSpec::Uniform, true, -range, range, 0, 0.0f}; }
InputSpec constant(Shape s, float range = 1.0f) {
  return InputSpec{s, InputSpec::Uniform, false, -range, range, 0, 0.0f};
}

OpCase make_case(const char* name, std::vector<InputSpec> inputs, std::function<Var*(CaseContext&)> build) {
  OpCase c;
  c.name = name;
  c.inputs = std::move(inputs);
  c.build = std::move(build);
  return c;
}

// The temperature of each InfoNCE case, by name (the float64 reference below reads it too).
float case_temperature(const std::string& name) {
  if (name == "infonce_t007") return 0.07f;
  if (name == "infonce_aligned") return 0.2f;
  return 0.5f;
}

// InfoNCE as a case: inputs q (grad), k, queue; the accuracy is an extra output.
Var* infonce_case(CaseContext& k, const std::string& name) {
  Tensor accuracy = k.buffer(Shape{1}, -1.0f);
  return ops::infonce_loss(k.g, k.in[0], k.in[1]->value, k.in[2]->value, case_temperature(name), accuracy);
}

// Enqueue as a case: input 0 is the queue's old contents, input 1 the keys; the new contents
// are the output. ptr 4 of K 8 with N 4 fills the second half.
Var* enqueue_case(CaseContext& k, int64_t ptr) {
  const Tensor& old = k.in[0]->value;
  Tensor queue = k.g.workspace().alloc(old.shape);
  copy(queue, old);
  const int64_t next = ops::queue_enqueue(queue, k.in[1]->value, ptr);
  TS_CHECK(next == (ptr + k.in[1]->value.shape[0]) % old.shape[0], "queue_enqueue returned pointer ", next);
  return k.g.input(queue);
}

}  // namespace

TS_OP_CASES(contrastive_cases) {
  std::vector<OpCase> cases;
  auto infonce = [&cases](const char* name, std::vector<InputSpec> inputs) {
    const std::string n = name;
    cases.push_back(make_case(name, std::move(inputs), [n](CaseContext& k) { return infonce_case(k, n); }));
  };
  infonce("infonce", {queries({4, 16}), constant({4, 16}), constant({24, 16})});
  infonce("infonce_n1_k1", {queries({1, 8}), constant({1, 8}), constant({1, 8})});
  // More queue rows than a warp has lanes and an odd width (the CUDA row loops' tails).
  infonce("infonce_k100_d33", {queries({3, 33}), constant({3, 33}), constant({100, 33})});
  // MoCo v1's temperature on small inputs: logits stay in a range the finite differences resolve.
  infonce("infonce_t007", {queries({4, 16}, 0.15f), constant({4, 16}, 0.15f), constant({32, 16}, 0.15f)});
  // Keys near their queries (training's regime: the positive wins most rows).
  infonce("infonce_aligned", {queries({5, 16}, 0.5f), noisy_copy({5, 16}, 0, 1.0f, 0.1f, /*grad=*/false),
                              constant({40, 16}, 0.3f)});
  for (int64_t ptr : {0, 4}) {
    OpCase c = make_case(ptr == 0 ? "queue_enqueue_front" : "queue_enqueue_back", {constant({8, 6}), constant({4, 6})},
                         [ptr](CaseContext& k) { return enqueue_case(k, ptr); });
    c.differentiable = false;
    cases.push_back(c);
  }
  return cases;
}

// ---- against a float64 reference --------------------------------------------------------

namespace {

const OpCase& find_case(const char* name) {
  for (const OpCase& c : op_cases())
    if (c.name == name) return c;
  throw Error(std::string("no op case ") + name);
}

struct Reference {
  double loss = 0, accuracy = 0;
  std::vector<double> dq;  // d mean-loss / d q, (N, D)
};

// The definition, in double: logits_i = [q_i.k_i, q_i.u_j] / T, CE with label 0, mean over rows.
Reference infonce_reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& u,
                            int64_t n, int64_t kq, int64_t d, double t) {
  Reference r;
  r.dq.assign(static_cast<size_t>(n * d), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> x(static_cast<size_t>(kq + 1));
    auto dot = [&](const float* a, const float* b) {
      double s = 0;
      for (int64_t c = 0; c < d; ++c) s += static_cast<double>(a[c]) * b[c];
      return s;
    };
    x[0] = dot(&q[i * d], &k[i * d]) / t;
    for (int64_t j = 0; j < kq; ++j) x[j + 1] = dot(&q[i * d], &u[j * d]) / t;
    double m = x[0], sum = 0;
    bool positive_wins = true;
    for (double v : x) m = std::max(m, v);
    for (size_t j = 1; j < x.size(); ++j) positive_wins = positive_wins && x[j] <= x[0];
    for (double v : x) sum += std::exp(v - m);
    const double lse = m + std::log(sum);
    r.loss += (lse - x[0]) / static_cast<double>(n);
    r.accuracy += positive_wins ? 1.0 / static_cast<double>(n) : 0.0;
    for (int64_t j = 0; j <= kq; ++j) {
      const double w = (std::exp(x[j] - lse) - (j == 0 ? 1.0 : 0.0)) / (t * static_cast<double>(n));
      const float* key = j == 0 ? &k[i * d] : &u[(j - 1) * d];
      for (int64_t c = 0; c < d; ++c) r.dq[i * d + c] += w * key[c];
    }
  }
  return r;
}

class ContrastiveTest : public ::testing::Test {
 protected:
  Workspace ws{Device::CPU};
  Graph g{ws};
  std::vector<OwnedTensor> owned;
  Tensor f32(Shape s, const std::vector<float>& v) {
    owned.emplace_back(Device::CPU, s);
    from_host(owned.back().t, v);
    return owned.back().t;
  }
  Var* param(Shape s, const std::vector<float>& v) {
    Tensor value = f32(s, v);
    owned.emplace_back(Device::CPU, s);
    fill_zero(owned.back().t);
    return g.param(value, owned.back().t, "q");
  }
  static float scalar(const Tensor& t) { return to_host_f32(t)[0]; }
};

}  // namespace

// Every InfoNCE case, on the CPU: loss, accuracy and dq equal the float64 definition. The
// gradient check only proves the backward matches the forward; this proves the forward is
// InfoNCE (positive at 0, divided by T, mean over rows).
TEST_F(ContrastiveTest, EveryCaseMatchesTheFloat64Definition) {
  int checked = 0;
  double accuracy_seen = 0;
  for (const char* name : {"infonce", "infonce_n1_k1", "infonce_k100_d33", "infonce_t007", "infonce_aligned"}) {
    const OpCase& c = find_case(name);
    const std::vector<float> q = case_input(c, 0), k = case_input(c, 1), u = case_input(c, 2);
    const int64_t n = c.inputs[0].shape[0], d = c.inputs[0].shape[1], kq = c.inputs[2].shape[0];
    const float t = case_temperature(name);
    const Reference want = infonce_reference(q, k, u, n, kq, d, t);
    g.clear();
    Var* qv = param({n, d}, q);
    Tensor accuracy = f32({1}, {-1});
    Var* loss = ops::infonce_loss(g, qv, f32({n, d}, k), f32({kq, d}, u), t, accuracy);
    EXPECT_NEAR(scalar(loss->value), want.loss, 1e-5 * std::max(1.0, want.loss)) << name;
    EXPECT_NEAR(scalar(accuracy), want.accuracy, 1e-6) << name;
    g.backward(loss);
    const std::vector<float> dq = to_host_f32(qv->grad);
    double scale = 0;
    for (double v : want.dq) scale = std::max(scale, std::fabs(v));
    for (size_t e = 0; e < dq.size(); ++e) EXPECT_NEAR(dq[e], want.dq[e], 1e-5 * std::max(scale, 1e-3)) << name << " dq[" << e << "]";
    accuracy_seen += want.accuracy;
    ++checked;
  }
  EXPECT_EQ(checked, 5);
  // infonce_aligned exists to reach rows the positive wins: the accuracy path sees both values.
  const OpCase& aligned = find_case("infonce_aligned");
  const Reference r = infonce_reference(case_input(aligned, 0), case_input(aligned, 1), case_input(aligned, 2), 5, 40,
                                        16, 0.2);
  EXPECT_GE(r.accuracy, 0.6);
  EXPECT_GT(accuracy_seen, 0.0);
}

// By hand: q = e1, k = e1, queue = {e2, -e1, 2 e1}; T = 0.5 gives logits {2, 0, -2, 4}, so
// loss = log(e^2 + 1 + e^-2 + e^4) - 2 and the positive does not win (the last key does). A
// loss read at another index, a missing or squared 1 / T, or a max taken over the negatives
// only gives other numbers.
TEST_F(ContrastiveTest, PositiveIndexAndTemperatureByHand) {
  Var* q = param({1, 2}, {1, 0});
  Tensor k = f32({1, 2}, {1, 0});
  Tensor queue = f32({3, 2}, {0, 1, -1, 0, 2, 0});
  Tensor accuracy = f32({1}, {-1});
  Var* loss = ops::infonce_loss(g, q, k, queue, 0.5f, accuracy);
  const double lse = std::log(std::exp(2.0) + 1.0 + std::exp(-2.0) + std::exp(4.0));
  EXPECT_NEAR(scalar(loss->value), lse - 2.0, 1e-6);
  EXPECT_EQ(scalar(accuracy), 0.0f);
  g.backward(loss);
  // dq = (1 / T) sum_j (p_j - [j == 0]) key_j.
  const double p0 = std::exp(2.0 - lse), p1 = std::exp(0.0 - lse), p2 = std::exp(-2.0 - lse), p3 = std::exp(4.0 - lse);
  const std::vector<float> dq = to_host_f32(q->grad);
  EXPECT_NEAR(dq[0], 2.0 * ((p0 - 1.0) * 1 + p2 * -1 + p3 * 2), 1e-6);
  EXPECT_NEAR(dq[1], 2.0 * p1, 1e-6);

  // Accuracy: row 0's positive wins (5 against 2.5), row 1 ties with a negative (2.5 each: the
  // first maximum is the positive, it counts), row 2's loses (1.25 against 2.5): 2 of 3.
  g.clear();
  Var* q3 = param({3, 2}, {1, 0, 1, 0, 1, 0});
  Tensor acc3 = f32({1}, {-1});
  ops::infonce_loss(g, q3, f32({3, 2}, {1, 0, 0.5f, 0, 0.25f, 0}), f32({2, 2}, {0, 1, 0.5f, 0}), 0.2f, acc3);
  EXPECT_NEAR(scalar(acc3), 2.0 / 3.0, 1e-6);
}

// The first negative (logit 1) wins, by far: q = k = e1, queue = {100 e1, e2}, T = 0.5 give logits
// {2, 200, 0}. The random cases rarely have logit 1 as the unique row maximum, so a row maximum
// that skipped it went unseen: the accuracy counted the positive as the winner and exp(198)
// overflowed the float sum. By hand: lse = 200 (to float precision), loss = 198, accuracy 0,
// dq = (1 / T) sum_j (p_j - [j == 0]) key_j = 2 ((0 - 1) e1 + 1 * 100 e1) = (198, 0).
TEST_F(ContrastiveTest, FirstNegativeWinsWithHugeLogits) {
  Var* q = param({1, 2}, {1, 0});
  Tensor accuracy = f32({1}, {-1});
  Var* loss = ops::infonce_loss(g, q, f32({1, 2}, {1, 0}), f32({2, 2}, {100, 0, 0, 1}), 0.5f, accuracy);
  EXPECT_NEAR(scalar(loss->value), 198.0, 1e-4);
  EXPECT_EQ(scalar(accuracy), 0.0f);
  g.backward(loss);
  const std::vector<float> dq = to_host_f32(q->grad);
  EXPECT_NEAR(dq[0], 198.0, 1e-4);
  EXPECT_NEAR(dq[1], 0.0, 1e-6);
}

TEST_F(ContrastiveTest, EnqueueWrapsTheRingAndRefusesBatchesThatDoNotDivideIt) {
  Tensor queue = f32({4, 2}, {0, 0, 1, 1, 2, 2, 3, 3});
  EXPECT_EQ(ops::queue_enqueue(queue, f32({2, 2}, {9, 9, 8, 8}), 2), 0);  // the last two rows, pointer back to 0
  EXPECT_EQ(to_host_f32(queue), (std::vector<float>{0, 0, 1, 1, 9, 9, 8, 8}));
  EXPECT_EQ(ops::queue_enqueue(queue, f32({2, 2}, {7, 7, 6, 6}), 0), 2);
  EXPECT_EQ(to_host_f32(queue), (std::vector<float>{7, 7, 6, 6, 9, 9, 8, 8}));
  auto expect_error = [](auto op, const char* part) {
    try {
      op();
      ADD_FAILURE() << "expected a tessera::Error mentioning " << part;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error([&] { ops::queue_enqueue(queue, f32({3, 2}, std::vector<float>(6, 0)), 0); }, "must divide the queue length 4");
  expect_error([&] { ops::queue_enqueue(queue, f32({2, 2}, std::vector<float>(4, 0)), 1); }, "multiple of 2");
  expect_error([&] { ops::queue_enqueue(queue, f32({2, 3}, std::vector<float>(6, 0)), 0); }, "(2, 3)");
}

// kernels/contrastive.h: row i goes to (ptr + i) mod K. The host-pointer overload only takes
// multiples of the batch, where a batch never straddles the end; the device-pointer one takes
// any position (a checkpoint's). From ptr 3 of K 4 the two keys go to rows 3 and 0, ptr to 1,
// and nothing is written past the queue (two guard rows after it in the same allocation).
TEST_F(ContrastiveTest, EnqueueFromADevicePointerWrapsInsideTheBatch) {
  OwnedTensor storage(Device::CPU, Shape{6, 2}), ptr(Device::CPU, Shape{1}, DType::I32);
  from_host(storage.t, std::vector<float>{0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1});
  from_host(ptr.t, std::vector<int32_t>{3});
  const Tensor queue(storage.t.ptr, Shape{4, 2}, DType::F32, Device::CPU);
  ops::queue_enqueue(queue, f32({2, 2}, {9, 9, 8, 8}), ptr.t, nullptr);
  EXPECT_EQ(to_host_f32(storage.t), (std::vector<float>{8, 8, 1, 1, 2, 2, 9, 9, -1, -1, -1, -1}));
  EXPECT_EQ(to_host_i32(ptr.t), std::vector<int32_t>{1});
}

TEST_F(ContrastiveTest, ShapeErrorsNameBothShapes) {
  Var* q = param({2, 4}, std::vector<float>(8, 0.1f));
  auto expect_naming = [](auto op, std::initializer_list<const char*> parts) {
    try {
      op();
      ADD_FAILURE() << "expected a tessera::Error";
    } catch (const Error& e) {
      for (const char* s : parts) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what();
    }
  };
  Tensor queue = f32({3, 4}, std::vector<float>(12, 0));
  expect_naming([&] { ops::infonce_loss(g, q, f32({3, 4}, std::vector<float>(12, 0)), queue, 0.2f); },
                {"keys", "(3, 4)", "(2, 4)"});
  expect_naming([&] { ops::infonce_loss(g, q, f32({2, 4}, std::vector<float>(8, 0)), f32({3, 5}, std::vector<float>(15, 0)), 0.2f); },
                {"queue", "(3, 5)", "(2, 4)"});
  expect_naming([&] { ops::infonce_loss(g, q, f32({2, 4}, std::vector<float>(8, 0)), queue, 0.0f); },
                {"temperature", "0"});
}

}  // namespace tessera::testing
