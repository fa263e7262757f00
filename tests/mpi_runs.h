// What the multi-process tests share: the environment mpirun needs here and why they would skip
// (tests/distributed_test.cpp runs the built programs under mpirun, tests/distributed_ranks_test.cpp
// this test binary).
//
// On this machine (2 cores, as root) OpenMPI needs OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM) and
// --oversubscribe; both are set for the tests' children only. Every test skips, with the
// reason, on a build without MPI or a machine without mpirun.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "engine/distributed.h"

namespace tessera::mpi_runs {

inline const char* const kMpiEnv =
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1";

// Why the multi-process tests cannot run here, or "" when they can.
inline std::string why_no_mpi() {
  if (!dist::built_with_mpi()) return "this build has no MPI (MPI=0): install libopenmpi-dev (make deps) and rebuild";
  if (std::system("command -v mpirun >/dev/null 2>&1") != 0) return "mpirun is not on the PATH (openmpi-bin)";
  return "";
}

}  // namespace tessera::mpi_runs

#define SKIP_WITHOUT_MPI()                                               \
  do {                                                                   \
    const std::string why = ::tessera::mpi_runs::why_no_mpi();           \
    if (!why.empty()) GTEST_SKIP() << why;                               \
  } while (0)
