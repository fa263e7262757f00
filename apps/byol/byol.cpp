// BYOL as in REFERENCE.md:
//
//   student  = backbone -> projector -> predictor        (trained)
//   teacher  = backbone -> projector                     (smoothed copy of the student's)
//   each step k:  teacher <- TeacherSmoother(student, k)   before the forward (the official order)
//                 q_i = student(view_i), z_i = teacher(view_i) under no-grad, train-mode BN
//                 loss = [2 - 2 cos(q_1, z_2)] + [2 - 2 cos(q_2, z_1)]   (batch means)
//                 backward, one fused optimizer step per student arena
//
// The teacher starts as an exact copy of the student (not through the mask, as the official
// code does). Every random draw is Philox(seed, stream, step, index), the loader position is
// saved, so a run stopped at any step resumes bit-identically on the CPU.
#include "apps/byol/byol.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <utility>

#include "apps/run/evaluation.h"
#include "apps/run/features.h"
#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "engine/optimizer.h"
#include "engine/schedule.h"
#include "engine/teacher.h"
#include "engine/workspace.h"
#include "kernels/common/philox.h"
#include "models/model.h"

namespace tessera {

namespace {

struct ByolConfig {
  RunOptions run;
  // data
  std::string data = "fashion-mnist";
  int crop_size = 0;
  float crop_scale_min = 0.08f;
  float blur_prob_1 = 1.0f, blur_prob_2 = 0.1f;
  float solarize_prob_1 = 0.0f, solarize_prob_2 = 0.2f;
  // model
  std::string arch = "resnet18";
  std::string stem = "cifar";
  int width = 64;
  int proj_hidden = 4096, proj_dim = 256, pred_hidden = 4096;
  // optimisation
  std::string optimizer = "lars";
  double lr = 1.0;
  double weight_decay = 1e-5;
  double sgd_momentum = 0.9;
  double lars_eta = 0.02;
  int64_t batch_size = 256;
  int64_t epochs = 200;
  int64_t steps = 0;
  double warmup_epochs = 10;
  int64_t stop_after = 0;
  // teacher
  std::string smoothing = "sts";
  float preserve_prob = 0.7f;
  std::string granularity = "tensor";
  float momentum = 0.99f;
  std::string momentum_schedule = "cosine";
  std::string bn_buffers = "own";
  // evaluation
  int64_t knn_every = 0;
  bool eval_baseline = false;
  bool eval_only = false;
  int64_t eval_train_limit = 0;
  int probe_epochs = 30;
  int64_t eval_batch = 256;
};

void add_byol_options(Options& o, ByolConfig& c) {
  o.section("Data");
  o.add("data", &c.data, "dataset KIND[:PATH]: fashion-mnist, mnist, cifar10, cifar100, stl10, folder");
  o.add("crop-size", &c.crop_size, "side of the random resized crops (0: the images' side)").min(0);
  o.add("crop-scale-min", &c.crop_scale_min, "smallest crop area as a fraction of the image").min(0, false).max(1);
  o.add("blur-prob-1", &c.blur_prob_1, "Gaussian blur probability of view 1").min(0).max(1);
  o.add("blur-prob-2", &c.blur_prob_2, "Gaussian blur probability of view 2").min(0).max(1);
  o.add("solarize-prob-1", &c.solarize_prob_1, "solarize probability of view 1").min(0).max(1);
  o.add("solarize-prob-2", &c.solarize_prob_2, "solarize probability of view 2").min(0).max(1);
  o.section("Model");
  o.choice("arch", &c.arch, {"resnet18", "resnet34", "resnet50"}, "backbone");
  o.choice("stem", &c.stem, {"cifar", "imagenet"}, "cifar: 3x3/1 conv, no max-pool; imagenet: 7x7/2 conv + max-pool");
  o.add("width", &c.width, "channels of the stem and layer1 (64 in torchvision)").min(1);
  o.add("proj-hidden", &c.proj_hidden, "projector hidden units").min(1);
  o.add("proj-dim", &c.proj_dim, "projection size (the predictor's input and output)").min(1);
  o.add("pred-hidden", &c.pred_hidden, "predictor hidden units").min(1);
  o.section("Optimisation");
  o.choice("optimizer", &c.optimizer, {"lars", "sgd", "adamw"}, "optimizer (bias and BN excluded from decay and LARS adaptation)");
  o.add("lr", &c.lr, "peak learning rate, reached after the warm-up, then cosine to 0").min(0, false);
  o.add("weight-decay", &c.weight_decay, "weight decay").min(0);
  o.add("sgd-momentum", &c.sgd_momentum, "momentum of sgd and lars").min(0).max(1, false);
  o.add("lars-eta", &c.lars_eta, "LARS trust coefficient").min(0, false);
  o.add("batch-size", &c.batch_size, "images per step (each gives two views)").min(2);
  o.add("epochs", &c.epochs, "epochs (whole batches per epoch; the rest is skipped)").min(1);
  o.add("steps", &c.steps, "length of the run in steps, overriding --epochs (0: epochs x batches per epoch)").min(0);
  o.add("warmup-epochs", &c.warmup_epochs, "linear warm-up length in epochs").min(0);
  o.add("stop-after", &c.stop_after, "stop with a checkpoint at this step, as Ctrl-C would (0: run to the end)").min(0);
  o.section("Teacher");
  o.choice("smoothing", &c.smoothing, {"none", "tma", "se", "sts"}, "teacher smoothing");
  o.add("preserve-prob", &c.preserve_prob, "p: probability a fragment keeps its teacher value (se, sts)").min(0).max(1);
  o.choice("granularity", &c.granularity, {"tensor", "channel", "element"}, "fragment: one draw per tensor, channel or element");
  o.add("momentum", &c.momentum, "m_0 of the teacher update (tma, sts)").min(0).max(1);
  o.choice("momentum-schedule", &c.momentum_schedule, {"cosine", "constant"}, "cosine: m_k rises from m_0 to 1");
  o.choice("bn-buffers", &c.bn_buffers, {"own", "copy", "ema"}, "teacher BN statistics: its own, copied, or smoothed");
  o.section("Evaluation");
  o.add("knn-every", &c.knn_every, "kNN monitor of teacher and student every N epochs (0: at the end only)").min(0);
  o.flag("eval-baseline", &c.eval_baseline, "also evaluate a randomly initialised backbone of the same shape");
  o.flag("eval-only", &c.eval_only, "evaluate the run given by --resume, do not train");
  o.add("eval-train-limit", &c.eval_train_limit, "train images used by kNN and the probe (0: all)").min(0);
  o.add("probe-epochs", &c.probe_epochs, "epochs of the linear probe").min(1);
  o.add("eval-batch", &c.eval_batch, "images per forward when extracting features").min(1);
  add_run_options(o, c.run);
}

// Independent seeds for the parts of a run, from the run's seed: one Philox draw each, so a
// projector never shares its initial draws with the backbone, nor two smoothers their masks.
uint64_t part_seed(uint64_t seed, uint32_t part) {
  kernels::PhiloxState s(seed, kernels::philox_subsequence(kernels::kStreamInit, (uint64_t{1} << 40) + part), 0);
  const uint64_t hi = s.next_u32();
  return (hi << 32) | s.next_u32();
}
enum Part : uint32_t { kBackbone = 0, kProjector = 1, kPredictor = 2, kTeacherBackbone = 3, kTeacherProjector = 4 };

// The student, the teacher and what updates them.
struct Nets {
  std::unique_ptr<Model> backbone, projector, predictor;     // student
  std::unique_ptr<Model> t_backbone, t_projector;            // teacher
  std::unique_ptr<TeacherSmoother> smooth_backbone, smooth_projector;
  std::unique_ptr<Optimizer> opt_backbone, opt_projector, opt_predictor;
};

ModelSpec backbone_spec(const ByolConfig& c, int in_channels) {
  ModelSpec s;
  s.arch = c.arch;
  s.stem = c.stem;
  s.in_channels = in_channels;
  s.width = c.width;
  return s;
}

ModelSpec mlp_spec(int in, int hidden, int out) {
  ModelSpec s;
  s.arch = "mlp";
  s.mlp_sizes = {in, hidden, out};
  return s;
}

OptimizerConfig optimizer_config(const ByolConfig& c) {
  OptimizerConfig o;
  o.kind = parse_optimizer(c.optimizer);
  o.weight_decay = static_cast<float>(c.weight_decay);
  o.momentum = static_cast<float>(c.sgd_momentum);
  o.eta = static_cast<float>(c.lars_eta);
  o.exclude_bias_and_norm = true;
  return o;
}

TeacherConfig teacher_config(const ByolConfig& c, int64_t total_steps, uint64_t seed) {
  TeacherConfig t;
  t.mode = parse_smoothing_mode(c.smoothing);
  t.granularity = parse_granularity(c.granularity);
  t.preserve_prob = c.preserve_prob;
  t.momentum = c.momentum;
  t.schedule = parse_momentum_schedule(c.momentum_schedule);
  t.total_steps = total_steps;
  t.bn_buffers = parse_bn_buffer_policy(c.bn_buffers);
  t.seed = seed;
  return t;
}

Nets build_nets(const ByolConfig& c, int in_channels, Device device, int64_t total_steps) {
  const uint64_t seed = static_cast<uint64_t>(c.run.seed);
  Nets n;
  n.backbone = make_model(backbone_spec(c, in_channels), device);
  n.backbone->init(part_seed(seed, kBackbone));
  const int d = n.backbone->feature_dim();
  n.projector = make_model(mlp_spec(d, c.proj_hidden, c.proj_dim), device);
  n.projector->init(part_seed(seed, kProjector));
  n.predictor = make_model(mlp_spec(c.proj_dim, c.pred_hidden, c.proj_dim), device);
  n.predictor->init(part_seed(seed, kPredictor));
  n.t_backbone = make_model(n.backbone->spec(), device);
  n.t_projector = make_model(n.projector->spec(), device);
  n.smooth_backbone = std::make_unique<TeacherSmoother>(n.backbone->param_table(), n.backbone->buffer_table(), device,
                                                        teacher_config(c, total_steps, part_seed(seed, kTeacherBackbone)));
  n.smooth_projector = std::make_unique<TeacherSmoother>(
      n.projector->param_table(), n.projector->buffer_table(), device,
      teacher_config(c, total_steps, part_seed(seed, kTeacherProjector)));
  n.smooth_backbone->initialise(n.backbone->params(), n.t_backbone->params(), n.backbone->buffers(),
                                n.t_backbone->buffers());
  n.smooth_projector->initialise(n.projector->params(), n.t_projector->params(), n.projector->buffers(),
                                 n.t_projector->buffers());
  const OptimizerConfig oc = optimizer_config(c);
  n.opt_backbone = std::make_unique<Optimizer>(n.backbone->param_table(), device, oc);
  n.opt_projector = std::make_unique<Optimizer>(n.projector->param_table(), device, oc);
  n.opt_predictor = std::make_unique<Optimizer>(n.predictor->param_table(), device, oc);
  return n;
}

// ---- checkpoint layout ----------------------------------------------------------------------
//   (no prefix)           teacher backbone, torchvision names: the model users export
//   teacher.projector.    teacher projector
//   student.backbone. / student.projector. / student.predictor.
//   optim.backbone. / optim.projector. / optim.predictor.   optimizer state arenas
//   run.loader            loader position (int64)
//   metadata: run.program, run.config, run.step; smoother state under backbone. / projector.
// An optimizer's state arenas under prefix + arena name + "." + slot name, its counters as
// metadata under the same prefix.
void save_optimizer(SafetensorsWriter& w, Optimizer& opt, const std::string& prefix) {
  for (const auto& [name, arena] : opt.state_arenas()) add_arena(w, *arena, prefix + name + ".");
  for (const auto& kv : opt.state_strings()) w.add_metadata(prefix + kv.first, kv.second);
}

// Metadata keys under `prefix`, with the prefix cut off.
std::map<std::string, std::string> metadata_under(const SafetensorsFile& f, const std::string& prefix) {
  std::map<std::string, std::string> out;
  for (const auto& kv : f.metadata())
    if (kv.first.rfind(prefix, 0) == 0) out[kv.first.substr(prefix.size())] = kv.second;
  return out;
}

void load_optimizer(const SafetensorsFile& f, Optimizer& opt, const std::string& prefix) {
  for (const auto& [name, arena] : opt.state_arenas()) load_arenas(f, {arena}, prefix + name + ".");
  opt.restore_state_strings(metadata_under(f, prefix));
}

void add_state(SafetensorsWriter& w, const Nets& n, const data::LoaderPosition& loader) {
  add_model(w, *n.t_backbone, "");
  add_model(w, *n.t_projector, "teacher.projector.");
  add_model(w, *n.backbone, "student.backbone.");
  add_model(w, *n.projector, "student.projector.");
  add_model(w, *n.predictor, "student.predictor.");
  save_optimizer(w, *n.opt_backbone, "optim.backbone.");
  save_optimizer(w, *n.opt_projector, "optim.projector.");
  save_optimizer(w, *n.opt_predictor, "optim.predictor.");
  const std::vector<int64_t> packed = loader.pack();
  w.add_i64("run.loader", {static_cast<int64_t>(packed.size())}, packed);
  for (const auto& kv : n.smooth_backbone->state().to_strings()) w.add_metadata("backbone." + kv.first, kv.second);
  for (const auto& kv : n.smooth_projector->state().to_strings()) w.add_metadata("projector." + kv.first, kv.second);
}

data::LoaderPosition load_state(const SafetensorsFile& f, Nets& n) {
  load_model(f, *n.t_backbone, "", /*allow_unexpected=*/true);
  load_model(f, *n.t_projector, "teacher.projector.");
  load_model(f, *n.backbone, "student.backbone.");
  load_model(f, *n.projector, "student.projector.");
  load_model(f, *n.predictor, "student.predictor.");
  load_optimizer(f, *n.opt_backbone, "optim.backbone.");
  load_optimizer(f, *n.opt_projector, "optim.projector.");
  load_optimizer(f, *n.opt_predictor, "optim.predictor.");
  n.smooth_backbone->restore(TeacherState::from_strings(metadata_under(f, "backbone.")));
  n.smooth_projector->restore(TeacherState::from_strings(metadata_under(f, "projector.")));
  return data::LoaderPosition::unpack(f.i64("run.loader"));
}


struct Evaluator {
  const ByolConfig& c;
  data::Dataset train, test;
  LinearProbeOptions probe;

