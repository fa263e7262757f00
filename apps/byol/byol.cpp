// BYOL as in REFERENCE.md:
//
//   student  = backbone -> projector -> predictor        (trained)
//   teacher  = backbone -> projector                     (smoothed copy of the student's)
//   each step k:  teacher <- TeacherSmoother(student, k)   before the forward (the official order)
//                 q_i = student(view_i), z_i = teacher(view_i) under no-grad, train-mode BN
//                 loss = [2 - 2 cos(q_1, z_2)] + [2 - 2 cos(q_2, z_1)]   (batch means)
//                 backward, one fused optimizer step per student arena
//
// The files: config.h (the flags), nets.h (student, teacher, smoothers, optimizers and the
// checkpoint layout), step.h (one training step), this file (the run: data, loop, logging,
// checkpoints, evaluation) and main.cpp.
//
// The teacher starts as an exact copy of the student (not through the mask, as the official
// code does). Every random draw is Philox(seed, stream, step, index), the loader position is
// saved, so a run stopped at any step resumes bit-identically on the CPU.
#include "apps/byol/byol.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <utility>

#include "apps/byol/config.h"
#include "apps/byol/nets.h"
#include "apps/byol/step.h"
#include "apps/run/evaluation.h"
#include "apps/run/features.h"
#include "apps/run/nonfinite.h"
#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/teacher_log.h"
#include "apps/run/training_run.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/distributed.h"
#include "engine/profile.h"
#include "engine/schedule.h"
#include "engine/workspace.h"
#include "models/model.h"

