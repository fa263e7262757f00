// The small programs' command lines (apps/tools/init.cpp, embed.cpp, augment-grid.cpp, all on
// apps/run/options.h): --help, unknown flags, missing required flags and bad values, run
// as the built programs, which sit next to this test binary. A usage error exits 2 with one
// line naming the flag, a runtime error exits 1, and neither leaves a file behind.
#include <gtest/gtest.h>
#include <stb/stb_image_write.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/check.h"
#include "tests/program_runs.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

using program_runs::Result;

// Runs build/PROGRAM ARGS (the build directory of this test binary), capturing its output.
Result run(const std::string& program, const std::string& args) {
  const fs::path binary = fs::read_symlink("/proc/self/exe").parent_path() / program;
  if (!fs::exists(binary)) {
    Result r;
    r.output = cat(binary.string(), " not found: build the programs with the tests (make)");
    return r;
  }
  return program_runs::run_command(cat("'", binary.string(), "' ", args));
}

// The one line a usage or runtime error prints, "PROGRAM: message".
void expect_error(const Result& r, int status, const std::string& program, const std::string& needle) {
  EXPECT_EQ(r.status, status) << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << "expected '" << needle << "' in:\n" << r.output;
  const size_t line = r.output.rfind(program + ": ");
  EXPECT_NE(line, std::string::npos) << r.output;
  if (line != std::string::npos) {
    EXPECT_EQ(r.output.find('\n', line), r.output.size() - 1) << r.output;
  }
}

std::string temp_path(const std::string& name) {
  const std::string p = cat(::testing::TempDir(), "tessera_flags_", ::getpid(), "_", name);
  fs::remove_all(p);
  return p;
}

