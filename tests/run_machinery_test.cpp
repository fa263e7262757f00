// The run machinery the training programs share (apps/run/options.h, run.h): flags,
// config files, run directories, the metrics log, --mosaic-steps, and the life of a run
// (apps/run/training_run.h): exit codes, new runs, saves, resumes and what they refuse.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "apps/run/options.h"
#include "apps/run/run_directory.h"
#include "apps/run/teacher_log.h"
#include "apps/run/training_run.h"
#include "data/dataset.h"
#include "data/synthetic_images.h"
#include "engine/autograd.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/ops.h"
#include "engine/workspace.h"
#include "tests/thrown.h"

namespace tessera {
namespace {

struct Cfg {
  int64_t batch = 128;
  double lr = 0.05;
  float p = 0.7f;
  std::string smoothing = "sts";
  bool eval_only = false;
  std::string name = "x";
  std::string data = "synthetic";
};

Options make_options(Cfg& c) {
  Options o("prog", "a test program");
  o.add("batch-size", &c.batch, "images per step").min(1);
  o.add("lr", &c.lr, "learning rate").min(0, false);
  o.add("preserve-prob", &c.p, "keep probability").min(0).max(1);
  o.choice("smoothing", &c.smoothing, {"none", "tma", "se", "sts"}, "teacher smoothing");
  o.flag("eval-only", &c.eval_only, "evaluate only");
  o.add("data", &c.data, "the data set");
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

// The UsageError of a program with one option `--x` of `target`'s type given `value` ("" when
// it is accepted).
template <class T>
std::string one_option_error(T* target, const std::string& value) {
  Options o("prog", "a test program");
  o.add("x", target, "a value");
  try {
    parse(o, {"--x", value});
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

std::string temp_dir(const std::string& name) {
  std::string d = ::testing::TempDir() + "tessera_run_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
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

// Bounds are inclusive or exclusive as declared: the bound itself is accepted by min(1),
// min(0).max(1), and refused by min(0, /*inclusive=*/false).
TEST(Options, RangeBoundsAreInclusiveOrExclusiveAsDeclared) {
  EXPECT_EQ(usage_error({"--batch-size", "1"}), "");
  EXPECT_EQ(usage_error({"--preserve-prob", "0"}), "");
  EXPECT_EQ(usage_error({"--preserve-prob", "1"}), "");
  EXPECT_NE(usage_error({"--batch-size", "0"}).find("--batch-size: expected a value >= 1, found 0"), std::string::npos);
  EXPECT_NE(usage_error({"--lr", "0"}).find("--lr: expected a value > 0, found 0"), std::string::npos);
}

// Values the number parsers would take in silently are refused: an empty value, an integer
// past int64, NaN and infinity.
TEST(Options, EmptyOverflowingAndNonFiniteNumbersAreRefused) {
  EXPECT_NE(usage_error({"--batch-size="}).find("--batch-size: expected an integer, found ''"), std::string::npos);
  EXPECT_NE(usage_error({"--batch-size", "99999999999999999999"}).find("--batch-size: expected an integer"),
            std::string::npos);
  EXPECT_NE(usage_error({"--lr", "nan"}).find("--lr: expected a number, found 'nan'"), std::string::npos);
  EXPECT_NE(usage_error({"--lr", "inf"}).find("--lr: expected a number, found 'inf'"), std::string::npos);
  EXPECT_NE(usage_error({"--lr="}).find("--lr: expected a number, found ''"), std::string::npos);
}

// A float option holds float's range: a value past it is refused, not stored as inf (which the
// saved configuration would write as null).
TEST(Options, FloatOptionsHoldTheirRange) {
  float x = 0;
  const auto parse_x = [&x](const std::string& value) { return one_option_error(&x, value); };
  EXPECT_EQ(parse_x("3e38"), "");
  EXPECT_EQ(x, 3e38f);
  EXPECT_NE(parse_x("1e39").find("--x: 1e39 is out of range"), std::string::npos) << parse_x("1e39");
  EXPECT_NE(parse_x("-1e39").find("--x: -1e39 is out of range"), std::string::npos) << parse_x("-1e39");
  EXPECT_EQ(x, 3e38f);
}

// An int option holds exactly the int32 range: its ends are accepted, one past them refused.
TEST(Options, Int32OptionsHoldTheirRange) {
  int n = 0;
  const auto parse_n = [&n](const std::string& value) { return one_option_error(&n, value); };
  EXPECT_EQ(parse_n("2147483647"), "");
  EXPECT_EQ(n, INT32_MAX);
  EXPECT_EQ(parse_n("-2147483648"), "");
  EXPECT_EQ(n, INT32_MIN);
  EXPECT_NE(parse_n("2147483648").find("--x: 2147483648 is out of range"), std::string::npos);
  EXPECT_NE(parse_n("-2147483649").find("--x: -2147483649 is out of range"), std::string::npos);
  EXPECT_EQ(n, INT32_MIN);  // a refused value is not stored
}

// Every documented spelling of a switch's value, on the command line and in a config file.
TEST(Options, SwitchesTakeEverySpelling) {
  for (const char* yes : {"true", "1", "yes", "on"}) {
    Cfg c;
    Options o = make_options(c);
    ASSERT_TRUE(parse(o, {std::string("--eval-only=") + yes}));
    EXPECT_TRUE(c.eval_only) << yes;
  }
  for (const char* no : {"false", "0", "no", "off"}) {
    Cfg c;
    c.eval_only = true;
    Options o = make_options(c);
    ASSERT_TRUE(parse(o, {std::string("--eval-only=") + no}));
    EXPECT_FALSE(c.eval_only) << no;
  }
  EXPECT_NE(usage_error({"--eval-only=maybe"}).find("--eval-only: expected true or false, found 'maybe'"),
            std::string::npos);
}

// The text after the first '=' is the value, '=' included; "--" alone is not a flag; a name
// far from every flag gets no "did you mean" (a wrong hint is worse than none).
TEST(Options, CommandLineShapes) {
  Cfg c;
  Options o = make_options(c);
  ASSERT_TRUE(parse(o, {"--name=a=b"}));
  EXPECT_EQ(c.name, "a=b");
  EXPECT_NE(usage_error({"--"}).find("unexpected argument '--'"), std::string::npos);
  const std::string far = usage_error({"--bogus", "1"});
  EXPECT_NE(far.find("unknown flag --bogus; see --help"), std::string::npos) << far;
}

// --resume takes a run directory or its last.safetensors, never another file: resuming rewrites
// the directory's checkpoint and cuts its metrics back, which would destroy a kept copy and the
// run's later history. A config path that is a directory is refused too.
TEST(RunDirectory, ResumeRefusesACheckpointThatIsNotTheRunsOwn) {
  const std::string dir = temp_dir("resume_other_file");
  RunDirectory::for_new_run(dir).create();
  std::ofstream(dir + "/step5.safetensors") << "x";
  EXPECT_TRUE(has(thrown([&] { RunDirectory::for_resume(dir + "/step5.safetensors"); }),
                  "expected a run directory or its last.safetensors, found another file"));
  std::filesystem::create_directory(dir + "/last.safetensors");
  EXPECT_TRUE(has(thrown([&] { RunDirectory::for_resume(dir); }), "is not a file"));
  Cfg c;
  Options o = make_options(c);
  EXPECT_TRUE(has(thrown([&] { parse(o, {"--config", dir}); }), "expected a file, found a directory"));
}

// Config files: Windows line endings are read, a bad value names the file and line, a file
// cannot include another nor set a flag twice (even one the command line gives), and values
// from a file are not "given", yet a saved configuration does not replace them.
TEST(Options, ConfigFileDetails) {
  const std::string dir = temp_dir("config_details");
  RunDirectory::for_new_run(dir).create();
  const std::string file = dir + "/a.conf";
  std::ofstream(file) << "lr = 0.25\r\nsmoothing = tma\r\n";
  Cfg c;
  Options o = make_options(c);
  ASSERT_TRUE(parse(o, {"--config", file}));
  EXPECT_DOUBLE_EQ(c.lr, 0.25);
  EXPECT_EQ(c.smoothing, "tma");
  EXPECT_FALSE(o.given("lr"));
  // A saved configuration goes beneath the file as beneath the command line (a resume refuses
  // a file value that differs from the saved one before it gets here; tests/byol_test.cpp).
  o.apply_json({{"lr", 0.125}, {"smoothing", "sts"}}, "checkpoint");
  EXPECT_DOUBLE_EQ(c.lr, 0.25);
  EXPECT_EQ(c.smoothing, "tma");
  // A saved configuration carries the values the file gave, not the file: a run restored
  // from it did not read a config file.
  const nlohmann::json saved = o.to_json();
  Cfg d;
  Options restored = make_options(d);
  ASSERT_TRUE(parse(restored, {}));
  restored.apply_json(saved, "checkpoint");
  EXPECT_DOUBLE_EQ(d.lr, 0.25);
  EXPECT_EQ(restored.source("config"), "default");
  EXPECT_EQ(restored.to_json()["config"], "");

  std::ofstream(file) << "\nbatch-size = abc\n";
  EXPECT_NE(usage_error({"--config", file}).find("--batch-size (" + file + ":2): expected an integer, found 'abc'"),
            std::string::npos);
  std::ofstream(file) << "config = " << file << "\n";
  EXPECT_NE(usage_error({"--config", file}).find(file + ":1: a config file cannot include another"),
            std::string::npos);
  std::ofstream(file) << "lr = 0.5\nsmoothing = tma\n--lr = 0.25\n";
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--config", file}, std::vector<std::string>{"--config", file, "--lr", "0.1"}})
    EXPECT_NE(usage_error(args).find(file + ":3: 'lr' is set again (first at " + file + ":1); a config file sets each "
                                            "flag once"),
              std::string::npos);
}

// --help shows each option's default as it was declared, even after the command line
// changed it (`prog --lr 0.3 --help`); whole numbers print as integers, an empty string as
// "none", and a section heading comes before the first option added after it.
TEST(Options, HelpShowsDeclaredDefaultsAndSections) {
  double steps = 100;
  std::string out;
  Cfg c;
  Options o = make_options(c);
  o.section("Schedule");
  o.add("steps", &steps, "training steps");
  o.add("out", &out, "output file");
  ASSERT_TRUE(parse(o, {"--lr", "0.3"}));
  const std::string help = o.help_text();
  EXPECT_NE(help.find("(default: 0.05)"), std::string::npos) << help;
  EXPECT_EQ(help.find("0.3"), std::string::npos) << help;
  EXPECT_NE(help.find("(default: 100)"), std::string::npos) << help;
  EXPECT_NE(help.find("output file (default: none)"), std::string::npos) << help;
  EXPECT_NE(help.find("a name (default: x)\n\nSchedule:\n  --steps X"), std::string::npos) << help;
}

// A saved configuration keeps every digit: a value needing all 17 significant digits comes
// back from to_json() as the same double.
TEST(Options, SavedNumbersKeepFullPrecision) {
  Cfg c;
  Options o = make_options(c);
  const double lr = 0.1 + 0.2;  // 0.30000000000000004
  ASSERT_TRUE(parse(o, {"--lr", "0.30000000000000004"}));
  EXPECT_EQ(c.lr, lr);
  EXPECT_EQ(o.to_json()["lr"].get<double>(), lr);
}

// A custom check() refuses a value with a UsageError naming the flag, what was expected and
// the value found; a value it accepts passes.
TEST(Options, CustomChecksNameTheFlagAndValue) {
  const auto parse_name = [](const std::string& value) -> std::string {
    Cfg c;
    Options o("prog", "a test program");
    o.add("tag", &c.name, "a short tag").check([&c] { return c.name.size() > 3 ? "at most 3 characters" : ""; });
    try {
      parse(o, {"--tag", value});
    } catch (const UsageError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(parse_name("abc"), "");
  EXPECT_NE(parse_name("abcd").find("--tag: expected at most 3 characters, found abcd"), std::string::npos);
}

// Mistakes in a program's own option table are caught when it is built.
TEST(Options, TableMistakesAreErrors) {
  Cfg c;
  Options o = make_options(c);
  int64_t other = 1;
  EXPECT_THROW(o.add("batch-size", &other, "again"), Error);
  std::string pick = "c";
  EXPECT_THROW(o.choice("pick", &pick, {"a", "b"}, "a default outside its choices"), Error);
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

// A run that ended is resumed for more steps (its checkpoint is the last step): the "final"
// event goes, though its step is not past the checkpoint's, so the log has one final event. A
// line that is not JSON (a hand edit, a damaged disk) goes alone: the valid lines after it stay.
TEST(MetricsLog, ResumeDropsTheFinalEventAndLinesThatAreNotJson) {
  const std::string dir = temp_dir("metrics_cut");
  RunDirectory::for_new_run(dir).create();
  const std::string path = dir + "/metrics.jsonl";
  auto steps_in = [&path] {
    std::ifstream in(path);
    std::vector<std::string> events;
    for (std::string line; std::getline(in, line);) {
      const nlohmann::json j = nlohmann::json::parse(line);
      events.push_back(cat(j["event"].get<std::string>(), " ", j.value("step", -1)));
    }
    return events;
  };
  {
    MetricsLog log(path, -1);
    for (int step = 10; step <= 40; step += 10) log.write("train", {{"step", step}});
    log.write("final", {{"step", 40}, {"knn_top1_teacher", 80.0}});
  }
  { MetricsLog log(path, 40); }
  EXPECT_EQ(steps_in(), (std::vector<std::string>{"train 10", "train 20", "train 30", "train 40"}));

  std::ofstream(path, std::ios::app) << "{\"event\": \"train\", \"st\n{\"event\": \"train\", \"step\": 45}\n"
                                     << "[1, 2]\n{\"event\": \"train\", \"step\": 55}\n";
  { MetricsLog log(path, 50); }
  EXPECT_EQ(steps_in(), (std::vector<std::string>{"train 10", "train 20", "train 30", "train 40", "train 45"}));
  // A checkpoint at step 0 keeps nothing after it; -1 (a new run's log) keeps the file as is.
  { MetricsLog log(path, -1); }
  EXPECT_EQ(steps_in().size(), 5u);
  { MetricsLog log(path, 0); }
  EXPECT_TRUE(steps_in().empty());
}

// --mosaic-steps: step counts >= 1, comma-separated, in the order given; anything else is a
// usage error naming the bad item, and the option's check gives the expected form.
TEST(MosaicSteps, ParsesCountsAndNamesTheBadItem) {
  EXPECT_EQ(parse_mosaic_steps("100,800,1600"), (std::vector<int64_t>{100, 800, 1600}));
  EXPECT_EQ(parse_mosaic_steps("1"), std::vector<int64_t>{1});
  EXPECT_TRUE(parse_mosaic_steps("").empty());
  auto problem = [](const std::string& text) -> std::string {
    try {
      parse_mosaic_steps(text);
    } catch (const UsageError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(problem("100,0").find("--mosaic-steps: expected step counts >= 1, found '0'"), std::string::npos);
  EXPECT_NE(problem("100,-5").find("found '-5'"), std::string::npos);
  EXPECT_NE(problem("100,2x").find("found '2x'"), std::string::npos);
  EXPECT_NE(problem("100,,200").find("found ''"), std::string::npos);
  EXPECT_NE(problem("100,").find("--mosaic-steps: expected a step after the last comma"), std::string::npos);
  EXPECT_EQ(mosaic_steps_problem("5,100"), "");
  EXPECT_EQ(mosaic_steps_problem("5,x"), "a comma-separated list of step counts >= 1, like 100,800,1600");
}

TEST(StopRequest, FlagSetAndCleared) {
  clear_stop_request();
  EXPECT_FALSE(stop_requested());
  request_stop();
  EXPECT_TRUE(stop_requested());
  clear_stop_request();
  EXPECT_FALSE(stop_requested());
}

// The final evaluation's stop: the first signal ends the process at once with 128 + its number,
// after the caller's message; a stop that came before the call is returned as that status.
TEST(StopRequest, DuringWorkThatSavesNothingTheFirstSignalEndsTheProcess) {
  const std::string dir = temp_dir("stop_exit"), lock = dir + "/run.lock";
  std::filesystem::create_directories(dir);
  auto in_child = [&lock](int sig_before, int sig_after, std::string* said) {
    int out[2];
    if (::pipe(out) != 0) return -1;
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(out[1], STDERR_FILENO);
      install_stop_handler();
      clear_stop_request();
      if (sig_before) ::raise(sig_before);
      const int status = stop_signals_exit("prog: stopped during the evaluation\n", lock);
      if (status != 0) ::_exit(status);
      if (sig_after) ::raise(sig_after);
      ::_exit(0);  // no signal: the work finishes
    }
    ::close(out[1]);
    char buf[256];
    for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;) said->append(buf, static_cast<size_t>(n));
    ::close(out[0]);
    int wstatus = 0;
    ::waitpid(pid, &wstatus, 0);
    return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
  };
  write_file_atomic(lock, "pid");
  std::string said;
  EXPECT_EQ(in_child(0, SIGTERM, &said), 128 + SIGTERM);
  EXPECT_TRUE(has(said, "prog: stopped during the evaluation\n")) << said;
  EXPECT_FALSE(path_exists(lock));  // removed on the way out
  said.clear();
  EXPECT_EQ(in_child(0, SIGINT, &said), 128 + SIGINT);
  said.clear();
  EXPECT_EQ(in_child(SIGTERM, 0, &said), 128 + SIGTERM);  // the stop came during training
  EXPECT_TRUE(has(said, "prog: stopped during the evaluation\n")) << said;
  said.clear();
  EXPECT_EQ(in_child(0, 0, &said), 0);
  EXPECT_FALSE(has(said, "stopped")) << said;
  std::filesystem::remove_all(dir);
}

// ---- the life of a run (apps/run/training_run.h) --------------------------------------------


// One invocation of a program with the test flags and the shared run flags.
struct Invocation {
  Cfg cfg;
  RunOptions run;
  Options options = make_options(cfg);
  explicit Invocation(const std::vector<std::string>& args) {
    add_run_options(options, run);
    parse(options, args);
  }
};

TEST(RunProgram, ExitCodesAndTheProgramsName) {
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(run_program("prog", [] { return 7; }), 7);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(run_program("prog", []() -> int { throw UsageError("--lr: bad"); }), 2);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "prog: --lr: bad\n");
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(run_program("prog", []() -> int { throw Error("disk full"); }), 1);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "prog: disk full\n");
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(run_program("prog", []() -> int { throw std::runtime_error("other"); }), 1);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "prog: other\n");
}

// A new run touches nothing before begin(); save() adds the run's metadata and refuses a
// non-finite tensor, keeping the checkpoint it had; the note names the last checkpoint's step
// (step 0 included).
TEST(TrainingRun, NewRunWritesAtBeginAndSavesWithItsMetadata) {
  const std::string dir = temp_dir("training_new");
  Invocation inv({"--out", dir, "--lr", "0.125"});
  TrainingRun run("prog", inv.options, inv.run);
  EXPECT_FALSE(run.resuming());
  EXPECT_EQ(run.start_step(), 0);
  EXPECT_FALSE(path_exists(dir));
  EXPECT_TRUE(has(thrown([&] { run.checkpoint(); }), "not resuming: there is no checkpoint"));
  const std::string ckpt = dir + "/last.safetensors";
  EXPECT_EQ(run.last_checkpoint_note(), "no checkpoint was written before it (" + ckpt + " does not exist)");

  const nlohmann::json config = inv.options.to_json();
  run.begin(config);
  EXPECT_EQ(nlohmann::json::parse(read_file(dir + "/config.json")), config);
  EXPECT_TRUE(path_exists(dir + "/metrics.jsonl"));
  EXPECT_TRUE(path_exists(dir + "/run.lock"));

  const float good[2] = {1.0f, 2.0f};
  SafetensorsWriter w;
  w.add_f32("w", {2}, good);
  run.save(w, 0);
  const SafetensorsFile f = SafetensorsFile::read(ckpt);
  EXPECT_EQ(f.metadata(TrainingRun::kProgramKey), "prog");
  EXPECT_EQ(nlohmann::json::parse(f.metadata(TrainingRun::kConfigKey)), config);
  EXPECT_EQ(f.metadata(TrainingRun::kStepKey), "0");
  EXPECT_EQ(run.last_checkpoint_note(), "the last checkpoint, " + ckpt + ", holds step 0");
  SafetensorsWriter w5;
  w5.add_f32("w", {2}, good);
  run.save(w5, 5);
  EXPECT_EQ(SafetensorsFile::read(ckpt).metadata(TrainingRun::kStepKey), "5");
  EXPECT_EQ(run.last_checkpoint_note(), "the last checkpoint, " + ckpt + ", holds step 5");

  const std::string saved = read_file(ckpt);
  const float bad[2] = {1.0f, std::numeric_limits<float>::quiet_NaN()};
  SafetensorsWriter b;
  b.add_f32("w", {2}, good);
  b.add_f32("v", {2}, bad);
  const std::string e = thrown([&] { run.save(b, 6); });
  EXPECT_TRUE(has(e, ckpt + ": not saving step 6: v (element 1 = "));
  EXPECT_TRUE(has(e, "is not finite; the last checkpoint, " + ckpt + ", holds step 5")) << e;
  EXPECT_EQ(read_file(ckpt), saved);
  std::filesystem::remove_all(dir);
}

// A run saved at step 3 (its log already past it, as after a kill), then resumed: the saved
// configuration comes back beneath the command line, flags that would change the computation
// must match it, per-invocation flags are not taken from it, and the log drops the events past
// the checkpoint.
TEST(TrainingRun, ResumeKeepsTheSavedConfiguration) {
  const std::string dir = temp_dir("training_resume"), ckpt = dir + "/last.safetensors";
  {
    Invocation inv({"--out", dir, "--lr", "0.125", "--batch-size", "64", "--log-every", "5", "--nonfinite-check",
                    "ops"});
    TrainingRun run("prog", inv.options, inv.run);
    run.begin(inv.options.to_json());
    for (int step : {2, 3}) run.metrics().write("train", {{"step", step}});
    SafetensorsWriter w;
    w.add_i64("n", {1}, {3});
    run.save(w, 3);
    run.metrics().write("train", {{"step", 4}});
  }
  {
    Invocation inv({"--resume", dir});
    TrainingRun run("prog", inv.options, inv.run);
    EXPECT_TRUE(run.resuming());
    EXPECT_EQ(run.start_step(), 3);
    EXPECT_EQ(run.checkpoint().metadata(TrainingRun::kStepKey), "3");
    EXPECT_EQ(run.last_checkpoint_note(), "the last checkpoint, " + ckpt + ", holds step 3");
    EXPECT_DOUBLE_EQ(inv.cfg.lr, 0.125);
    EXPECT_EQ(inv.cfg.batch, 64);
    EXPECT_EQ(inv.run.log_every, 5);
    EXPECT_EQ(inv.run.nonfinite_check, "grads");  // per invocation: not from the checkpoint
    EXPECT_EQ(inv.run.out, dir);
    // A second process (here: a second run in this one) is refused while this one holds it.
    Invocation again({"--resume", dir});
    EXPECT_TRUE(has(thrown([&] { TrainingRun("prog", again.options, again.run); }), "is in use by another run"));
    run.begin(inv.options.to_json());
    std::vector<int64_t> steps;
    std::ifstream in(dir + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) steps.push_back(nlohmann::json::parse(line)["step"].get<int64_t>());
    EXPECT_EQ(steps, (std::vector<int64_t>{2, 3}));
  }
  auto refusal = [&](const std::vector<std::string>& args) {
    Invocation inv(args);
    return thrown<UsageError>([&] { TrainingRun("prog", inv.options, inv.run); });
  };
  EXPECT_EQ(refusal({"--resume", dir, "--lr", "0.125", "--batch-size", "64"}), "");  // given, but the same
  const std::string lr = refusal({"--resume", dir, "--lr", "0.25"});
  EXPECT_TRUE(has(lr, "--lr 0.25 differs from the run being resumed (0.125 in " + ckpt + ")")) << lr;
  const std::string smoothing = refusal({"--resume", dir, "--smoothing", "tma"});
  EXPECT_TRUE(has(smoothing, "--smoothing \"tma\" differs")) << smoothing;
  EXPECT_EQ(refusal({"--resume", dir, "--out", dir}), "");
  const std::string out = refusal({"--resume", dir, "--out", dir + "_other"});
  EXPECT_TRUE(has(out, "a resumed run continues in its own directory (" + dir + ")")) << out;
  {
    // Flags that do not change the computation may change, and the command line wins.
    // config.json takes them at the first save, not before: a resume that fails before saving
    // leaves the run's description as it was.
    Invocation inv({"--resume", dir, "--log-every", "7", "--save-every", "2"});
    TrainingRun run("prog", inv.options, inv.run);
    EXPECT_EQ(inv.run.log_every, 7);
    EXPECT_EQ(inv.run.save_every, 2);
    auto logged_every = [&] { return nlohmann::json::parse(read_file(dir + "/config.json"))["log-every"]; };
    run.begin(inv.options.to_json());
    EXPECT_EQ(logged_every(), 5);
    SafetensorsWriter w;
    w.add_i64("n", {1}, {4});
    run.save(w, 4);
    EXPECT_EQ(logged_every(), 7);
  }
  std::filesystem::remove_all(dir);
}

// The checkpoint holds the fingerprints of the data it trained on: a resume may name the same
// images in a new place (--data differs), and is refused when the images differ, moved or not.
TEST(TrainingRun, ResumeFollowsDataThatMovedAndRefusesDataThatChanged) {
  const std::string dir = temp_dir("training_data");
  const data::Dataset images = data::synthetic_dataset(8, 1, 6, 6, 1), other = data::synthetic_dataset(8, 1, 6, 6, 2);
  {
    Invocation inv({"--out", dir, "--data", "mnist:/old/place"});
    TrainingRun run("prog", inv.options, inv.run);
    run.check_data({&images});
    run.begin(inv.options.to_json());
    SafetensorsWriter w;
    w.add_i64("n", {1}, {3});
    run.save(w, 3);
  }
  EXPECT_EQ(SafetensorsFile::read(dir + "/last.safetensors").metadata(TrainingRun::kDataKey),
            "synthetic: " + data::fingerprint(images));
  EXPECT_NE(data::fingerprint(images), data::fingerprint(other));
  {
    Invocation inv({"--resume", dir, "--data", "mnist:/new/place"});
    TrainingRun run("prog", inv.options, inv.run);
    EXPECT_EQ(inv.cfg.data, "mnist:/new/place");
    run.check_data({&images});
    const std::string e = thrown([&] { run.check_data({&other}); });
    EXPECT_TRUE(has(e, "the data is not what the run trained on")) << e;
    EXPECT_TRUE(has(e, "(the run's --data was \"mnist:/old/place\")")) << e;
  }
  {
    Invocation inv({"--resume", dir});
    TrainingRun run("prog", inv.options, inv.run);
    EXPECT_TRUE(has(thrown([&] { run.check_data({&other}); }), "the data is not what the run trained on"));
  }
  std::filesystem::remove_all(dir);
}

// The end of a run as every program writes it: the stop line names the step and how to go on;
// the final event gets the wall time and goes to metrics.jsonl, its line to stdout.
TEST(TrainingRun, StopLineAndFinalEvent) {
  const std::string dir = temp_dir("training_end");
  Invocation inv({"--out", dir});
  TrainingRun run("prog", inv.options, inv.run);
  run.begin(inv.options.to_json());
  testing::internal::CaptureStderr();
  run.report_stop(3, 10);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "prog: stopped at step 3 of 10; checkpoint " + dir +
                                                        "/last.safetensors; continue with --resume " + dir + "\n");
  testing::internal::CaptureStdout();
  run.write_final({{"step", 10}, {"top1", 50.5}}, "prog: top-1 50.50%", std::chrono::steady_clock::now());
  const std::string line = testing::internal::GetCapturedStdout();
  EXPECT_TRUE(has(line, "prog: top-1 50.50%; wall 0m0")) << line;
  const std::string log = read_file(dir + "/metrics.jsonl");  // the final event is its last line
  const nlohmann::json final = nlohmann::json::parse(log.substr(log.rfind('\n', log.size() - 2) + 1));
  EXPECT_EQ(final.value("step", -1), 10);
  EXPECT_EQ(final.value("top1", 0.0), 50.5);
  EXPECT_TRUE(final.contains("wall_s")) << final.dump();
  std::filesystem::remove_all(dir);
}

// An epoch-based run's length: whole batches per epoch, --steps over epochs, the warm-up in
// whole steps, and the two UsageErrors.
TEST(EpochSchedule, StepsFromEpochsAndItsErrors) {
  const data::Dataset images = data::synthetic_dataset(8, 1, 6, 6, 1);
  EpochSchedule s = epoch_schedule(images, 3, 0, 2, 0.5);
  EXPECT_EQ(s.steps_per_epoch, 2);  // 8 / 3: the last 2 images of an epoch are skipped
  EXPECT_EQ(s.total_steps, 4);
  EXPECT_EQ(s.warmup_steps, 1);
  s = epoch_schedule(images, 3, 5, 2, 0.0);
  EXPECT_EQ(s.total_steps, 5);
  EXPECT_EQ(s.warmup_steps, 0);
  EXPECT_TRUE(has(thrown([&] { epoch_schedule(images, 9, 0, 2, 0.0); }),
                  "--batch-size 9 is larger than the training set (8 images in synthetic)"));
  EXPECT_TRUE(has(thrown([&] { epoch_schedule(images, 3, 0, 2, 2.0); }),
                  "--warmup-epochs 2 is 4 steps, not shorter than the run (4 steps)"));
}

// Checkpoints that are not a resumable run of this program, each refused with what is wrong.
TEST(TrainingRun, ResumeRefusesCheckpointsOfNoRunOrAnotherProgram) {
  const std::string dir = temp_dir("training_refuse"), ckpt = dir + "/last.safetensors";
  Cfg defaults;
  Options o = make_options(defaults);
  RunOptions r;
  add_run_options(o, r);
  parse(o, {});
  const std::string config = o.to_json().dump();
  std::filesystem::create_directories(dir);
  auto resume_with = [&](const std::map<std::string, std::string>& metadata) {
    SafetensorsWriter w;
    w.add_i64("n", {1}, {0});
    for (const auto& kv : metadata) w.add_metadata(kv.first, kv.second);
    w.write(ckpt);
    Invocation inv({"--resume", dir});
    return thrown([&] { TrainingRun("prog", inv.options, inv.run); });
  };
  const std::string none = ckpt + ": not a training checkpoint (no run.program / run.config / run.step metadata)";
  EXPECT_EQ(resume_with({}), none);
  EXPECT_EQ(resume_with({{"run.program", "prog"}, {"run.config", config}}), none);
  EXPECT_EQ(resume_with({{"run.program", "prog"}, {"run.step", "1"}}), none);
  EXPECT_EQ(resume_with({{"run.config", config}, {"run.step", "1"}}), none);
  EXPECT_EQ(resume_with({{"run.program", "prog"}, {"run.config", config}, {"run.step", "1"}}), "");
  EXPECT_EQ(resume_with({{"run.program", "other"}, {"run.config", config}, {"run.step", "1"}}),
            ckpt + ": a other checkpoint, not prog");
  EXPECT_EQ(resume_with({{"run.program", "prog"}, {"run.config", "[1, 2]"}, {"run.step", "1"}}),
            ckpt + ": the saved configuration is not a JSON object");
  EXPECT_EQ(resume_with({{"run.program", "prog"}, {"run.config", "{\"lr\": "}, {"run.step", "1"}}),
            ckpt + ": the saved configuration is not a JSON object");
  EXPECT_EQ(resume_with({{"run.program", "prog"}, {"run.config", config}, {"run.step", "three"}}),
            ckpt + ": step 'three' is not an integer");
  // A saved value outside its flag's range is checked like one from the command line.
  nlohmann::json zero = o.to_json();
  zero["batch-size"] = 0;
  EXPECT_EQ(resume_with({{"run.program", "prog"}, {"run.config", zero.dump()}, {"run.step", "1"}}),
            "--batch-size (" + ckpt + "): expected a value >= 1, found 0");
  std::filesystem::remove_all(dir);
}

// begin() checks the directory again under the lock: a run that another process started
// there after this one's checks is not overwritten. --debug turns on source locations.
TEST(TrainingRun, BeginRefusesARunStartedMeanwhile) {
  const std::string dir = temp_dir("training_meanwhile");
  const bool shown = check_locations_shown();
  show_check_locations(false);
  Invocation inv({"--out", dir, "--debug"});
  TrainingRun run("prog", inv.options, inv.run);
  EXPECT_TRUE(check_locations_shown());
  show_check_locations(shown);
  std::filesystem::create_directories(dir);
  write_file_atomic(dir + "/config.json", "{\"theirs\": 1}\n");
  EXPECT_TRUE(has(thrown([&] { run.begin(inv.options.to_json()); }), "already holds a run"));
  EXPECT_EQ(read_file(dir + "/config.json"), "{\"theirs\": 1}\n");
  std::filesystem::remove_all(dir);
}

// An --out that exists already is locked by the constructor, before any data is loaded.
TEST(TrainingRun, AnExistingOutIsLockedAtOnce) {
  const std::string dir = temp_dir("training_locked");
  std::filesystem::create_directories(dir);
  Invocation first({"--out", dir}), second({"--out", dir});
  TrainingRun run("prog", first.options, first.run);
  EXPECT_TRUE(path_exists(dir + "/run.lock"));
  EXPECT_TRUE(has(thrown([&] { TrainingRun("prog", second.options, second.run); }), "is in use by another run"));
  std::filesystem::remove_all(dir);
}

// save() reads the attached guard before anything else: in stop mode a non-finite step since
// the last read ends the run there, naming the checkpoint that stays; in skip mode the count
// and the steps go into the checkpoint. --nonfinite-check ops makes attach() check every op.
TEST(TrainingRun, SaveReadsTheAttachedGuardFirst) {
  const std::string dir = temp_dir("training_guard"), ckpt = dir + "/last.safetensors";
  OwnedTensor nan_loss(Device::CPU, Shape{1});
  fill_value(nan_loss, std::numeric_limits<float>::quiet_NaN());
  const float good[1] = {1.0f};
  {
    NonfiniteGuard guard("stop", Device::CPU);
    Invocation inv({"--out", dir, "--nonfinite-check", "ops"});
    TrainingRun run("prog", inv.options, inv.run);
    run.attach(guard);
    EXPECT_TRUE(guard.monitor().checking_ops());
    run.begin(inv.options.to_json());
    SafetensorsWriter w1;
    w1.add_f32("w", {1}, good);
    run.save(w1, 1);
    guard.monitor().check_step(2, nan_loss);
    SafetensorsWriter w3;
    w3.add_f32("w", {1}, good);
    const std::string e = thrown([&] { run.save(w3, 3); });
    EXPECT_TRUE(has(e, "step 2: the loss is not finite")) << e;
    EXPECT_TRUE(has(e, "the last checkpoint, " + ckpt + ", holds step 1")) << e;
    EXPECT_EQ(SafetensorsFile::read(ckpt).metadata(TrainingRun::kStepKey), "1");
  }
  std::filesystem::remove_all(dir);
  {
    NonfiniteGuard guard("skip", Device::CPU);
    Invocation inv({"--out", dir});
    TrainingRun run("prog", inv.options, inv.run);
    run.attach(guard);
    EXPECT_FALSE(guard.monitor().checking_ops());
    run.begin(inv.options.to_json());
    guard.monitor().check_step(2, nan_loss);
    SafetensorsWriter w;
    w.add_f32("w", {1}, good);
    run.save(w, 3);
    const SafetensorsFile f = SafetensorsFile::read(ckpt);
    EXPECT_EQ(f.metadata(NonfiniteGuard::kSkippedKey), "1");
    EXPECT_EQ(f.metadata(NonfiniteGuard::kSkippedStepsKey), "2");
  }
  std::filesystem::remove_all(dir);
}

// With --nonfinite-check ops the monitor numbers the steps of a resumed run from its start
// step: a NaN put into the relu of step 3 (the first step after the checkpoint) is found there.
TEST(TrainingRun, OpChecksNumberTheStepsFromTheResumedStep) {
  const std::string dir = temp_dir("training_ops");
  {
    Invocation inv({"--out", dir});
    TrainingRun run("prog", inv.options, inv.run);
    run.begin(inv.options.to_json());
    SafetensorsWriter w;
    w.add_i64("n", {1}, {3});
    run.save(w, 3);
  }
  NonfiniteGuard guard("stop", Device::CPU);
  guard.monitor().poison_at(3, "forward:relu");
  Invocation inv({"--resume", dir, "--nonfinite-check", "ops"});
  TrainingRun run("prog", inv.options, inv.run);
  ASSERT_EQ(run.start_step(), 3);
  run.attach(guard);
  OwnedTensor x(Device::CPU, Shape{4}), dx(Device::CPU, Shape{4});
  fill_value(x, 1.0f);
  fill_zero(dx);
  Workspace ws(Device::CPU);
  Graph g(ws);
  Var* loss = ops::sum(g, ops::relu(g, g.param(x.t, dx.t, "x")));  // ops are checked when they record
  guard.monitor().check_step(3, loss->value);
  const std::string e = thrown([&] { guard.read("NOTE"); });
  EXPECT_TRUE(has(e, "step 3: the loss is not finite")) << e;
  EXPECT_TRUE(has(e, "the first op that went non-finite: relu")) << e;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tessera
