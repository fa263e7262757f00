#include "apps/fixmatch/config.h"

#include "apps/run/teacher_log.h"

namespace tessera::fixmatch {

void add_options(Options& o, Config& c) {
  o.section("Data");
  o.add("data", &c.data, "dataset KIND[:PATH] (fashion-mnist, mnist, cifar10, cifar100, stl10, folder)");
  o.add("image-size", &c.image_size, "folder data: the side images are resized and centre-cropped to (0: 32)")
      .min(0).max(1024);
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
  o.choice("smoothing", &c.teacher.smoothing, {"none", "tma", "se", "sts"}, "teacher smoothing");
  o.choice("granularity", &c.teacher.granularity, {"tensor", "channel", "element"}, "what one SE / STS draw keeps or updates");
  o.add("preserve-prob", &c.teacher.preserve_prob, "SE / STS: probability a fragment keeps its teacher value").min(0).max(1, false);
  o.add("momentum", &c.teacher.momentum, "TMA / STS momentum (constant)").min(0).max(1, false);
  o.choice("bn-buffers", &c.teacher.bn_buffers, {"copy", "own", "ema"}, "teacher BatchNorm statistics: copied from the student, its own, or smoothed");
  o.choice("pseudo-labels", &c.pseudo_labels, {"student", "teacher"},
           "who labels the weak views: the student (FixMatch) or the smoothed teacher (mean-teacher style)");
  o.add("mosaic-steps", &c.teacher.mosaic_steps, "write every teacher fragment's age to DIR/mosaic-<step>.json at these step counts (1,650,2600)")
      .check([&c] { return mosaic_steps_problem(c.teacher.mosaic_steps); });
  o.section("Evaluation");
  o.add("eval-every", &c.eval_every, "steps between test-set evaluations of teacher and student (0: at the end only)").min(0);
  o.add("eval-batch", &c.eval_batch, "images per evaluation batch").min(1);
  o.flag("eval-only", &c.eval_only, "evaluate the run given by --resume, do not train");
  o.add("stop-after", &c.stop_after, "stop (with a checkpoint) after this step, to continue with --resume (0: never)").min(0);
  add_run_options(o, c.run);
  add_distributed_options(o, c.dist);
}

}  // namespace tessera::fixmatch
