// kernels/cpu/blas_kernels.h, by its behaviour: this test binary is run as a child (tests/main.cpp,
// TESSERA_TESTS_BLAS_PROBE=1) in environments the test sets, and reports the kernel family
// OpenBLAS actually runs (openblas_get_corename) and the OPENBLAS_CORETYPE it ended with; its
// stderr shows whether it restarted. The environment is arranged here, never inherited, so no
// test depends on how the suite was started (a parent that restarted itself has the variable
// set; a user may have set it or TESSERA_KEEP_BLAS_CORE).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace {

namespace fs = std::filesystem;

struct Probe {
  int status = -1;
  std::string core, coretype, err;
  bool restarted() const { return err.find("restarting") != std::string::npos; }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string field(const std::string& out, const std::string& key) {
  const size_t at = out.find(key + "=");
  if (at == std::string::npos) return "(missing)";
  const size_t begin = at + key.size() + 1;
  return out.substr(begin, out.find('\n', begin) - begin);
}

// Runs this binary with `env` (a prefix for env(1): "-u NAME" or "NAME=value" items) and
// TESSERA_TESTS_BLAS_PROBE=1.
Probe probe(const std::string& env) {
  const fs::path self = fs::read_symlink("/proc/self/exe");
  const fs::path dir = fs::temp_directory_path() / ("tessera_blas_probe_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string cmd = "env " + env + " TESSERA_TESTS_BLAS_PROBE=1 '" + self.string() + "' > '" +
                          (dir / "out").string() + "' 2> '" + (dir / "err").string() + "'";
  Probe p;
  const int rc = std::system(cmd.c_str());
  p.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  const std::string out = slurp(dir / "out");
  p.core = field(out, "core");
  p.coretype = field(out, "coretype");
  p.err = slurp(dir / "err");
  fs::remove_all(dir);
  return p;
}

bool has_avx2_fma() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// The user's choice stands, even the generic family the restart exists to replace: OpenBLAS
// runs Prescott, the variable is unchanged and the program did not restart.
TEST(BlasKernels, NeverOverridesTheUsersChoice) {
#if !defined(__x86_64__)
  GTEST_SKIP() << "not x86-64: Prescott is an x86 family";
#else
  const Probe p = probe("-u TESSERA_KEEP_BLAS_CORE OPENBLAS_CORETYPE=Prescott");
  ASSERT_EQ(p.status, 0) << p.err;
  EXPECT_EQ(p.core, "Prescott") << p.err;
  EXPECT_EQ(p.coretype, "Prescott") << p.err;
  EXPECT_FALSE(p.restarted()) << p.err;
#endif
}

// Nothing set: on a CPU with AVX2 + FMA, OpenBLAS ends on a vector family, by its own choice
// or through the restart; a restart names the family OpenBLAS then runs.
TEST(BlasKernels, RunsVectorKernelsWhenNobodyChose) {
  if (!has_avx2_fma()) GTEST_SKIP() << "this CPU has no AVX2 + FMA (or is not x86-64): Prescott is the right family";
  const Probe p = probe("-u OPENBLAS_CORETYPE -u TESSERA_KEEP_BLAS_CORE");
  ASSERT_EQ(p.status, 0) << p.err;
  EXPECT_NE(p.core, "Prescott") << p.err;
  EXPECT_NE(p.core, "(missing)") << p.err;
  if (p.restarted()) {
    EXPECT_EQ(p.coretype, p.core) << "the restart set one family and OpenBLAS runs another: " << p.err;
  } else {
    EXPECT_EQ(p.coretype, "(unset)") << "the variable changed without a restart: " << p.err;
  }
  std::printf("OpenBLAS runs %s (%s)\n", p.core.c_str(), p.restarted() ? "after the restart" : "its own choice");
}

// TESSERA_KEEP_BLAS_CORE=1 on a CPU where the restart happens: no restart, OpenBLAS keeps its
// fallback and the variable stays unset. Where OpenBLAS picks a vector family itself (no
// restart to disable) the switch changes nothing that can be observed: skipped, saying so.
TEST(BlasKernels, KeepSwitchDisablesTheRestart) {
  const Probe plain = probe("-u OPENBLAS_CORETYPE -u TESSERA_KEEP_BLAS_CORE");
  ASSERT_EQ(plain.status, 0) << plain.err;
  if (!plain.restarted()) GTEST_SKIP() << "OpenBLAS chose " << plain.core << " itself on this CPU: no restart to disable";
  const Probe kept = probe("-u OPENBLAS_CORETYPE TESSERA_KEEP_BLAS_CORE=1");
  ASSERT_EQ(kept.status, 0) << kept.err;
  EXPECT_FALSE(kept.restarted()) << kept.err;
  EXPECT_EQ(kept.core, "Prescott") << kept.err;
  EXPECT_EQ(kept.coretype, "(unset)") << kept.err;
}

}  // namespace
