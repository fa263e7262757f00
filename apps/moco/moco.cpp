// MoCo v2 as in the papers (He et al. 2020, "Momentum Contrast"; Chen et al. 2020, "Improved
// Baselines with Momentum Contrastive Learning"), with the key encoder as this project's
// smoothed teacher:
//
//   query encoder = backbone -> 2-layer MLP head      (trained, SGD)
//   key encoder   = backbone -> head                  (TeacherSmoother of the query encoder)
//   each step k:  key encoder <- TeacherSmoother(query encoder, k)   before the forward
//                 q = normalize(query(view_1)); k = normalize(key(view_2)) under no-grad, split BN
//                 loss = InfoNCE(q, k, queue, T); backward; SGD step
//                 enqueue k into the ring queue of K negatives
//
// Data parallel under mpirun / srun (docs/DISTRIBUTED.md), as byol: --batch-size is the global
// batch, each rank steps on its shard and the query encoder's gradients are averaged after
// backward. The keys use MoCo's shuffle BN across the ranks instead of split BN (step.h): the
// global key batch is gathered, shuffled by a permutation every rank draws alike, forwarded a
// slice per rank, gathered back and un-shuffled; every rank enqueues the whole global batch,
// so the queues stay identical without being sent. Rank 0 writes the run and evaluates.
//
// The files: config.h (the flags), nets.h (encoders, smoothers, optimizers, queue and the
// checkpoint layout), step.h (one training step), this file (the run: data, loop, logging,
// checkpoints, evaluation) and main.cpp. The run machinery (apps/run) is byol's.
//
// Every random draw is Philox(seed, stream, step, index); the loader position, the queue and
// its pointer are saved, so a run stopped at any step resumes bit-identically on the CPU (also
// under the same number of ranks).
#include "apps/moco/moco.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>

#include "apps/moco/config.h"
#include "apps/moco/nets.h"
#include "apps/moco/step.h"
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

namespace moco {
namespace {

// The key encoder's BatchNorm scheme in a few words, for the startup line and config.json.
std::string key_bn_scheme(int64_t splits, int64_t batch, int ranks) {
  if (ranks == 1) return cat("split BN into ", splits, " sub-batches of ", batch / splits, " images");
  const int64_t slice = batch / ranks, per_rank = splits / ranks;
  return cat("shuffle BN across ", ranks, " ranks: each rank normalises a slice of ", slice,
             " images of the shuffled global batch",
             per_rank > 1 ? cat(" as ", per_rank, " sub-batches of ", slice / per_rank) : std::string());
}

// What config.json says about the key encoder's BatchNorm, and why.
std::string key_bn_note(int64_t splits, int64_t batch, int ranks) {
  const std::string why =
      "MoCo keeps a query and its positive key from being normalised with the same batch statistics, a signal "
      "the encoders could use to find the positive instead of learning (He et al. 2020, shuffling BN)";
  if (ranks == 1)
    return cat(key_bn_scheme(splits, batch, ranks), ", each normalised with its own statistics. ", why,
               "; on one device split BN is the common stand-in for shuffle BN (the official CIFAR-10 demo's "
               "SplitBatchNorm).");
  return cat(key_bn_scheme(splits, batch, ranks), ". The key views of all ranks are gathered, permuted (the same "
             "permutation on every rank, from the seed and the step) and each rank forwards its slice, so its key "
             "BN statistics mix images whose queries other ranks hold; the keys are gathered back and un-shuffled. ",
             why, ". --bn-splits ", splits, " counts BN groups over the global batch of ", batch, ".");
}

}  // namespace
}  // namespace moco

