// FixMatch as in REFERENCE.md, with a smoothed teacher:
//
//   each step k:  x = [labeled (B) | unlabeled weak (mu B) | unlabeled strong (mu B)]
//                 logits = student(x), train-mode BN over the whole concatenated batch
//                 q = softmax(weak rows)  (or of the teacher's weak logits, --pseudo-labels teacher)
//                 pseudo-label = argmax q, mask = max q >= threshold
//                 loss = CE(labeled rows, labels) + lambda_u (1 / mu B) sum mask * CE(strong rows, pseudo-label)
//                 backward, SGD Nesterov at lr_0 cos(7 pi k / 16 K), then teacher <- smoother(student, k)
//
// Both terms are one weighted cross-entropy over the concatenated logits: labeled rows weigh
// N / B, weak rows 0 and strong rows lambda_u N / (mu B) mask, so (1 / N) sum w CE is exactly
// the sum above. The weak rows carry no gradient (weight 0), as the reference's detach.
// With --lambda-u 0 the unlabeled stream is not loaded at all: supervised training on the
// same labeled batches (same subset, same order, same augmentations).
//
// A step never waits for the device. The per-row labels and weights (and the mask, the
// pseudo-labels and the counts of kept and correct pseudo-labels) are built on the device by
// kernels/fixmatch_targets.h from argmax_max_prob's output; the unlabeled images' true labels
// come with the batch (the loader uploads them like the labeled ones, asynchronously). Each
// step's two logged losses and two counts go to its slot in small device buffers, read to the
// host only when a metrics line is written (every --log-every steps and the last step) or a
// checkpoint is saved; the finiteness check runs there, over every step since the last read,
// naming the first bad step. So a non-finite loss stops the run at the next log line or
// checkpoint rather than at once, and never reaches a checkpoint.
//
// Checkpoint (last.safetensors):
//   (no prefix)      the teacher, PyTorch names: the model evaluated and exported
//   student.         the student
//   optim.           SGD momentum buffer and step count
//   smoothing.*      the smoother's state (metadata)
//   run.loader       loader position (int64); run.* metadata from TrainingRun
#include "apps/fixmatch/fixmatch.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/sampler.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "engine/optimizer.h"
#include "engine/schedule.h"
#include "engine/teacher.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"
#include "kernels/fixmatch_targets.h"
#include "models/model.h"

