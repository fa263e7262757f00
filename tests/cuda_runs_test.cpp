// byol and fixmatch end to end with --device cuda, in-process: a tiny run of each for a few
// steps on generated 8 x 8 images finishes, every logged loss is finite, and its checkpoint
// loads back onto the GPU with every tensor as the file holds it. The CPU runs are tested in
// tests/byol_test.cpp and tests/fixmatch_test.cpp (same tiny recipes); this is the one place a
// whole program runs on CUDA. Skipped, with the reason, where CUDA cannot run.
//
// Written without a GPU to run it on: kept to what the programs and the CPU tests already do
// (flags, files, metrics.jsonl, load_model), so that it is right by reading.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/byol/byol.h"
#include "apps/fixmatch/fixmatch.h"
#include "apps/run/run_directory.h"
#include "apps/run/training_run.h"
#include "data/synthetic_images.h"
#include "tests/program_runs.h"
#include "engine/checkpoint.h"
#include "models/model.h"
#include "tests/op_case.h"

namespace tessera {
namespace {

std::string temp_dir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "tessera_cuda_runs_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

int run(const char* program, int (*main_fn)(int, const char* const*), const std::vector<std::string>& args) {
  std::vector<const char*> argv{program};
  for (const std::string& a : args) argv.push_back(a.c_str());
  clear_stop_request();
  return run_program(program, [&] { return main_fn(static_cast<int>(argv.size()), argv.data()); });
}

std::vector<nlohmann::json> events(const std::string& dir, const std::string& name) {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j["event"] == name) out.push_back(j);
  }
  return out;
}

// A non-finite number is written to JSON as null: is_number() is false for it.
bool finite_number(const nlohmann::json& v) { return v.is_number() && std::isfinite(v.get<double>()); }

// Loads the model saved under `prefix` onto the GPU and compares every slot with the file.
void expect_loads_on_cuda(const SafetensorsFile& f, const std::string& prefix) {
  std::unique_ptr<Model> m;
  ASSERT_NO_THROW(m = load_model(f, Device::CUDA, prefix, /*allow_unexpected=*/true)) << "prefix '" << prefix << "'";
  ASSERT_EQ(m->device(), Device::CUDA);
  for (size_t i = 0; i < m->param_table().size(); ++i) {
    const std::string name = prefix + m->param_table()[i].name;
    EXPECT_EQ(to_host_f32(m->params().slot(i)), f.f32(name)) << name;
  }
  for (size_t i = 0; i < m->buffer_table().size(); ++i) {
    const Slot& s = m->buffer_table()[i];
    const std::vector<float> got = to_host_f32(m->buffers().slot(i));
    if (s.kind == ParamKind::BnNumBatches) {
      EXPECT_EQ(got, std::vector<float>{static_cast<float>(f.i64(prefix + s.name).at(0))}) << prefix + s.name;
    } else {
      EXPECT_EQ(got, f.f32(prefix + s.name)) << prefix + s.name;
    }
  }
}

TEST(CudaRuns, ByolTrainsOnCudaAndItsCheckpointLoads) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "byol on CUDA not run: " << reason;
  const std::string root = temp_dir("byol"), out = root + "/run";
  program_runs::write_synthetic_idx(root, "train", 64, 1);
  program_runs::write_synthetic_idx(root, "t10k", 40, 2);
  // tests/byol_test.cpp's tiny recipe on the GPU: 4 steps per epoch, 2 epochs.
  const std::vector<std::string> tiny = {
      "--data", "mnist:" + root, "--out", out, "--device", "cuda", "--width", "4", "--proj-hidden", "16",
      "--proj-dim", "8", "--pred-hidden", "16", "--batch-size", "16", "--epochs", "2", "--optimizer", "sgd",
      "--lr", "0.05", "--warmup-epochs", "1", "--log-every", "1", "--save-every", "3", "--eval-batch", "32",
      "--probe-epochs", "3", "--momentum", "0.9"};
  ASSERT_EQ(run("byol", byol_main, tiny), 0);
  const std::vector<nlohmann::json> train = events(out, "train");
  ASSERT_EQ(train.size(), 8u);
  for (const auto& j : train) EXPECT_TRUE(finite_number(j["loss"])) << j.dump();
  const std::vector<nlohmann::json> final_ev = events(out, "final");
  ASSERT_EQ(final_ev.size(), 1u);
  EXPECT_EQ(final_ev[0]["step"], 8);
  EXPECT_TRUE(finite_number(final_ev[0]["linear_top1_teacher"])) << final_ev[0].dump();

  const SafetensorsFile f = SafetensorsFile::read(out + "/last.safetensors");
  EXPECT_EQ(f.metadata("run.step"), "8");
  expect_loads_on_cuda(f, "");                   // the teacher backbone
  expect_loads_on_cuda(f, "student.backbone.");  // the student's
  // And the program itself resumes it on the GPU and evaluates.
  EXPECT_EQ(run("byol", byol_main, {"--resume", out, "--eval-only", "--device", "cuda"}), 0);
  std::filesystem::remove_all(root);
}

TEST(CudaRuns, FixMatchTrainsOnCudaAndItsCheckpointLoads) {
  std::string reason;
  if (!testing::cuda_testable(&reason)) GTEST_SKIP() << "fixmatch on CUDA not run: " << reason;
  const std::string root = temp_dir("fixmatch"), out = root + "/run";
  program_runs::write_synthetic_idx(root, "train", 200, 1);
  program_runs::write_synthetic_idx(root, "t10k", 50, 2);
  // tests/fixmatch_test.cpp's tiny recipe on the GPU: 6 steps.
  const std::vector<std::string> tiny = {
      "--data", "mnist:" + root, "--out", out, "--device", "cuda", "--arch", "wrn-10-1", "--labels", "20",
      "--batch-size", "4", "--mu", "2", "--steps", "6", "--threshold", "0.1", "--eval-every", "3",
      "--eval-batch", "25", "--log-every", "1"};
  ASSERT_EQ(run("fixmatch", fixmatch_main, tiny), 0);
  const std::vector<nlohmann::json> train = events(out, "train");
  ASSERT_EQ(train.size(), 6u);
  for (const auto& j : train) {
    EXPECT_TRUE(finite_number(j["sup_loss"])) << j.dump();
    EXPECT_TRUE(finite_number(j["unsup_loss"])) << j.dump();
  }
  const std::vector<nlohmann::json> final_ev = events(out, "final");
  ASSERT_EQ(final_ev.size(), 1u);
  EXPECT_EQ(final_ev[0]["step"], 6);
  EXPECT_TRUE(finite_number(final_ev[0]["test_top1_teacher"])) << final_ev[0].dump();

  const SafetensorsFile f = SafetensorsFile::read(out + "/last.safetensors");
  EXPECT_EQ(f.metadata("run.step"), "6");
  expect_loads_on_cuda(f, "");          // the teacher
  expect_loads_on_cuda(f, "student.");  // the student
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace tessera
