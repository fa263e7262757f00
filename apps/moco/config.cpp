#include "apps/moco/config.h"

namespace tessera::moco {

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
  o.add("blur-prob", &c.blur_prob, "Gaussian blur probability of both views (MoCo v2: 0.5)").min(0).max(1);
  o.section("Model");
  o.choice("arch", &c.arch, {"resnet18", "resnet34", "resnet50"}, "backbone");
  o.choice("stem", &c.stem, {"cifar", "imagenet"}, "cifar: 3x3/1 conv, no max-pool; imagenet: 7x7/2 conv + max-pool");
  o.add("width", &c.width, "channels of the stem and layer1 (64 in torchvision)").min(1);
  o.add("head-hidden", &c.head_hidden, "hidden units of the 2-layer MLP head (0: the backbone's feature width)").min(0);
  o.add("head-dim", &c.head_dim, "output size of the head: the keys' and queries' dimension").min(1);
  o.section("Optimisation (SGD, cosine to 0)");
  o.add("lr", &c.lr, "learning rate per 256 images: the run uses lr x batch-size / 256").min(0, false);
  o.add("weight-decay", &c.weight_decay, "weight decay (every parameter, as MoCo)").min(0);
  o.add("sgd-momentum", &c.sgd_momentum, "SGD momentum").min(0).max(1, false);
  o.add("batch-size", &c.batch_size, "images per step (each gives a query view and a key view)").min(2);
  o.add("epochs", &c.epochs, "epochs (whole batches per epoch; the rest is skipped)").min(1);
  o.add("steps", &c.steps, "length of the run in steps, overriding --epochs (0: epochs x batches per epoch)").min(0);
  o.add("warmup-epochs", &c.warmup_epochs, "linear warm-up length in epochs (MoCo v2: none)").min(0);
  o.add("stop-after", &c.stop_after, "stop with a checkpoint at this step, as Ctrl-C would (0: run to the end)").min(0);
  o.section("Contrastive");
  o.add("queue", &c.queue, "K: negative keys kept in the ring queue (a multiple of --batch-size, the global batch)").min(1);
  o.add("temperature", &c.temperature, "InfoNCE temperature").min(0, false);
  o.add("bn-splits", &c.bn_splits,
        "key encoder BatchNorm groups over the global batch: one process splits it into this many sub-batches "
        "(split BN); N ranks shuffle it across ranks (shuffle BN) and split each rank's slice into bn-splits / N "
        "(a multiple of N; N gives MoCo's shuffle BN)")
      .min(1);
  o.section("Key encoder (the teacher)");
  add_teacher_options(o, c.teacher, "key encoder", " (MoCo itself: tma)", "constant (MoCo) or cosine: m_k rises from m_0 to 1");
  o.section("Evaluation");
  o.add("knn-every", &c.knn_every, "kNN monitor of key and query encoders every N epochs (0: at the end only)").min(0);
  o.flag("eval-baseline", &c.eval_baseline, "also evaluate a randomly initialised backbone of the same shape");
  o.flag("eval-only", &c.eval_only, "evaluate the run given by --resume, do not train");
  o.add("eval-train-limit", &c.eval_train_limit, "train images used by kNN and the probe (0: all)").min(0);
  o.add("probe-epochs", &c.probe_epochs, "epochs of the linear probe").min(1);
  o.add("eval-batch", &c.eval_batch, "images per forward when extracting features").min(1);
  add_run_options(o, c.run);
  add_distributed_options(o, c.dist);
}

double peak_lr(const Config& c) { return c.lr * static_cast<double>(c.batch_size) / 256.0; }

}  // namespace tessera::moco
