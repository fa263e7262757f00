// Test entry point: registers a gradient-check, a gradient-buffer and a CUDA-comparison test
// per op case (tests/op_case.h), runs GoogleTest, and ends with one plain summary line
// "N passed, N failed, N skipped" that CI reads. Exit code is non-zero on any failure.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tests/op_case.h"
#include "kernels/cpu/blas_kernels.h"

namespace {

using tessera::testing::OpCase;

// One CPU check of one case: `run` returns "" or the report; `what` heads the failure.
class CpuCheck : public ::testing::Test {
 public:
  CpuCheck(const OpCase* c, std::string (*run)(const OpCase&), const char* what) : c_(c), run_(run), what_(what) {}
  void TestBody() override {
    const std::string report = run_(*c_);
    EXPECT_TRUE(report.empty()) << what_ << " of " << c_->name << " failed:\n" << report;
  }

 private:
  const OpCase* c_;
  std::string (*run_)(const OpCase&);
  const char* what_;
};

class CudaVsCpu : public ::testing::Test {
 public:
  explicit CudaVsCpu(const OpCase* c) : c_(c) {}
  void TestBody() override {
    std::string reason;
    if (!tessera::testing::cuda_testable(&reason)) GTEST_SKIP() << "CUDA comparison not run: " << reason;
    const std::string report = tessera::testing::run_cuda_comparison(*c_);
    EXPECT_TRUE(report.empty()) << "CUDA vs CPU of " << c_->name << " differ:\n" << report;
  }

 private:
  const OpCase* c_;
};

void register_op_cases() {
  for (const OpCase& c : tessera::testing::op_cases()) {
    const OpCase* p = &c;
    if (c.differentiable) {
      ::testing::RegisterTest("BackendOpsGrad", c.name.c_str(), nullptr, nullptr, __FILE__, __LINE__,
                              [p]() -> ::testing::Test* {
                                return new CpuCheck(p, tessera::testing::run_gradient_check, "gradient check");
                              });
      ::testing::RegisterTest("BackendOpsGradBuffers", c.name.c_str(), nullptr, nullptr, __FILE__, __LINE__,
                              [p]() -> ::testing::Test* {
                                return new CpuCheck(p, tessera::testing::run_gradient_buffer_check,
                                                    "gradient-buffer check");
                              });
    }
    ::testing::RegisterTest("BackendOpsCuda", c.name.c_str(), nullptr, nullptr, __FILE__, __LINE__,
                            [p]() -> ::testing::Test* { return new CudaVsCpu(p); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  kernels::cpu::restart_with_better_blas_core(argv);  // before any BLAS call: see the header
  // tests/blas_kernels_test.cpp runs this binary as a child, in an environment it sets, to see
  // what the restart decided: the family OpenBLAS runs and the variable this process ended with.
  if (const char* probe = std::getenv("TESSERA_TESTS_BLAS_PROBE"); probe && std::strcmp(probe, "1") == 0) {
    const char* coretype = std::getenv("OPENBLAS_CORETYPE");
    std::printf("core=%s\ncoretype=%s\n", kernels::cpu::blas_core_name().c_str(), coretype ? coretype : "(unset)");
    return 0;
  }
  ::testing::InitGoogleTest(&argc, argv);
  register_op_cases();
  const int rc = RUN_ALL_TESTS();
  const auto* u = ::testing::UnitTest::GetInstance();
  std::printf("\n%d passed, %d failed, %d skipped\n", u->successful_test_count(), u->failed_test_count(),
              u->skipped_test_count());
  return rc;
}
