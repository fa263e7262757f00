// The run machinery the training programs share (apps/run/options.h, run.h): flags,
// config files, run directories, the metrics log.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "engine/check.h"

namespace tessera {
namespace {

struct Cfg {
  int64_t batch = 128;
  double lr = 0.05;
  float p = 0.7f;
  std::string smoothing = "sts";
  bool eval_only = false;
  std::string name = "x";
};

Options make_options(Cfg& c) {
  Options o("prog", "a test program");
  o.add("batch-size", &c.batch, "images per step").min(1);
  o.add("lr", &c.lr, "learning rate").min(0, false);
  o.add("preserve-prob", &c.p, "keep probability").min(0).max(1);
  o.choice("smoothing", &c.smoothing, {"none", "tma", "se", "sts"}, "teacher smoothing");
  o.flag("eval-only", &c.eval_only, "evaluate only");
  o.add("name", &c.name, "a name");
  return o;
}

bool parse(Options& o, std::vector<std::string> args) {
  std::vector<const char*> argv{"prog"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  return o.parse(static_cast<int>(argv.size()), argv.data());
}

std::string usage_error(std::vector<std::string> args) {
  Cfg c;
  Options o = make_options(c);
  try {
    parse(o, args);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

std::string temp_dir(const std::string& name) {
  std::string d = ::testing::TempDir() + "tessera_run_" + name + "_" + std::to_string(::getpid());
  std::system(("rm -rf '" + d + "'").c_str());
  return d;
}

TEST(Options, DefaultsAndBothValueForms) {
  Cfg c;
  Options o = make_options(c);
  ASSERT_TRUE(parse(o, {"--lr=0.1", "--batch-size", "64", "--eval-only", "--smoothing", "tma"}));
  EXPECT_EQ(c.batch, 64);
  EXPECT_DOUBLE_EQ(c.lr, 0.1);
  EXPECT_FLOAT_EQ(c.p, 0.7f);
  EXPECT_EQ(c.smoothing, "tma");
  EXPECT_TRUE(c.eval_only);
  EXPECT_TRUE(o.given("lr"));
  EXPECT_FALSE(o.given("preserve-prob"));
  const nlohmann::json j = o.to_json();
  EXPECT_EQ(j["batch-size"], 64);
  EXPECT_EQ(j["preserve-prob"], 0.7);  // the float written as its shortest decimal
  EXPECT_EQ(j["smoothing"], "tma");
}

TEST(Options, ErrorsNameTheFlag) {
  EXPECT_NE(usage_error({"--lrr", "0.1"}).find("unknown flag --lrr (did you mean --lr?)"), std::string::npos);
  EXPECT_NE(usage_error({"--lr", "-0.1"}).find("--lr: expected a value > 0, found -0.1"), std::string::npos);
  EXPECT_NE(usage_error({"--preserve-prob", "1.5"}).find("--preserve-prob: expected a value in [0, 1]"),
            std::string::npos);
  EXPECT_NE(usage_error({"--batch-size", "12x"}).find("--batch-size: expected an integer, found '12x'"),
            std::string::npos);
  EXPECT_NE(usage_error({"--smoothing", "ema"}).find("--smoothing: expected one of none, tma, se, sts"),
            std::string::npos);
  EXPECT_NE(usage_error({"--lr"}).find("--lr: missing value"), std::string::npos);
  EXPECT_NE(usage_error({"stray"}).find("unexpected argument 'stray'"), std::string::npos);
  EXPECT_EQ(usage_error({"--lr", "1"}), "");
}

TEST(Options, ConfigFileUnderCommandLine) {
  const std::string dir = temp_dir("config");
  RunDirectory::for_new_run(dir).create();
  const std::string file = dir + "/a.conf";
  std::ofstream(file) << "# a recipe\nlr = 0.5   # trailing comment\n\nbatch-size = 32\n--smoothing = se\neval-only = true\n";
  Cfg c;
  Options o = make_options(c);
  ASSERT_TRUE(parse(o, {"--batch-size", "16", "--config", file}));
  EXPECT_DOUBLE_EQ(c.lr, 0.5);
  EXPECT_EQ(c.batch, 16);  // the command line wins, whatever the order
  EXPECT_EQ(c.smoothing, "se");
  EXPECT_TRUE(c.eval_only);
  EXPECT_EQ(o.source("lr"), file + ":2");

  std::ofstream(file) << "lr = 0.5\nmomentum = 0.9\n";
  EXPECT_NE(usage_error({"--config", file}).find(file + ":2: unknown flag 'momentum'"), std::string::npos);
  std::ofstream(file) << "lr = -1\n";
  EXPECT_NE(usage_error({"--config", file}).find("--lr (" + file + ":1): expected a value > 0"), std::string::npos);
  std::ofstream(file) << "just words\n";
  EXPECT_NE(usage_error({"--config", file}).find("expected `flag = value`"), std::string::npos);
  EXPECT_NE(usage_error({"--config", dir + "/missing.conf"}).find("--config: cannot read"), std::string::npos);
}

TEST(Options, HelpListsDefaults) {
  Cfg c;
  Options o = make_options(c);
  const std::string help = o.help_text();
  EXPECT_NE(help.find("--lr X"), std::string::npos);
  EXPECT_NE(help.find("(default: 0.05)"), std::string::npos);
  EXPECT_NE(help.find("--smoothing none|tma|se|sts"), std::string::npos);
  EXPECT_NE(help.find("(default: sts)"), std::string::npos);
}

TEST(Options, SavedConfigBeneathCommandLine) {
  Cfg a;
  Options oa = make_options(a);
  ASSERT_TRUE(parse(oa, {"--lr", "0.3", "--smoothing", "tma", "--preserve-prob", "0.25"}));
  const nlohmann::json saved = oa.to_json();
  Cfg b;
  Options ob = make_options(b);
  ASSERT_TRUE(parse(ob, {"--batch-size", "7"}));
  ob.apply_json(saved, "checkpoint");
  EXPECT_DOUBLE_EQ(b.lr, 0.3);
  EXPECT_FLOAT_EQ(b.p, 0.25f);
  EXPECT_EQ(b.smoothing, "tma");
  EXPECT_EQ(b.batch, 7);
  EXPECT_EQ(ob.to_json()["preserve-prob"], saved["preserve-prob"]);
}

TEST(RunDirectory, RefusesAnExistingRunAndResumesIt) {
  const std::string dir = temp_dir("dir");
  RunDirectory run = RunDirectory::for_new_run(dir + "/nested/run");
  run.create();
  run.write_config({{"lr", 0.1}});
  EXPECT_THROW(RunDirectory::for_new_run(dir + "/nested/run"), Error);
  EXPECT_THROW(RunDirectory::for_resume(dir + "/nested/run"), Error);  // no checkpoint yet
  write_file_atomic(run.checkpoint(), "x");
  EXPECT_EQ(RunDirectory::for_resume(dir + "/nested/run/").dir(), dir + "/nested/run");
  EXPECT_EQ(RunDirectory::for_resume(run.checkpoint()).dir(), dir + "/nested/run");
  EXPECT_THROW(RunDirectory::for_resume(dir + "/absent"), Error);
  EXPECT_EQ(read_file(run.path("config.json")), "{\n  \"lr\": 0.1\n}\n");
}

TEST(MetricsLog, ResumeDropsEventsPastTheCheckpoint) {
  const std::string dir = temp_dir("metrics");
  RunDirectory::for_new_run(dir).create();
  const std::string path = dir + "/metrics.jsonl";
  {
    MetricsLog log(path, -1);
    for (int step = 10; step <= 40; step += 10) log.write("train", {{"step", step}, {"loss", 1.0 / step}});
    log.write("final", {{"step", 40}});
  }
  {
    MetricsLog log(path, 20);
    log.write("train", {{"step", 30}, {"loss", 0.5}});
  }
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["step"], 10);
  EXPECT_EQ(lines[1]["step"], 20);
  EXPECT_EQ(lines[2]["step"], 30);
  EXPECT_EQ(lines[2]["loss"], 0.5);
  EXPECT_EQ(lines[2]["event"], "train");
}

TEST(StopRequest, FlagSetAndCleared) {
  clear_stop_request();
  EXPECT_FALSE(stop_requested());
  request_stop();
  EXPECT_TRUE(stop_requested());
  clear_stop_request();
  EXPECT_FALSE(stop_requested());
}

}  // namespace
}  // namespace tessera
