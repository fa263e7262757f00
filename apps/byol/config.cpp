#include "apps/byol/config.h"

namespace tessera::byol {

void add_options(Options& o, Config& c) {
  o.section("Data");
  o.add("data", &c.data, "dataset KIND[:PATH]: fashion-mnist, mnist, cifar10, cifar100, stl10, folder");
  o.add("image-size", &c.image_size, "folder data: the side images are resized and centre-cropped to (0: 32)")
      .min(0).max(1024);
  o.add("crop-size", &c.crop_size, "side of the random resized crops (0: the images' side)").min(0).max(1024);
  o.choice("crop-interpolation", &c.crop_interpolation, {"bilinear", "bicubic"},
           "how a crop is resized: bilinear (torchvision's default) or bicubic (PIL's, antialiased when shrinking: "
           "BYOL's and solo-learn's)");
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
  o.flag("lars-clip-lr", &c.lars_clip_lr,
         "LARS: an adapted tensor moves at min(trust ratio, lr), not trust ratio x lr (solo-learn's clip_lr)");
  o.add("batch-size", &c.batch_size, "images per step (each gives two views)").min(2);
  o.add("epochs", &c.epochs, "epochs (whole batches per epoch; the rest is skipped)").min(1);
  o.add("steps", &c.steps, "length of the run in steps, overriding --epochs (0: epochs x batches per epoch)").min(0);
  o.add("warmup-epochs", &c.warmup_epochs, "linear warm-up length in epochs").min(0);
  o.add("stop-after", &c.stop_after, "stop with a checkpoint at this step, as Ctrl-C would (0: run to the end)").min(0);
  o.section("Teacher");
  add_teacher_options(o, c.teacher, "teacher", "", "cosine: m_k rises from m_0 to 1");
  o.section("Evaluation");
  o.add("knn-every", &c.knn_every, "kNN monitor of teacher and student every N epochs (0: at the end only)").min(0);
  o.flag("eval-baseline", &c.eval_baseline, "also evaluate a randomly initialised backbone of the same shape");
  o.flag("eval-only", &c.eval_only, "evaluate the run given by --resume, do not train");
  o.add("eval-train-limit", &c.eval_train_limit, "train images used by kNN and the probe (0: all)").min(0);
  o.add("probe-epochs", &c.probe_epochs, "epochs of the linear probe").min(1);
  o.add("eval-batch", &c.eval_batch, "images per forward when extracting features").min(1);
  add_run_options(o, c.run);
  add_distributed_options(o, c.dist);
}

}  // namespace tessera::byol