int moco_main(int argc, const char* const* argv) {
  using namespace moco;  // Config, Nets, train_step: this program's parts
  const auto started = std::chrono::steady_clock::now();
  Config c;
  Options options("moco", "MoCo v2 self-supervised pre-training with a TMA / SE / STS smoothed key encoder.");
  add_options(options, c);
  if (!options.parse(argc, argv)) return 0;
  TrainingRun run("moco", options, c.run);  // on --resume: the saved configuration, checked
  if (c.eval_only && !run.resuming()) throw UsageError("--eval-only evaluates a finished run: give it --resume DIR");
  if (c.run.threads > 0) omp_set_num_threads(c.run.threads);
  dist::Communicator& ranks = start_processes("moco", c.dist);  // the first line; rank 0 alone prints on
  check_global_batch(ranks, "--batch-size", c.batch_size);
  // MoCo's BN is per GPU: each rank's queries with its shard's statistics, the keys with
  // shuffle BN. SyncBN would normalise the keys over the global batch, the very statistics
  // shuffle BN keeps apart from their queries'.
  if (c.dist.sync_bn)
    throw UsageError("--sync-bn: moco normalises each rank's queries with the rank's own statistics and its keys with "
                     "shuffle BN across ranks (--bn-splits), as MoCo does; SyncBN is not offered");

  const Device device = open_rank_device(ranks, c.run);  // --device; on the CPU, --cpu-kernels

  // Data, and the checks that need it, before anything is written.
  TrainTest splits = load_train_test(run, c.data, c.image_size);
  const data::Dataset& train = splits.train;
  const EpochSchedule schedule = epoch_schedule(train, c.batch_size, c.steps, c.epochs, c.warmup_epochs);
  const int64_t steps_per_epoch = schedule.steps_per_epoch, total_steps = schedule.total_steps;
  // MoCo's ring fills whole batches (its enqueue asserts K % batch == 0; with several ranks
  // every rank enqueues the whole global batch, so that the queues stay identical), and a BN
  // sub-batch of one image has no variance to normalise by.
  if (c.queue % c.batch_size != 0)
    throw UsageError(cat("--queue ", c.queue, " is not a multiple of --batch-size ", c.batch_size,
                         ": the ring queue is filled a whole batch at a time",
                         ranks.size() > 1 ? cat(" (the global batch: each of the ", ranks.size(),
                                                " ranks enqueues the keys of all of them)")
                                          : std::string()));
  if (c.batch_size % c.bn_splits != 0 || c.batch_size / c.bn_splits < 2)
    throw UsageError(cat("--bn-splits ", c.bn_splits, " must divide --batch-size ", c.batch_size,
                         " into sub-batches of at least 2 images"));
  // Shuffle BN: --bn-splits counts BN groups over the global batch, each rank's slice holding
  // bn-splits / ranks of them (bn-splits = ranks is MoCo's one BN batch per GPU).
  if (c.bn_splits % ranks.size() != 0)
    throw UsageError(cat("--bn-splits ", c.bn_splits, " counts the key encoder's BN groups over the global batch and "
                         "must be a multiple of the ", ranks.size(), " ranks (each rank normalises its slice of the "
                         "shuffled batch as bn-splits / ranks sub-batches); --bn-splits ", ranks.size(),
                         " is MoCo's shuffle BN, one group per rank"));

  data::AugmentOptions aug;
  aug.out_size = c.crop_size;
  aug.crop_scale_lo = c.crop_scale_min;
  aug.crop_bicubic = c.crop_interpolation == "bicubic";
  // MoCo v2: BYOL's crop, flip, colour jitter and grey, blur with p 0.5 on both views, no
  // solarize. The recipe is checked here, so a bad one fails before anything is written; the
  // transform, which on CUDA holds a device copy of the images, is made only if the run trains.
  aug.blur_prob[0] = aug.blur_prob[1] = c.blur_prob;
  aug.solarize_prob[0] = aug.solarize_prob[1] = 0.0f;
  const data::AugmentPipeline recipe_check(data::Recipe::Byol, train.channels, train.height, train.width, train.mean,
                                           train.std, aug);

  Nets nets = build_nets(c, train.channels, device, total_steps);
  data::LoaderPosition position;
  if (run.resuming()) position = load_state(run.checkpoint(), nets);
  nets.ranks = &ranks;
  replicate_from_root(ranks, state_arenas(nets), replica_tensors(nets));
  int64_t step = run.start_step();
  if (step > total_steps)
    throw Error(cat("the checkpoint is at step ", step, ", past the run's ", total_steps, " steps"));

  // --on-nonfinite: the loss and every gradient checked on the device after each backward,
  // read at metrics lines and by run.save (apps/run/nonfinite.h).
  NonfiniteGuard nonfinite(c.run.on_nonfinite, device);
  nonfinite.monitor().watch_gradients("backbone.", nets.backbone->grads());
  nonfinite.monitor().watch_gradients("head.", nets.head->grads());
  nonfinite.arm_test_hook();
  if (run.resuming()) nonfinite.restore(run.checkpoint());
  for (Optimizer* o : {nets.opt_backbone.get(), nets.opt_head.get()}) o->skip_when(nonfinite.skip_flag());
  nets.nonfinite = &nonfinite.monitor();
  nonfinite.monitor().judge_across(&ranks);  // every rank takes the same skip / stop decision
  nets.skip_nonfinite = nonfinite.skipping();
  run.attach(nonfinite);

  run.begin(options.to_json());
  {
    // config.json also says how the key encoder's BatchNorm is split, and why (the checkpoint
    // keeps the flags alone).
    nlohmann::json config = options.to_json();
    config["key-encoder-bn"] = key_bn_note(c.bn_splits, c.batch_size, ranks.size());
    if (ranks.root()) run.dir().write_config(config);
  }
  std::fprintf(stderr, "moco: key encoder BN: %s\n", key_bn_scheme(c.bn_splits, c.batch_size, ranks.size()).c_str());
  std::fprintf(stderr, "moco: %s, %ld images, %ld steps of %ld (%.2f epochs); run directory %s\n", train.name.c_str(),
               static_cast<long>(train.size), static_cast<long>(total_steps), static_cast<long>(c.batch_size),
               static_cast<double>(total_steps) / static_cast<double>(steps_per_epoch), run.dir().dir().c_str());

  BackboneEvaluation eval{first_images(train, c.eval_train_limit), std::move(splits.test), c.eval_batch, {}};
  eval.probe.epochs = c.probe_epochs;
  eval.probe.seed = static_cast<uint64_t>(c.run.seed);

  auto save = [&](int64_t at, const data::LoaderPosition& pos) {
    if (c.dist.check_replicas) check_replicas(ranks, replica_arenas(nets), at, replica_tensors(nets));
    if (!ranks.root()) return;
    SafetensorsWriter w;
    add_state(w, nets, pos);
    run.save(w, at);
    SafetensorsWriter backbone;  // the key encoder backbone alone: load_state_dict(strict=True)
    add_model(backbone, *nets.k_backbone, "");
    backbone.write(run.dir().path("backbone.safetensors"));
  };

  // ---- training ----------------------------------------------------------------------------
  if (!c.eval_only && step < total_steps) {
    // Two augmented views of each image: view 0 the query's, view 1 the key's.
    data::AugmentTransform augment(data::Recipe::Byol, train, device, aug);
    auto loader = data::make_byol_loader(train, c.batch_size, augment, augment, static_cast<uint64_t>(c.run.seed),
                                         device, position, ranks.rank(), ranks.size());
    Workspace ws(device);
    Graph g(ws);
    StepTimer timer;
    Progress progress(total_steps, step);
    const int64_t stop_at = c.stop_after > 0 ? std::min(c.stop_after, total_steps) : total_steps;
    const double param_count = static_cast<double>(nets.backbone->param_table().total_numel() +
                                                   nets.head->param_table().total_numel());
    const float peak = static_cast<float>(peak_lr(c));
    // --profile-steps A:B: per-kernel times of steps A..B-1 (docs/PROFILING.md); NVTX phases always.
    profile::Profiler profiler(profile::StepWindow::parse(c.run.profile_steps), device,
                               ranks.root() ? run.dir().dir() : std::string());  // rank 0 writes profile.json
    const std::vector<TeacherPart> teacher_parts{{"", nets.smooth_backbone.get()}, {"head.", nets.smooth_head.get()}};
    const std::vector<int64_t> mosaic_steps = parse_mosaic_steps(c.teacher.mosaic_steps);
    while (step < stop_at && !stop_requested_on_any_rank(ranks)) {
      profiler.begin_step(step);
      profile::PhaseSequence phases;
      phases.enter("data");
      timer.data_begin();
      const data::Batch& batch = loader->next();
      timer.data_end();
      const float lr = warmup_cosine_lr(peak, step, schedule.warmup_steps, total_steps);
      const StepResult result = train_step(nets, g, batch, step, lr, c.temperature, c.bn_splits, phases);
      profiler.end_step(step);
      timer.step_end(c.batch_size);
      ++step;

      // The mosaic: fragment ages at every logging step, the whole mosaic at --mosaic-steps.
      log_teacher(teacher_parts, mosaic_steps, step, step % c.run.log_every == 0 || step == total_steps, run.metrics(),
                  run.dir(), ranks.root());
      // Not at a --stop-after step: a stopped and resumed run logs the steps an uninterrupted one does.
      if (step % c.run.log_every == 0 || step == total_steps) {
        const int64_t skipped = nonfinite.read(run.last_checkpoint_note());  // stop: ends the run here
        float loss_value = 0, accuracy = 0;  // the loss is NaN when this step was skipped (written as null)
        copy_to_host(&loss_value, result.loss->value, sizeof loss_value);
        copy_to_host(&accuracy, result.accuracy, sizeof accuracy);
        // The global batch's: every shard is the same size, so the mean of the ranks' means.
        float logged[2] = {loss_value, accuracy};
        ranks.all_reduce_mean(logged, 2, Device::CPU, "the logged loss and accuracy");
        loss_value = logged[0], accuracy = logged[1];
        double ips = 0, wait = 0;
        timer.take(&ips, &wait);
        const TeacherStats sb = nets.smooth_backbone->stats_at(step - 1), sp = nets.smooth_head->stats_at(step - 1);
        const double updated =
            (sb.params_updated * static_cast<double>(nets.backbone->param_table().total_numel()) +
             sp.params_updated * static_cast<double>(nets.head->param_table().total_numel())) / param_count;
        nlohmann::json ev = {{"step", step}, {"epoch", static_cast<double>(step) / steps_per_epoch},
                             {"loss", loss_value}, {"infonce_top1", 100.0 * accuracy}, {"lr", lr},
                             {"momentum", nets.smooth_backbone->momentum_at(step - 1)},
                             {"updated_fraction", updated}, {"images_per_s", ips}, {"data_wait", wait}};
        if (nonfinite.skipping()) ev["nonfinite_skipped"] = skipped;
        run.metrics().write("train", ev);
        progress.update(step, loss_value, ips, wait, cat("acc ", fixed2(100.0 * accuracy), "%"));
      }
      const bool epoch_end = step % steps_per_epoch == 0;
      if (epoch_end && ranks.root() && c.knn_every > 0 && (step / steps_per_epoch) % c.knn_every == 0 &&
          step < total_steps) {
        const double kt = eval.knn_top1(*nets.k_backbone, ws), ks = eval.knn_top1(*nets.backbone, ws);
        run.metrics().write("knn", {{"step", step}, {"epoch", step / steps_per_epoch}, {"knn_top1_teacher", kt},
                                    {"knn_top1_student", ks}});
        progress.print(cat("epoch ", step / steps_per_epoch, ": kNN top-1 key encoder ", kt, "%, query encoder ", ks, "%"));
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
  // The random-init baseline starts where the query encoder did.
  FinalScores final = final_scores("moco", *nets.k_backbone, "key encoder", *nets.backbone, "query encoder",
                                   c.eval_baseline, part_seed(static_cast<uint64_t>(c.run.seed), kBackbone),
                                   eval.train, eval.test, eval.batch, eval.probe);
  final.event["step"] = step;
  final.event["epoch"] = step / steps_per_epoch;
  run.write_final(final.event, final.line, started);
  return 0;
}

}  // namespace tessera