namespace tessera {

namespace {

struct FixMatchConfig {
  RunOptions run;
  std::string data = "fashion-mnist";
  int64_t labels = 40;
  // model
  std::string arch = "wrn-28-2";
  std::string stem = "cifar";
  int width = 64;
  // FixMatch
  int64_t batch_size = 64;
  int64_t mu = 7;
  double threshold = 0.95;
  double lambda_u = 1.0;
  int64_t steps = int64_t{1} << 20;
  double lr = 0.03;
  double sgd_momentum = 0.9;
  double weight_decay = 5e-4;
  // teacher
  std::string smoothing = "sts";
  std::string granularity = "tensor";
  float preserve_prob = 0.5f;
  float momentum = 0.999f;
  std::string bn_buffers = "copy";
  std::string pseudo_labels = "student";
  // evaluation and invocation
  int64_t eval_every = 1000;
  int64_t eval_batch = 500;
  int64_t stop_after = 0;
};

void add_fixmatch_options(Options& o, FixMatchConfig& c) {
  o.section("Data");
  o.add("data", &c.data, "dataset KIND[:PATH] (fashion-mnist, mnist, cifar10, cifar100, stl10, folder)");
  o.add("labels", &c.labels, "labeled images, the same number per class, chosen by --seed").min(1);
  o.section("Model");
  o.add("arch", &c.arch, "wrn-<depth>-<k> (depth 6n+4: wrn-10-2, wrn-28-2, wrn-28-8), resnet18, resnet34, resnet50");
  o.choice("stem", &c.stem, {"cifar", "imagenet"}, "ResNet stem (WideResNets have their own)");
  o.add("width", &c.width, "ResNet base width").min(1);
  o.section("FixMatch");
  o.add("batch-size", &c.batch_size, "labeled images per step").min(1);
  o.add("mu", &c.mu, "unlabeled images per labeled image in a step").min(1);
  o.add("threshold", &c.threshold, "confidence a pseudo-label needs to count (tau)").min(0, false).max(1);
  o.add("lambda-u", &c.lambda_u, "weight of the unlabeled loss (0: supervised-only baseline)").min(0);
  o.add("steps", &c.steps, "training steps K").min(1);
  o.add("lr", &c.lr, "SGD learning rate, decayed as lr cos(7 pi k / 16 K)").min(0, false);
  o.add("sgd-momentum", &c.sgd_momentum, "SGD Nesterov momentum").min(0).max(1, false);
  o.add("weight-decay", &c.weight_decay, "L2 weight decay (not on biases and BatchNorm)").min(0);
  o.section("Teacher");
  o.choice("smoothing", &c.smoothing, {"none", "tma", "se", "sts"}, "teacher smoothing");
  o.choice("granularity", &c.granularity, {"tensor", "channel", "element"}, "what one SE / STS draw keeps or updates");
  o.add("preserve-prob", &c.preserve_prob, "SE / STS: probability a fragment keeps its teacher value").min(0).max(1, false);
  o.add("momentum", &c.momentum, "TMA / STS momentum (constant)").min(0).max(1, false);
  o.choice("bn-buffers", &c.bn_buffers, {"copy", "own", "ema"}, "teacher BatchNorm statistics: copied from the student, its own, or smoothed");
  o.choice("pseudo-labels", &c.pseudo_labels, {"student", "teacher"},
           "who labels the weak views: the student (FixMatch) or the smoothed teacher (mean-teacher style)");
  o.section("Evaluation");
  o.add("eval-every", &c.eval_every, "steps between test-set evaluations of teacher and student (0: at the end only)").min(0);
  o.add("eval-batch", &c.eval_batch, "images per evaluation batch").min(1);
  o.add("stop-after", &c.stop_after, "stop (with a checkpoint) after this step, to continue with --resume (0: never)").min(0);
  add_run_options(o, c.run);
}

// Independent seeds for the parts of a run, from the run's seed (one Philox draw each).
uint64_t part_seed(uint64_t seed, uint32_t part) {
  kernels::PhiloxState s(seed, kernels::philox_subsequence(kernels::kStreamInit, (uint64_t{2} << 40) + part), 0);
  const uint64_t hi = s.next_u32();
  return (hi << 32) | s.next_u32();
}
enum Part : uint32_t { kStudent = 0, kTeacherMasks = 1 };

// Top-1 test accuracy in percent: eval-mode BN, no gradient, normalised images only.
double test_accuracy(Model& m, const data::Dataset& test, int64_t batch) {
  data::NormalizeTransform normalize;
  Workspace ws(m.device());
  Graph g(ws);
  NoGradScope no_grad(g);
  int64_t correct = 0;
  data::for_each_batch(test, batch, normalize, m.device(), [&](const Tensor& images, const Tensor&, int64_t first) {
    ws.reset();
    g.clear();
    const int64_t n = images.shape[0];
    Var* logits = m.forward(g, g.input(images, "images"), false);
    const Tensor pred = ws.alloc(Shape{n}, DType::I32), prob = ws.alloc(Shape{n});
    ops::argmax_max_prob(logits->value, pred, prob);
    const std::vector<int32_t> p = to_host_i32(pred);
    for (int64_t i = 0; i < n; ++i) correct += p[static_cast<size_t>(i)] == test.labels[static_cast<size_t>(first + i)];
  });
  return 100.0 * static_cast<double>(correct) / static_cast<double>(test.size);
}

// Rows [begin, begin + rows) of a row-major (N, K) f32 tensor, as a view.
Tensor rows(const Tensor& t, int64_t begin, int64_t count) {
  const int64_t k = t.numel() / t.shape[0];
  return Tensor(t.f32() + begin * k, Shape{count, k}, DType::F32, t.device);
}

// Means over the steps since the last log line.
struct Window {
  double sup = 0, unsup = 0, mask = 0, pseudo_acc = 0;
  int64_t steps = 0;
  void clear() { *this = Window{}; }
  double mean(double v) const { return steps > 0 ? v / static_cast<double>(steps) : 0.0; }
};

std::string fixed2(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

}  // namespace

int fixmatch_main(int argc, const char* const* argv) {
  const auto started = std::chrono::steady_clock::now();
  FixMatchConfig c;
  Options options("fixmatch", "FixMatch semi-supervised training with a TMA / SE / STS smoothed teacher.");
  add_fixmatch_options(options, c);
  if (!options.parse(argc, argv)) return 0;
  TrainingRun run("fixmatch", options, c.run);  // on --resume: the saved configuration, checked
  if (c.run.threads > 0) omp_set_num_threads(c.run.threads);
  const uint64_t seed = static_cast<uint64_t>(c.run.seed);

  std::string device_note;
  const Device device = select_device(c.run.device, &device_note);
  std::fprintf(stderr, "%s\n", device_note.c_str());

  // Data and every check that needs it, before anything is written.
  const data::DataSpec spec = data::parse_data_spec(c.data);
  const data::Dataset train = data::load_dataset(spec, data::Split::Train);
  const data::Dataset test = data::load_dataset(spec, data::Split::Test);
  if (!train.labeled()) throw UsageError(cat("--data ", c.data, ": the train split has no labels"));
  if (c.labels > train.size)
    throw UsageError(cat("--labels ", c.labels, " is larger than the training set (", train.size, " images in ",
                         train.name, ")"));
  if (c.labels % train.num_classes != 0)
    throw UsageError(cat("--labels ", c.labels, " is not a multiple of the ", train.num_classes, " classes of ",
                         train.name, " (the subset takes the same number from every class)"));
  if (c.lambda_u > 0 && c.batch_size * c.mu > train.size)
    throw UsageError(cat("--batch-size x --mu = ", c.batch_size * c.mu, " unlabeled images per step, more than the ",
                         train.size, " of ", train.name));
  const std::vector<int64_t> subset =
      run.resuming() ? data::read_labeled_subset(run.dir().path(data::kLabeledSubsetFile), train, c.labels)
                     : data::choose_labeled_subset(train, c.labels, seed);
  const bool unlabeled = c.lambda_u > 0;

  ModelSpec ms;
  ms.arch = c.arch;
  ms.stem = c.stem;
  ms.in_channels = train.channels;
  ms.width = c.width;
  ms.num_classes = train.num_classes;
  if (const std::string p = ms.problem(); !p.empty()) throw UsageError(cat("--arch ", c.arch, ": ", p));
  std::unique_ptr<Model> student = make_model(ms, device);
  student->init(part_seed(seed, kStudent));
  std::unique_ptr<Model> teacher = make_model(ms, device, false);

  TeacherConfig tc;
  tc.mode = parse_smoothing_mode(c.smoothing);
  tc.granularity = parse_granularity(c.granularity);
  tc.preserve_prob = c.preserve_prob;
  tc.momentum = c.momentum;
  tc.schedule = MomentumSchedule::Constant;
  tc.total_steps = c.steps;
  tc.bn_buffers = parse_bn_buffer_policy(c.bn_buffers);
  tc.seed = part_seed(seed, kTeacherMasks);
  TeacherSmoother smoother(student->param_table(), student->buffer_table(), device, tc);
  smoother.initialise(student->params(), teacher->params(), student->buffers(), teacher->buffers());

  OptimizerConfig oc;
  oc.kind = OptimizerKind::Sgd;
  oc.momentum = static_cast<float>(c.sgd_momentum);
  oc.nesterov = true;
  oc.weight_decay = static_cast<float>(c.weight_decay);
  oc.exclude_bias_and_norm = true;
  Optimizer opt(student->param_table(), device, oc);

  data::LoaderPosition position;
  int64_t step = run.start_step();
  if (run.resuming()) {
    const SafetensorsFile& f = run.checkpoint();
    load_model(f, *teacher, "", /*allow_unexpected=*/true);
    load_model(f, *student, "student.");
    for (const auto& [name, arena] : opt.state_arenas()) load_arenas(f, {arena}, "optim." + name + ".");
    opt.restore_state_strings(f.metadata());
    smoother.restore(TeacherState::from_strings(f.metadata()));
    position = data::LoaderPosition::unpack(f.i64("run.loader"));
    if (step > c.steps) throw Error(cat(f.path(), ": the checkpoint is at step ", step, ", past the run's ", c.steps));
  }

  run.begin(options.to_json());
  if (!run.resuming()) data::write_labeled_subset(run.dir().path(data::kLabeledSubsetFile), train, seed, subset);
  std::fprintf(stderr, "fixmatch: %s, %ld labels, %s, %ld steps of %ld labeled + %ld unlabeled; run directory %s\n",
               train.name.c_str(), static_cast<long>(c.labels), c.arch.c_str(), static_cast<long>(c.steps),
               static_cast<long>(c.batch_size), static_cast<long>(unlabeled ? c.batch_size * c.mu : 0),
               run.dir().dir().c_str());

  auto save = [&](int64_t at, const data::LoaderPosition& pos) {
    SafetensorsWriter w;
    add_model(w, *teacher, "");
    add_model(w, *student, "student.");
    for (const auto& [name, arena] : opt.state_arenas()) add_arena(w, *arena, "optim." + name + ".");
    for (const auto& kv : opt.state_strings()) w.add_metadata(kv.first, kv.second);
    for (const auto& kv : smoother.state().to_strings()) w.add_metadata(kv.first, kv.second);
    const std::vector<int64_t> packed = pos.pack();
    w.add_i64("run.loader", {static_cast<int64_t>(packed.size())}, packed);
    run.save(w, at);
  };
  auto evaluate = [&] {
    const double t = test_accuracy(*teacher, test, c.eval_batch), s = test_accuracy(*student, test, c.eval_batch);
    return std::make_pair(t, s);
  };

  // ---- training ----------------------------------------------------------------------------
  if (step < c.steps) {
    data::AugmentTransform weak(data::Recipe::FixmatchWeak, train, device);
    data::AugmentTransform strong(data::Recipe::FixmatchStrong, train, device);
    std::unique_ptr<data::Loader> loader;
    if (unlabeled) {
      // The unlabeled batch's true labels come with it (pinned staging, async upload): the
      // pseudo-label accuracy is counted on the device.
      loader = data::make_fixmatch_loader(train, subset, train, c.batch_size, c.mu, weak, strong, seed, device, position);
    } else {  // the labeled stream and view of the FixMatch loader, alone
      data::LoaderConfig lc;
      lc.streams.push_back(data::LoaderStream{&train, subset, c.batch_size, data::SamplerPurpose::Main, true, false, true});
      lc.views = {data::LoaderView{0, &weak, 2}};
      lc.seed = seed;
      lc.device = device;
      loader = std::make_unique<data::Loader>(std::move(lc), position);
    }
    const int64_t B = c.batch_size, U = unlabeled ? c.batch_size * c.mu : 0, N = B + 2 * U;
    const Shape image = Shape{train.channels, train.height, train.width};
    const int64_t image_numel = image.numel();

    Workspace ws(device);
    Graph g(ws);
    StepTimer timer;
    Progress progress(c.steps, step);
    Window win;
    // Per-step slots on the device, filled in step order since the last read: the two logged
    // losses and the counts of kept and correct pseudo-labels. read_back() adds them to the
    // window in that order, as the per-step host sums did, and checks that the losses are
    // finite. At most log_every steps pass between reads (a log line or a checkpoint).
    const int64_t slots = c.run.log_every;
    const OwnedTensor step_losses(device, Shape{slots, 2}), step_counts(device, Shape{slots, 2}, DType::I32);
    fill_zero(step_losses);
    fill_zero(step_counts);
    int64_t pending = 0;  // steps in the slots not yet read
    auto read_back = [&] {
      if (pending == 0) return;
      std::vector<float> l(static_cast<size_t>(2 * pending));
      std::vector<int32_t> n(static_cast<size_t>(2 * pending));
      copy_to_host(l.data(), step_losses, l.size() * sizeof(float));
      copy_to_host(n.data(), step_counts, n.size() * sizeof(int32_t));
      for (int64_t s = 0; s < pending; ++s) {
        const float sup_loss = l[static_cast<size_t>(2 * s)], unsup_loss = l[static_cast<size_t>(2 * s + 1)];
        TS_CHECK(std::isfinite(sup_loss) && std::isfinite(unsup_loss), "the loss is not finite at step ",
                 step - pending + s, " (supervised ", sup_loss, ", unsupervised ", unsup_loss, "); lower --lr");
        win.sup += sup_loss;
        win.unsup += unsup_loss;
        if (unlabeled) {
          win.mask += static_cast<double>(n[static_cast<size_t>(2 * s)]) / static_cast<double>(U);
          win.pseudo_acc += static_cast<double>(n[static_cast<size_t>(2 * s + 1)]) / static_cast<double>(U);
        }
      }
      fill_zero(step_losses);
      fill_zero(step_counts);
      pending = 0;
    };
    const int64_t stop_at = c.stop_after > 0 ? std::min(c.stop_after, c.steps) : c.steps;
    // --profile-steps A:B: per-kernel times of steps A..B-1 (docs/PROFILING.md); NVTX phases always.
    profile::Profiler profiler(profile::StepWindow::parse(c.run.profile_steps), device, run.dir().dir());
    while (step < stop_at && !stop_requested()) {
      profiler.begin_step(step);
      profile::PhaseSequence phases;
      phases.enter("data");
      timer.data_begin();
      const data::Batch& batch = loader->next();
      timer.data_end();
      phases.enter("zero_grad");
      student->grads().zero();
      ws.reset();
      g.clear();

      // One forward over [labeled | weak | strong], as the reference does (shared BN statistics).
      phases.enter("student_forward");
      Tensor x_all = batch.views[0];
      if (unlabeled) {
        x_all = ws.alloc(Shape{N, image[0], image[1], image[2]});
        const int64_t counts[3] = {B, U, U};
        float* at = x_all.f32();
        for (int v = 0; v < 3; ++v) {
          copy(Tensor(at, batch.views[static_cast<size_t>(v)].shape, DType::F32, device), batch.views[static_cast<size_t>(v)]);
          at += counts[v] * image_numel;
        }
      }
      Var* logits = student->forward(g, g.input(x_all, "images"), true);

      Tensor pseudo, confidence;  // (U) each; undefined with --lambda-u 0
      if (unlabeled) {
        Tensor weak_logits = rows(logits->value, B, U);
        if (c.pseudo_labels == "teacher") {
          phases.enter("teacher_forward");
          // Train-mode BN over the weak batch, as the student sees it; the running statistics this
          // updates are replaced by the student's at the smoother's next update (--bn-buffers copy).
          NoGradScope no_grad(g);
          weak_logits = teacher->forward(g, g.input(batch.views[1], "weak"), true)->value;
        }
        phases.enter("loss");
        pseudo = ws.alloc(Shape{U}, DType::I32);
        confidence = ws.alloc(Shape{U});
        ops::argmax_max_prob(weak_logits, pseudo, confidence);
      }
      phases.enter("loss");
      // Per-row labels and weights, and this step's kept / correct counts into its slot.
      const Tensor labels = ws.alloc(Shape{N}, DType::I32), weight = ws.alloc(Shape{N}), w_sup = ws.alloc(Shape{N}),
                   w_unsup = ws.alloc(Shape{N});
      TS_CHECK(pending < slots, "fixmatch: more than --log-every steps since the metrics were last read");
      const Tensor& y_labeled = batch.labels[0];
      TS_CHECK(y_labeled.numel() == B && (!unlabeled || batch.labels[1].numel() == U),
               "fixmatch: the batch's labels do not match the batch sizes");
      TS_DISPATCH(device, fixmatch_targets, y_labeled.i32(), unlabeled ? pseudo.i32() : nullptr,
                  unlabeled ? confidence.f32() : nullptr, unlabeled ? batch.labels[1].i32() : nullptr, B, U,
                  static_cast<float>(c.threshold), static_cast<float>(c.lambda_u), labels.i32(), weight.f32(),
                  w_sup.f32(), w_unsup.f32(), step_counts.t.i32() + 2 * pending);
      Var* loss = ops::cross_entropy_weighted(g, logits, labels, weight);
      // The two terms for the log, from the same logits (no gradient), kept on the device.
      {
        NoGradScope no_grad(g);
        const Tensor slot(step_losses.t.f32() + 2 * pending, Shape{1}, DType::F32, device);
        copy(slot, ops::cross_entropy_weighted(g, logits, labels, w_sup)->value);
        if (unlabeled) {
          const Tensor unsup_slot(step_losses.t.f32() + 2 * pending + 1, Shape{1}, DType::F32, device);
          copy(unsup_slot, ops::cross_entropy_weighted(g, logits, labels, w_unsup)->value);
        }
      }
      ++pending;
      phases.enter("backward");
      g.backward(loss);
      phases.enter("optimizer");
      const float lr = fixmatch_lr(static_cast<float>(c.lr), step, c.steps);
      opt.step(student->params(), student->grads(), lr);
      phases.enter("teacher_update");
      smoother.update(student->params(), teacher->params(), student->buffers(), teacher->buffers(), step);
      phases.leave();
      profiler.end_step(step);
      timer.step_end(B + 2 * U);
      ++step;

      ++win.steps;
      if (step % c.run.log_every == 0 || step == stop_at) {
        read_back();
        double ips = 0, wait = 0;
        timer.take(&ips, &wait);
        nlohmann::json ev = {{"step", step}, {"sup_loss", win.mean(win.sup)}, {"unsup_loss", win.mean(win.unsup)},
                             {"lr", lr}, {"images_per_s", ips}, {"data_wait", wait}};
        if (unlabeled) {
          ev["mask_rate"] = win.mean(win.mask);
          ev["pseudo_label_acc"] = win.mean(win.pseudo_acc);
        }
        run.metrics().write("train", ev);
        progress.update(step, win.mean(win.sup) + c.lambda_u * win.mean(win.unsup), ips, wait,
                        unlabeled ? cat("mask ", fixed2(100 * win.mean(win.mask)), "% pl-acc ",
                                        fixed2(100 * win.mean(win.pseudo_acc)), "%")
                                  : std::string());
        win.clear();
      }
      if (c.eval_every > 0 && step % c.eval_every == 0 && step < c.steps) {
        const auto [t, s] = evaluate();
        run.metrics().write("eval", {{"step", step}, {"test_top1_teacher", t}, {"test_top1_student", s}});
        progress.print(cat("step ", step, ": test top-1 teacher ", fixed2(t), "%, student ", fixed2(s), "%"));
      }
      if (step % c.run.save_every == 0 && step < stop_at) {
        read_back();  // no checkpoint of weights a non-finite loss has already reached
        save(step, loader->position());
      }
    }
    progress.finish();
    profiler.finish();  // a run stopped inside its window still prints what it measured
    read_back();
    save(step, loader->position());
    if (step < c.steps) {
      std::fprintf(stderr, "fixmatch: stopped at step %ld of %ld; checkpoint %s; continue with --resume %s\n",
                   static_cast<long>(step), static_cast<long>(c.steps), run.dir().checkpoint().c_str(),
                   run.dir().dir().c_str());
      return 0;
    }
  }

  // ---- final evaluation ----------------------------------------------------------------------
  const auto [t, s] = evaluate();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  run.metrics().write("final", {{"step", step}, {"test_top1_teacher", t}, {"test_top1_student", s}, {"wall_s", wall}});
  std::printf("fixmatch: test top-1 teacher %s%%, student %s%% (%ld labels, lambda-u %g); wall %dm%02ds\n",
              fixed2(t).c_str(), fixed2(s).c_str(), static_cast<long>(c.labels), c.lambda_u, static_cast<int>(wall) / 60,
              static_cast<int>(wall) % 60);
  std::fflush(stdout);
  return 0;
}

}  // namespace tessera