TEST(AppFlags, HelpListsTheFlags) {
  for (const char* program : {"init", "embed", "augment-grid"}) {
    const Result r = run(program, "--help");
    EXPECT_EQ(r.status, 0) << program << ":\n" << r.output;
    EXPECT_NE(r.output.find(cat("usage: ", program)), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("--out S"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("(required)"), std::string::npos) << r.output;
  }
  EXPECT_NE(run("init", "--help").output.find("--num-classes N"), std::string::npos);
  EXPECT_NE(run("embed", "--help").output.find("--split train|test"), std::string::npos);
  EXPECT_NE(run("augment-grid", "--help").output.find("--recipe byol|fixmatch-weak"), std::string::npos);
}

TEST(AppFlags, UnknownFlagIsNamed) {
  expect_error(run("init", "--bogus 1 --out x"), 2, "init", "unknown flag --bogus");
  expect_error(run("init", "--widht 8 --out x"), 2, "init", "did you mean --width?");
  expect_error(run("embed", "--checkpoint c --out x --bogus=1"), 2, "embed", "unknown flag --bogus");
  expect_error(run("augment-grid", "--out x --colums 4"), 2, "augment-grid", "did you mean --columns?");
}

TEST(AppFlags, MissingRequiredFlag) {
  expect_error(run("init", "--arch resnet18"), 2, "init", "--out is required");
  expect_error(run("embed", "--out x"), 2, "embed", "--checkpoint is required");
  expect_error(run("embed", "--checkpoint c"), 2, "embed", "--out is required");
  expect_error(run("augment-grid", "--data synthetic"), 2, "augment-grid", "--out is required");
  expect_error(run("init", "--arch mlp --out x"), 2, "init", "--mlp-sizes: required for --arch mlp");
}

TEST(AppFlags, BadValueIsAUsageErrorAndWritesNothing) {
  const std::string out = temp_path("bad.out");
  expect_error(run("init", "--width abc --out " + out), 2, "init", "--width: expected an integer, found 'abc'");
  expect_error(run("init", "--in-channels 0 --out " + out), 2, "init", "--in-channels: expected a value >= 1");
  expect_error(run("init", "--stem round --out " + out), 2, "init", "--stem: expected one of imagenet, cifar");
  expect_error(run("init", "--arch mlp --mlp-sizes 4,8 --out " + out), 2, "init", "--mlp-sizes: expected IN,HIDDEN,OUT");
  expect_error(run("init", "--arch mlp --mlp-sizes 4,8,2 --width 8 --out " + out), 2, "init",
               "--width: applies to ResNets only");
  expect_error(run("embed", "--checkpoint c --batch-size 0 --out " + out), 2, "embed", "--batch-size: expected a value >= 1");
  expect_error(run("embed", "--checkpoint c --split val --out " + out), 2, "embed", "--split: expected one of train, test");
  expect_error(run("augment-grid", "--channels 4 --out " + out), 2, "augment-grid", "--channels: expected a value in [1, 3]");
  expect_error(run("augment-grid", "--channels 2 --data synthetic --out " + out), 2, "augment-grid",
               "--channels: expected 1 (grey) or 3 (RGB), found 2");
  expect_error(run("augment-grid", "--n abc --out " + out), 2, "augment-grid", "--n: expected an integer");
  expect_error(run("augment-grid", "--out"), 2, "augment-grid", "--out: missing value");
  EXPECT_FALSE(fs::exists(out));
}

TEST(AppFlags, RuntimeErrorExitsOne) {
  const std::string out = temp_path("embed.safetensors");
  expect_error(run("embed", "--device cpu --checkpoint /nonexistent/c.safetensors --out " + out), 1, "embed",
               "/nonexistent/c.safetensors");
  EXPECT_FALSE(fs::exists(out));
}

// init and embed replace an ordinary file but not their input or a file of a training run.
TEST(AppFlags, InitAndEmbedDoNotReplaceARunsFilesOrTheirInput) {
  const std::string dir = temp_path("run_dir");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string ckpt = dir + "/last.safetensors", mlp = "--arch mlp --mlp-sizes 4,8,2 --out ";
  ASSERT_EQ(run("init", mlp + ckpt).status, 0);  // no config.json yet: not a run directory
  std::ofstream(dir + "/config.json") << "{}\n";
  auto bytes = [&ckpt] {
    std::ifstream in(ckpt, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string before = bytes();
  expect_error(run("init", mlp + ckpt), 2, "init", "--out " + ckpt + ": that is a file of the training run in " + dir);
  expect_error(run("embed", "--device cpu --checkpoint " + ckpt + " --out " + ckpt), 2, "embed",
               "--out " + ckpt + ": that is the input file");
  EXPECT_EQ(bytes(), before);
  ASSERT_EQ(run("init", mlp + dir + "/other.safetensors").status, 0);  // the user's own files may go there
  ASSERT_EQ(run("init", mlp + dir + "/other.safetensors").status, 0);  // and be replaced
  // Nor a file of the data set read (embed, augment-grid): any file under its folder.
  const std::string data = dir + "/data";
  fs::create_directories(data + "/nested");
  std::ofstream(data + "/nested/train-images-idx3-ubyte") << "images";
  const std::string into_data = " --data mnist:" + data + " --out " + data + "/nested/train-images-idx3-ubyte";
  expect_error(run("embed", "--device cpu --checkpoint " + ckpt + into_data), 2, "embed",
               "that is a file of the input " + data);
  expect_error(run("augment-grid", into_data), 2, "augment-grid", "that is a file of the input " + data);
  fs::remove_all(dir);
}

// bench's hand-parsed flags: whole numbers in range, the flag named, exit 2; --help exits 0.
TEST(AppFlags, BenchFlagsAreCheckedLikeTheProgramsFlags) {
  // The sanitizer builds (make ci-sanitize-test) build the programs without bench.
  if (!fs::exists(fs::read_symlink("/proc/self/exe").parent_path() / "bench"))
    GTEST_SKIP() << "bench is not built beside this test binary (a subset build)";
  expect_error(run("bench", "teacher-update --preserve-prob abc"), 2, "bench teacher-update",
               "--preserve-prob: expected a number in [0, 1], found 'abc'");
  expect_error(run("bench", "teacher-update --iters 0"), 2, "bench teacher-update",
               "--iters: expected an integer in [1, 1000000], found '0'");
  expect_error(run("bench", "teacher-update --mode foo"), 2, "bench teacher-update",
               "--mode: expected none|tma|se|sts|copy, found 'foo'");
  for (const char* bad : {"--batch 3x", "--steps 2.5", "--width 0x10"})
    expect_error(run("bench", cat("train-step ", bad)), 2, "bench train-step", "expected an integer in [");
  expect_error(run("bench", "train-step extra"), 2, "bench train-step", "unexpected argument 'extra'");
  expect_error(run("bench", "augment --channels 2"), 2, "bench augment", "--channels: expected 1 or 3, found 2");
  EXPECT_EQ(run("bench", "--help").status, 0);
}

// Tool flags whose bad values used to surface as a crash or a misplaced message.
TEST(AppFlags, ToolEdgeCasesAreNamed) {
  const std::string out = temp_path("grid.png");
  expect_error(run("init", "--out ''"), 2, "init", "--out: expected a file name, found ''");
  expect_error(run("augment-grid", "--data synthetic --out-size 1 --out " + out), 2, "augment-grid",
               "--out-size: expected 0 (the image size) or a side of at least 2, found 1");
  const std::string folder = temp_path("not_a_checkpoint");
  fs::create_directories(folder);
  expect_error(run("embed", "--device cpu --checkpoint " + folder + " --out " + out), 1, "embed",
               "checkpoint '" + folder + "': expected a safetensors file, found a folder");
  fs::remove_all(folder);
}

// A folder data set with one class sub-folder: every training program evaluates by classifying,
// which one class would pass at 100%, so each refuses it before it writes anything.
TEST(AppFlags, OneClassFolderIsRefusedByEveryTrainingProgram) {
  const std::string data = temp_path("one_class");
  const std::vector<unsigned char> grey(8 * 8 * 3, 128);
  for (const char* split : {"train", "test"}) {
    fs::create_directories(cat(data, "/", split, "/cat"));
    for (int i = 0; i < 4; ++i)
      ASSERT_TRUE(stbi_write_png(cat(data, "/", split, "/cat/", i, ".png").c_str(), 8, 8, 3, grey.data(), 8 * 3));
  }
  const std::string out = temp_path("one_class_run");
  for (const char* program : {"byol", "fixmatch", "moco"}) {
    expect_error(run(program, cat("--device cpu --data folder:", data, " --out ", out)), 2, program,
                 cat("--data folder:", data, ": expected at least 2 classes in folder/train, found 1 ('cat')"));
    EXPECT_FALSE(fs::exists(out)) << program;
  }
  fs::remove_all(data);
}

// --config supplies a required flag; the command line still wins over it.
TEST(AppFlags, ConfigFileSetsRequiredFlag) {
  const std::string conf = temp_path("init.conf"), out = temp_path("mlp.safetensors");
  std::ofstream(conf) << "arch = mlp\nmlp-sizes = 4,8,2\nseed = 3\nout = " << out << "\n";
  const Result r = run("init", cat("--config ", conf, " --seed 5"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("seed 5"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(out)) << r.output;
  fs::remove(conf);
  fs::remove(out);
}

}  // namespace
}  // namespace tessera