namespace tessera {

int byol_main(int argc, const char* const* argv) {
  using namespace byol;  // Config, Nets, train_step: this program's parts
  const auto started = std::chrono::steady_clock::now();
  Config c;
  Options options("byol", "BYOL self-supervised pre-training with a TMA / SE / STS smoothed teacher.");
  add_options(options, c);
  if (!options.parse(argc, argv)) return 0;
  TrainingRun run("byol", options, c.run);  // on --resume: the saved configuration, checked
  if (c.eval_only && !run.resuming()) throw UsageError("--eval-only evaluates a finished run: give it --resume DIR");
  if (c.run.threads > 0) omp_set_num_threads(c.run.threads);
  dist::Communicator& ranks = start_processes("byol", c.dist);  // the first line; rank 0 alone prints on
  check_global_batch(ranks, "--batch-size", c.batch_size);

  const Device device = open_rank_device(ranks, c.run);  // --device; on the CPU, --cpu-kernels

  // Data, and the checks that need it, before anything is written.
  TrainTest splits = load_train_test(run, c.data, c.image_size);
  const data::Dataset& train = splits.train;
  const EpochSchedule schedule = epoch_schedule(train, c.batch_size, c.steps, c.epochs, c.warmup_epochs);
  const int64_t steps_per_epoch = schedule.steps_per_epoch, total_steps = schedule.total_steps;

  data::AugmentOptions aug;
  aug.out_size = c.crop_size;
  aug.crop_scale_lo = c.crop_scale_min;
  aug.crop_bicubic = c.crop_interpolation == "bicubic";
  aug.blur_prob[0] = c.blur_prob_1;
  aug.blur_prob[1] = c.blur_prob_2;
  aug.solarize_prob[0] = c.solarize_prob_1;
  aug.solarize_prob[1] = c.solarize_prob_2;
  // One transform for both views (the loader numbers them 0 and 1; BYOL's views differ in
  // their blur and solarize probabilities). The recipe is checked here, so a bad one fails
  // before anything is written; the transform, which on CUDA holds a device copy of the images,
  // is made only if the run trains (not under --eval-only).
  const data::AugmentPipeline recipe_check(data::Recipe::Byol, train.channels, train.height, train.width, train.mean,
                                           train.std, aug);

  Nets nets = build_nets(c, train.channels, device, total_steps);
  data::LoaderPosition position;
  if (run.resuming()) position = load_state(run.checkpoint(), nets);
  nets.ranks = &ranks;
  replicate_from_root(ranks, state_arenas(nets));
  int64_t step = run.start_step();
  if (step > total_steps)
    throw Error(cat("the checkpoint is at step ", step, ", past the run's ", total_steps, " steps"));

  // --on-nonfinite: the loss and every gradient checked on the device after each backward,
  // read at metrics lines and by run.save (apps/run/nonfinite.h).
  NonfiniteGuard nonfinite(c.run.on_nonfinite, device);
  nonfinite.monitor().watch_gradients("backbone.", nets.backbone->grads());
  nonfinite.monitor().watch_gradients("projector.", nets.projector->grads());
  nonfinite.monitor().watch_gradients("predictor.", nets.predictor->grads());
  nonfinite.arm_test_hook();
  if (run.resuming()) nonfinite.restore(run.checkpoint());
  for (Optimizer* o : {nets.opt_backbone.get(), nets.opt_projector.get(), nets.opt_predictor.get()})
    o->skip_when(nonfinite.skip_flag());
  nets.nonfinite = &nonfinite.monitor();
  nonfinite.monitor().judge_across(&ranks);  // every rank takes the same skip / stop decision
  run.attach(nonfinite);

  run.begin(options.to_json());
  std::fprintf(stderr, "byol: %s, %ld images, %ld steps of %ld (%.2f epochs); run directory %s\n", train.name.c_str(),
               static_cast<long>(train.size), static_cast<long>(total_steps), static_cast<long>(c.batch_size),
               static_cast<double>(total_steps) / static_cast<double>(steps_per_epoch), run.dir().dir().c_str());

  BackboneEvaluation eval{first_images(train, c.eval_train_limit), std::move(splits.test), c.eval_batch, {}};
  eval.probe.epochs = c.probe_epochs;
  eval.probe.seed = static_cast<uint64_t>(c.run.seed);

  auto save = [&](int64_t at, const data::LoaderPosition& pos) {
    if (c.dist.check_replicas) check_replicas(ranks, replica_arenas(nets, c.dist.sync_bn), at);
    if (!ranks.root()) return;
    SafetensorsWriter w;
    add_state(w, nets, pos);
    run.save(w, at);
    SafetensorsWriter backbone;  // the teacher backbone alone: load_state_dict(strict=True)
    add_model(backbone, *nets.t_backbone, "");
    backbone.write(run.dir().path("backbone.safetensors"));
  };

  // ---- training ----------------------------------------------------------------------------
  if (!c.eval_only && step < total_steps) {
    data::AugmentTransform augment(data::Recipe::Byol, train, device, aug);
    auto loader = data::make_byol_loader(train, c.batch_size, augment, augment, static_cast<uint64_t>(c.run.seed),
                                         device, position, ranks.rank(), ranks.size());
    Workspace ws(device);
    Graph g(ws);
    g.set_batch_norm_group(c.dist.sync_bn ? &ranks : nullptr);
    StepTimer timer;
    Progress progress(total_steps, step);
    const int64_t stop_at = c.stop_after > 0 ? std::min(c.stop_after, total_steps) : total_steps;
    const double param_count = static_cast<double>(nets.backbone->param_table().total_numel() +
                                                   nets.projector->param_table().total_numel());
    // --profile-steps A:B: per-kernel times of steps A..B-1 (docs/PROFILING.md); NVTX phases always.
    profile::Profiler profiler(profile::StepWindow::parse(c.run.profile_steps), device,
                               ranks.root() ? run.dir().dir() : std::string());  // rank 0 writes profile.json
    const std::vector<TeacherPart> teacher_parts{{"", nets.smooth_backbone.get()},
                                                 {"projector.", nets.smooth_projector.get()}};
    const std::vector<int64_t> mosaic_steps = parse_mosaic_steps(c.teacher.mosaic_steps);
    while (step < stop_at && !stop_requested_on_any_rank(ranks)) {
      profiler.begin_step(step);
      profile::PhaseSequence phases;
      phases.enter("data");
      timer.data_begin();
      const data::Batch& batch = loader->next();
      timer.data_end();
      const float lr = warmup_cosine_lr(static_cast<float>(c.lr), step, schedule.warmup_steps, total_steps);
      Var* loss = train_step(nets, g, batch, step, lr, phases);
      profiler.end_step(step);
      timer.step_end(c.batch_size);
      ++step;

      // The mosaic: fragment ages at every logging step, the whole mosaic at --mosaic-steps.
      log_teacher(teacher_parts, mosaic_steps, step, step % c.run.log_every == 0 || step == total_steps, run.metrics(),
                  run.dir(), ranks.root());
      // Not at a --stop-after step: a stopped and resumed run logs the steps an uninterrupted one does.
      if (step % c.run.log_every == 0 || step == total_steps) {
        const int64_t skipped = nonfinite.read(run.last_checkpoint_note());  // stop: ends the run here
        float loss_value = 0;  // NaN when this step was skipped (written as null)
        copy_to_host(&loss_value, loss->value, sizeof loss_value);
        ranks.all_reduce_mean(&loss_value, 1, Device::CPU, "the logged loss");  // the global batch's
        double ips = 0, wait = 0;
        timer.take(&ips, &wait);
        const TeacherStats sb = nets.smooth_backbone->stats_at(step - 1), sp = nets.smooth_projector->stats_at(step - 1);
        const double updated =
            (sb.params_updated * static_cast<double>(nets.backbone->param_table().total_numel()) +
             sp.params_updated * static_cast<double>(nets.projector->param_table().total_numel())) / param_count;
        nlohmann::json ev = {{"step", step}, {"epoch", static_cast<double>(step) / steps_per_epoch},
                             {"loss", loss_value}, {"lr", lr},
                             {"momentum", nets.smooth_backbone->momentum_at(step - 1)},
                             {"updated_fraction", updated}, {"images_per_s", ips}, {"data_wait", wait}};
        if (nonfinite.skipping()) ev["nonfinite_skipped"] = skipped;
        run.metrics().write("train", ev);
        progress.update(step, loss_value, ips, wait);
      }
      const bool epoch_end = step % steps_per_epoch == 0;
      if (epoch_end && ranks.root() && c.knn_every > 0 && (step / steps_per_epoch) % c.knn_every == 0 && step < total_steps) {
        const double kt = eval.knn_top1(*nets.t_backbone, ws), ks = eval.knn_top1(*nets.backbone, ws);
        run.metrics().write("knn", {{"step", step}, {"epoch", step / steps_per_epoch}, {"knn_top1_teacher", kt},
                                    {"knn_top1_student", ks}});
        progress.print(cat("epoch ", step / steps_per_epoch, ": kNN top-1 teacher ", kt, "%, student ", ks, "%"));
      }
      if (step % c.run.save_every == 0 && step < stop_at) save(step, loader->position());
    }
    progress.finish();
    profiler.finish();  // a run stopped inside its window still prints what it measured
    save(step, loader->position());
    if (step < total_steps) {
      run.report_stop(step, total_steps);
      return 0;
    }
  }

  // ---- final evaluation ------------------------------------------------------------------------
  if (!ranks.root()) return 0;  // rank 0 evaluates; the others' part is done
  if (const int status = run.final_evaluation_begins()) return status;  // a stop ends it at once
  // The random-init baseline starts where the student did.
  FinalScores final = final_scores("byol", *nets.t_backbone, "teacher", *nets.backbone, "student", c.eval_baseline,
                                   part_seed(static_cast<uint64_t>(c.run.seed), kBackbone), eval.train, eval.test,
                                   eval.batch, eval.probe);
  final.event["step"] = step;
  final.event["epoch"] = step / steps_per_epoch;
  run.write_final(final.event, final.line, started);
  return 0;
}

}  // namespace tessera
