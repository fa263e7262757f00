// FixMatch (Sohn et al. 2020) with a TMA / SE / STS smoothed teacher: the run. The files:
// config.h (the flags), nets.h (student, teacher, smoother, optimizer and the checkpoint
// layout), step.h (one training step: the method itself), this file (data, the labeled subset,
// the loop, logging, checkpoints, evaluation) and main.cpp.
//
// With --lambda-u 0 the unlabeled stream is not loaded at all: supervised training on the
// same labeled batches (same subset, same order, same augmentations).
//
// A step never waits for the device. Each step's two logged losses and two counts go to its
// slot in small device buffers, read to the host only when a metrics line is written (every
// --log-every steps and the last step) or a checkpoint is saved; the finiteness check runs
// there, over every step since the last read, naming the first bad step. So a non-finite loss
// stops the run at the next log line or checkpoint rather than at once, and never reaches a
// checkpoint.
#include "apps/fixmatch/fixmatch.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "apps/fixmatch/config.h"
#include "apps/fixmatch/nets.h"
#include "apps/fixmatch/step.h"
#include "apps/run/features.h"
#include "apps/run/nonfinite.h"
#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/teacher_log.h"
#include "apps/run/training_run.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/sampler.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "engine/schedule.h"
#include "engine/workspace.h"
#include "models/model.h"