  BackboneScores run(Model& m, bool linear) {
    return evaluate_backbone(m, train, test, c.eval_batch, linear, probe);
  }
};

std::string fixed2(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

}  // namespace

int byol_main(int argc, const char* const* argv) {
  const auto started = std::chrono::steady_clock::now();
  ByolConfig c;
  Options options("byol", "BYOL self-supervised pre-training with a TMA / SE / STS smoothed teacher.");
  add_byol_options(options, c);
  if (!options.parse(argc, argv)) return 0;
  TrainingRun run("byol", options, c.run);  // on --resume: the saved configuration, checked
  if (c.eval_only && !run.resuming()) throw UsageError("--eval-only evaluates a finished run: give it --resume DIR");
  if (c.run.threads > 0) omp_set_num_threads(c.run.threads);

  std::string device_note;
  const Device device = select_device(c.run.device, &device_note);
  std::fprintf(stderr, "%s\n", device_note.c_str());

  // Data, and the checks that need it, before anything is written.
  const data::DataSpec spec = data::parse_data_spec(c.data);
  const data::Dataset train = data::load_dataset(spec, data::Split::Train);
  data::Dataset test = data::load_dataset(spec, data::Split::Test);
  if (c.batch_size > train.size)
    throw UsageError(cat("--batch-size ", c.batch_size, " is larger than the training set (", train.size, " images in ",
                         train.name, ")"));
  const int64_t steps_per_epoch = train.size / c.batch_size;
  const int64_t total_steps = c.steps > 0 ? c.steps : steps_per_epoch * c.epochs;
  const int64_t warmup_steps = static_cast<int64_t>(std::llround(c.warmup_epochs * static_cast<double>(steps_per_epoch)));
  if (warmup_steps >= total_steps)
    throw UsageError(cat("--warmup-epochs ", c.warmup_epochs, " is ", warmup_steps, " steps, not shorter than the run (",
                         total_steps, " steps)"));

  data::AugmentOptions aug;
  aug.out_size = c.crop_size;
  aug.crop_scale_lo = c.crop_scale_min;
  aug.blur_prob[0] = c.blur_prob_1;
  aug.blur_prob[1] = c.blur_prob_2;
  aug.solarize_prob[0] = c.solarize_prob_1;
  aug.solarize_prob[1] = c.solarize_prob_2;
  // One transform for both views (the loader numbers them 0 and 1; BYOL's views differ in
  // their blur and solarize probabilities). Built here so a bad recipe fails before anything
  // is written; on CUDA it holds the images on the device.
  data::AugmentTransform augment(data::Recipe::Byol, train, device, aug);

  Nets nets = build_nets(c, train.channels, device, total_steps);
  data::LoaderPosition position;
  if (run.resuming()) position = load_state(run.checkpoint(), nets);
  int64_t step = run.start_step();
  if (step > total_steps)
    throw Error(cat("the checkpoint is at step ", step, ", past the run's ", total_steps, " steps"));

  run.begin(options.to_json());
  std::fprintf(stderr, "byol: %s, %ld images, %ld steps of %ld (%.2f epochs); run directory %s\n", train.name.c_str(),
               static_cast<long>(train.size), static_cast<long>(total_steps), static_cast<long>(c.batch_size),
               static_cast<double>(total_steps) / static_cast<double>(steps_per_epoch), run.dir().dir().c_str());

  Evaluator eval{c, first_images(train, c.eval_train_limit), std::move(test), {}};
  eval.probe.epochs = c.probe_epochs;
  eval.probe.seed = static_cast<uint64_t>(c.run.seed);

  auto save = [&](int64_t at, const data::LoaderPosition& pos) {
    SafetensorsWriter w;
    add_state(w, nets, pos);
    run.save(w, at);
    SafetensorsWriter backbone;  // the teacher backbone alone: load_state_dict(strict=True)
    add_model(backbone, *nets.t_backbone, "");
    backbone.write(run.dir().path("backbone.safetensors"));
  };

  // ---- training ----------------------------------------------------------------------------
  if (!c.eval_only && step < total_steps) {
    auto loader = data::make_byol_loader(train, c.batch_size, augment, augment, static_cast<uint64_t>(c.run.seed),
                                         device, position);
    Workspace ws(device);
    Graph g(ws);
    StepTimer timer;
    Progress progress(total_steps, step);
    const int64_t stop_at = c.stop_after > 0 ? std::min(c.stop_after, total_steps) : total_steps;
    const double param_count = static_cast<double>(nets.backbone->param_table().total_numel() +
                                                   nets.projector->param_table().total_numel());
    // --profile-steps A:B: per-kernel times of steps A..B-1 (docs/PROFILING.md); NVTX phases always.
    profile::Profiler profiler(profile::StepWindow::parse(c.run.profile_steps), device, run.dir().dir());
    while (step < stop_at && !stop_requested()) {
      profiler.begin_step(step);
      profile::PhaseSequence phases;
      phases.enter("data");
      timer.data_begin();
      const data::Batch& batch = loader->next();
      timer.data_end();
      // The teacher first, from the student the previous optimizer step left.
      phases.enter("teacher_update");
      nets.smooth_backbone->update(nets.backbone->params(), nets.t_backbone->params(), nets.backbone->buffers(),
                                   nets.t_backbone->buffers(), step);
      nets.smooth_projector->update(nets.projector->params(), nets.t_projector->params(), nets.projector->buffers(),
                                    nets.t_projector->buffers(), step);
      phases.enter("zero_grad");
      nets.backbone->grads().zero();
      nets.projector->grads().zero();
      nets.predictor->grads().zero();
      ws.reset();
      g.clear();
      Var* q[2];
      Var* z[2];
      for (int v = 0; v < 2; ++v) {
        phases.enter("student_forward");
        Var* x = g.input(batch.views[static_cast<size_t>(v)], v == 0 ? "view1" : "view2");
        q[v] = nets.predictor->features(g, nets.projector->features(g, nets.backbone->features(g, x, true), true), true);
        phases.enter("teacher_forward");
        NoGradScope no_grad(g);
        z[v] = nets.t_projector->features(g, nets.t_backbone->features(g, x, true), true);
      }
      phases.enter("loss");
      Var* loss = ops::add(g, ops::byol_loss(g, q[0], z[1]), ops::byol_loss(g, q[1], z[0]));
      phases.enter("backward");
      g.backward(loss);
      phases.enter("optimizer");
      const float lr = warmup_cosine_lr(static_cast<float>(c.lr), step, warmup_steps, total_steps);
      nets.opt_backbone->step(nets.backbone->params(), nets.backbone->grads(), lr);
      nets.opt_projector->step(nets.projector->params(), nets.projector->grads(), lr);
      nets.opt_predictor->step(nets.predictor->params(), nets.predictor->grads(), lr);
      phases.leave();
      profiler.end_step(step);
      timer.step_end(c.batch_size);
      ++step;

      if (step % c.run.log_every == 0 || step == stop_at) {
        float loss_value = 0;
        copy_to_host(&loss_value, loss->value, sizeof loss_value);
        TS_CHECK(std::isfinite(loss_value), "the loss is ", loss_value, " at step ", step, "; lower --lr");
        double ips = 0, wait = 0;
        timer.take(&ips, &wait);
        const TeacherStats sb = nets.smooth_backbone->stats_at(step - 1), sp = nets.smooth_projector->stats_at(step - 1);
        const double updated =
            (sb.params_updated * static_cast<double>(nets.backbone->param_table().total_numel()) +
             sp.params_updated * static_cast<double>(nets.projector->param_table().total_numel())) / param_count;
        run.metrics().write("train", {{"step", step}, {"epoch", static_cast<double>(step) / steps_per_epoch},
                                      {"loss", loss_value}, {"lr", lr},
                                      {"momentum", nets.smooth_backbone->momentum_at(step - 1)},
                                      {"updated_fraction", updated}, {"images_per_s", ips}, {"data_wait", wait}});
        progress.update(step, loss_value, ips, wait);
      }
      const bool epoch_end = step % steps_per_epoch == 0;
      if (epoch_end && c.knn_every > 0 && (step / steps_per_epoch) % c.knn_every == 0 && step < total_steps) {
        const double kt = eval.run(*nets.t_backbone, false).knn_top1, ks = eval.run(*nets.backbone, false).knn_top1;
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
      std::fprintf(stderr, "byol: stopped at step %ld of %ld; checkpoint %s; continue with --resume %s\n",
                   static_cast<long>(step), static_cast<long>(total_steps), run.dir().checkpoint().c_str(),
                   run.dir().dir().c_str());
      return 0;
    }
  }

  // ---- final evaluation ------------------------------------------------------------------------
  std::fprintf(stderr, "byol: evaluating on %ld train / %ld test images\n", static_cast<long>(eval.train.size),
               static_cast<long>(eval.test.size));
  const BackboneScores teacher = eval.run(*nets.t_backbone, true);
  const BackboneScores student = eval.run(*nets.backbone, true);
  nlohmann::json final_event = {{"step", step},
                                {"epoch", step / steps_per_epoch},
                                {"knn_top1_teacher", teacher.knn_top1},
                                {"linear_top1_teacher", teacher.linear_top1},
                                {"knn_top1_student", student.knn_top1},
                                {"linear_top1_student", student.linear_top1}};
  std::string line = cat("byol: linear probe top-1: teacher ", fixed2(teacher.linear_top1), "% (kNN ",
                         fixed2(teacher.knn_top1), "%), student ", fixed2(student.linear_top1), "%");
  if (c.eval_baseline) {
    auto random_init = make_model(nets.backbone->spec(), device);
    random_init->init(part_seed(static_cast<uint64_t>(c.run.seed), kBackbone));  // the student's starting point
    const BackboneScores base = eval.run(*random_init, true);
    final_event["knn_top1_baseline"] = base.knn_top1;
    final_event["linear_top1_baseline"] = base.linear_top1;
    const double gain = teacher.linear_top1 - base.linear_top1;
    line += cat("; random-init baseline ", fixed2(base.linear_top1), "% (", gain >= 0 ? "+" : "", fixed2(gain),
                " points)");
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  final_event["wall_s"] = wall;
  run.metrics().write("final", final_event);
  std::printf("%s; wall %dm%02ds\n", line.c_str(), static_cast<int>(wall) / 60, static_cast<int>(wall) % 60);
  std::fflush(stdout);
  return 0;
}

}  // namespace tessera