namespace tessera {

namespace fixmatch {
namespace {

// Top-1 test accuracy in percent: eval-mode BN, no gradient, normalised images only. Runs in
// `ws` (between steps, the training step's), reset per batch.
double test_accuracy(Model& m, const data::Dataset& test, int64_t batch, Workspace& ws) {
  data::NormalizeTransform normalize;
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

// Means over the steps since the last log line.
struct Window {
  double sup = 0, unsup = 0, mask = 0, pseudo_acc = 0;
  int64_t steps = 0;
  void clear() { *this = Window{}; }
  double mean(double v) const { return steps > 0 ? v / static_cast<double>(steps) : 0.0; }
};

}  // namespace
}  // namespace fixmatch

int fixmatch_main(int argc, const char* const* argv) {
  const auto started = std::chrono::steady_clock::now();
  using namespace fixmatch;  // Config, Nets, train_step: this program's parts
  Config c;
  Options options("fixmatch", "FixMatch semi-supervised training with a TMA / SE / STS smoothed teacher.");
  add_options(options, c);
  if (!options.parse(argc, argv)) return 0;
  TrainingRun run("fixmatch", options, c.run);  // on --resume: the saved configuration, checked
  if (c.eval_only && !run.resuming()) throw UsageError("--eval-only evaluates a run: give it --resume DIR");
  if (c.run.threads > 0) omp_set_num_threads(c.run.threads);
  const uint64_t seed = static_cast<uint64_t>(c.run.seed);
  dist::Communicator& ranks = start_processes("fixmatch", c.dist);  // the first line; rank 0 alone prints on
  check_global_batch(ranks, "--batch-size", c.batch_size);

  const Device device = open_rank_device(ranks, c.run);  // --device; on the CPU, --cpu-kernels

  // Data and every check that needs it, before anything is written.
  const TrainTest splits = load_train_test(run, c.data, c.image_size);
  const data::Dataset &train = splits.train, &test = splits.test;
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
  Nets nets = build_nets(c, ms, device);
  nets.ranks = &ranks;

  data::LoaderPosition position;
  int64_t step = run.start_step();
  if (run.resuming()) {
    position = load_state(run.checkpoint(), nets);
    if (step > c.steps)
      throw Error(cat(run.checkpoint().path(), ": the checkpoint is at step ", step, ", past the run's ", c.steps));
  }

  // --on-nonfinite: the loss and the gradients checked on the device after each backward,
  // read with the step slots below and by run.save (apps/run/nonfinite.h). The teacher
  // follows the optimizer here, so a skipped step skips both.
  NonfiniteGuard nonfinite(c.run.on_nonfinite, device);
  nonfinite.monitor().watch_gradients("", nets.student->grads());
  nonfinite.arm_test_hook();
  if (run.resuming()) nonfinite.restore(run.checkpoint());
  nets.opt->skip_when(nonfinite.skip_flag());
  nonfinite.skip_teacher(*nets.smoother);  // the flag, and the skipped steps for the mosaic
  nets.nonfinite = &nonfinite.monitor();
  nonfinite.monitor().judge_across(&ranks);  // every rank takes the same skip / stop decision
  run.attach(nonfinite);

  replicate_from_root(ranks, state_arenas(nets));

  run.begin(options.to_json());
  if (!run.resuming() && ranks.root()) data::write_labeled_subset(run.dir().path(data::kLabeledSubsetFile), train, seed, subset);
  std::fprintf(stderr, "fixmatch: %s, %ld labels, %s, %ld steps of %ld labeled + %ld unlabeled; run directory %s\n",
               train.name.c_str(), static_cast<long>(c.labels), c.arch.c_str(), static_cast<long>(c.steps),
               static_cast<long>(c.batch_size), static_cast<long>(unlabeled ? c.batch_size * c.mu : 0),
               run.dir().dir().c_str());

  auto save = [&](int64_t at, const data::LoaderPosition& pos) {
    if (c.dist.check_replicas) check_replicas(ranks, replica_arenas(nets, c.dist.sync_bn), at);
    if (!ranks.root()) return;  // rank 0 writes; the others would copy every arena to the host for nothing
    SafetensorsWriter w;
    add_state(w, nets, pos);
    run.save(w, at);
  };
  auto evaluate = [&](Workspace& ws) {
    const double t = test_accuracy(*nets.teacher, test, c.eval_batch, ws),
                 s = test_accuracy(*nets.student, test, c.eval_batch, ws);
    return std::make_pair(t, s);
  };

  // ---- training ----------------------------------------------------------------------------
  if (!c.eval_only && step < c.steps) {
    data::AugmentTransform weak(data::Recipe::FixmatchWeak, train, device);
    data::AugmentTransform strong(data::Recipe::FixmatchStrong, weak);  // one device copy of the images
    std::unique_ptr<data::Loader> loader;
    if (unlabeled) {
      // The unlabeled batch's true labels come with it (pinned staging, async upload): the
      // pseudo-label accuracy is counted on the device.
      loader = data::make_fixmatch_loader(train, subset, train, c.batch_size, c.mu, weak, strong, seed, device, position,
                                          ranks.rank(), ranks.size());
    } else {  // the labeled stream and view of the FixMatch loader, alone
      data::LoaderConfig lc;
      lc.streams.push_back(data::LoaderStream{&train, subset, c.batch_size, data::SamplerPurpose::Main, true, false, true});
      lc.views = {data::LoaderView{0, &weak, 2}};
      lc.seed = seed;
      lc.device = device;
      lc.shard = ranks.rank();
      lc.shards = ranks.size();
      loader = std::make_unique<data::Loader>(std::move(lc), position);
    }
    const int64_t B = c.batch_size, U = unlabeled ? c.batch_size * c.mu : 0;

    Workspace ws(device);
    Graph g(ws);
    g.set_batch_norm_group(c.dist.sync_bn ? &ranks : nullptr);
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
    int64_t skipped = 0;  // --on-nonfinite skip: steps dropped so far (the whole run)
    auto read_back = [&] {
      skipped = nonfinite.read(run.last_checkpoint_note());  // stop: ends the run here
      if (pending == 0) return;
      std::vector<float> l(static_cast<size_t>(2 * pending));
      std::vector<int32_t> n(static_cast<size_t>(2 * pending));
      // The first `pending` rows only: a checkpoint or Ctrl-C can come mid-window (copying the
      // whole (log_every, 2) buffer into the shorter vectors used to fail there).
      copy_to_host(l.data(), Tensor(step_losses.t.ptr, Shape{pending, 2}, DType::F32, device), l.size() * sizeof(float));
      copy_to_host(n.data(), Tensor(step_counts.t.ptr, Shape{pending, 2}, DType::I32, device), n.size() * sizeof(int32_t));
      if (ranks.size() > 1) {  // the global batch's: losses averaged, counts summed over the ranks
        ranks.all_reduce_mean(l.data(), static_cast<int64_t>(l.size()), Device::CPU, "the logged losses");
        std::vector<double> counts(n.begin(), n.end());
        ranks.all_reduce_sum(counts.data(), static_cast<int64_t>(counts.size()), Device::CPU, "the logged counts");
        for (size_t i = 0; i < n.size(); ++i) n[i] = static_cast<int32_t>(counts[i]);
      }
      for (int64_t s = 0; s < pending; ++s) {
        const float sup_loss = l[static_cast<size_t>(2 * s)], unsup_loss = l[static_cast<size_t>(2 * s + 1)];
        if (!std::isfinite(sup_loss) || !std::isfinite(unsup_loss)) {
          TS_CHECK(nonfinite.skipping(), "the loss is not finite at step ", step - pending + s, " (supervised ",
                   sup_loss, ", unsupervised ", unsup_loss, "); lower --lr");
          --win.steps;  // a skipped step: not in the means
          continue;
        }
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
    profile::Profiler profiler(profile::StepWindow::parse(c.run.profile_steps), device,
                               ranks.root() ? run.dir().dir() : std::string());  // rank 0 writes profile.json
    const std::vector<TeacherPart> teacher_parts{{"", nets.smoother.get()}};
    const std::vector<int64_t> mosaic_steps = parse_mosaic_steps(c.teacher.mosaic_steps);
    while (step < stop_at && !stop_requested_on_any_rank(ranks)) {
      profiler.begin_step(step);
      profile::PhaseSequence phases;
      phases.enter("data");
      timer.data_begin();
      const data::Batch& batch = loader->next();
      timer.data_end();
      TS_CHECK(pending < slots, "fixmatch: more than --log-every steps since the metrics were last read");
      const float lr = fixmatch_lr(static_cast<float>(c.lr), step, c.steps);
      const StepSlots slot{step_losses.t.f32() + 2 * pending, step_counts.t.i32() + 2 * pending};
      train_step(nets, c, g, batch, step, lr, slot, phases);
      ++pending;
      profiler.end_step(step);
      timer.step_end(B + 2 * U);
      ++step;

      ++win.steps;
      // The mosaic: fragment ages at every logging step, the whole mosaic at --mosaic-steps.
      log_teacher(teacher_parts, mosaic_steps, step, step % c.run.log_every == 0 || step == c.steps, run.metrics(),
                  run.dir(), ranks.root());
      // Not at a --stop-after step: a stopped and resumed run logs the steps an uninterrupted one does.
      if (step % c.run.log_every == 0 || step == c.steps) {
        read_back();
        double ips = 0, wait = 0;
        timer.take(&ips, &wait);
        nlohmann::json ev = {{"step", step},
                             {"sup_loss", win.mean(win.sup)},
                             {"unsup_loss", win.mean(win.unsup)},
                             {"lr", lr},
                             {"momentum", nets.smoother->momentum_at(step - 1)},
                             {"updated_fraction", nets.smoother->stats_at(step - 1).params_updated},
                             {"images_per_s", ips},
                             {"data_wait", wait}};
        if (unlabeled) {
          ev["mask_rate"] = win.mean(win.mask);
          ev["pseudo_label_acc"] = win.mean(win.pseudo_acc);
        }
        if (nonfinite.skipping()) ev["nonfinite_skipped"] = skipped;
        run.metrics().write("train", ev);
        progress.update(step, win.mean(win.sup) + c.lambda_u * win.mean(win.unsup), ips, wait,
                        unlabeled ? cat("mask ", fixed2(100 * win.mean(win.mask)), "% pl-acc ",
                                        fixed2(100 * win.mean(win.pseudo_acc)), "%")
                                  : std::string());
        win.clear();
      }
      if (ranks.root() && c.eval_every > 0 && step % c.eval_every == 0 && step < c.steps) {
        const auto [t, s] = evaluate(ws);  // between steps: the step's workspace is free
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
      run.report_stop(step, c.steps);
      return 0;
    }
  }

  // ---- final evaluation ----------------------------------------------------------------------
  if (!ranks.root()) return 0;  // rank 0 evaluates; the others' part is done
  if (const int status = run.final_evaluation_begins()) return status;  // a stop ends it at once
  Workspace eval_ws(device);
  const auto [t, s] = evaluate(eval_ws);
  run.write_final({{"step", step}, {"test_top1_teacher", t}, {"test_top1_student", s}},
                  cat("fixmatch: test top-1 teacher ", fixed2(t), "%, student ", fixed2(s), "% (", c.labels,
                      " labels, lambda-u ", c.lambda_u, ")"),
                  started);
  return 0;
}

}  // namespace tessera
