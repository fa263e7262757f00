# tessera: one entry point for build, test, demo, bench and gpu-check.
#
#   make              engine library and every program into build/
#   make demo         install missing packages, build, BYOL + STS on Fashion-MNIST (configs/byol-fashion-mnist-cpu.conf)
#   make test         install missing packages, build, run the whole GoogleTest suite
#   make CUDA=0 test  the same, CPU-only engine
#   make gpu-check    on a GPU machine: probe, build, suite, twins, compute-sanitizer; one table
#   make gpu-session OUT=DIR  the prepared GPU run: gpu-check, benches beside PyTorch's, programs
#   make cuda-config  where the CUDA build finds cuDNN, cuBLAS, cuRAND (CUDA_HOME, system, pip wheels)
#   make bench        CPU speed against PyTorch, back to back: train step, BYOL and FixMatch recipes (bench/cpu_vs_torch.py)
#   make plot RUN=DIR figures of runs or sweeps (apps/tools/plot.py; sweeps: apps/tools/sweep.py)
#   make fuzz         every parser of user files under libFuzzer (docs/hardening.md)
#   make sanitize-test / tsan-test   the suite under ASan + UBSan / the loader under TSan
#   make ci-sanitize-test  the part of the suite CI runs under ASan + UBSan (docs/hardening.md)
#   make profile      the same programs built for Nsight Systems / Compute and compute-sanitizer:
#                     -O3 with -lineinfo and full host symbols (docs/PROFILING.md)
#   make deps         install what is missing (Debian/Ubuntu packages)
#
# Builds use every core unless -jN is given.
# Switches: CUDA=0|1 (default: 1 when nvcc is found), CUDA_HOME, CUDA_ARCHS (nvcc -gencode
# list), ONEDNN=0|1 (the CPU's fast tier, kernels/onednn; default: 1 when oneDNN's header is
# found), DEBUG=1 (-O0 -g), SANITIZE=1 (ASan + UBSan) or SANITIZE=thread (TSan), both CUDA=0,
# FUZZ=1 (the clang libFuzzer build of make fuzz), MPI=0|1 (multi-process data-parallel
# training, engine/distributed.h; default: 1 when OpenMPI's mpicc is found; with CUDA=1 it
# also links NCCL), DEPS_PREFIX (a folder where Debian packages
# were unpacked with dpkg -x, for machines without a package registry).

SHELL := /bin/bash
.DEFAULT_GOAL := all
# Every core unless the caller chose (make -j1 stays serial).
ifeq ($(filter -j%,$(MAKEFLAGS)),)
  MAKEFLAGS += -j$(shell nproc)
endif

# CUDA_HOME: /usr/local/cuda, else the toolkit of the nvcc on PATH.
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,$(patsubst %/bin/nvcc,%,$(realpath $(shell command -v nvcc 2>/dev/null))))
NVCC := $(CUDA_HOME)/bin/nvcc
ifeq ($(origin CUDA), undefined)
  CUDA := $(if $(wildcard $(NVCC)),1,0)
endif
SANITIZE ?= 0
DEBUG ?= 0
PROFILE ?= 0
ifneq ($(SANITIZE),0)
  CUDA := 0
endif
CUDA_ARCHS ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
              -gencode arch=compute_90,code=compute_90
DEPS_PREFIX ?=
ARCH_FLAGS ?= -march=native
# oneDNN (Debian libdnnl-dev): the CPU's fast tier. Without it the build runs the reference
# kernels only, and the checklist line and every program's "cpu kernels:" line say so.
ONEDNN_HEADER := $(DEPS_PREFIX)/usr/include/oneapi/dnnl/dnnl.hpp
ifeq ($(origin ONEDNN), undefined)
  ONEDNN := $(if $(wildcard $(ONEDNN_HEADER)),1,0)
endif

# MPI (Debian's OpenMPI, libopenmpi-dev): data-parallel training over processes started by
# mpirun / srun (docs/DISTRIBUTED.md). The flags come from OpenMPI's wrapper (mpicc --showme)
# or pkg-config; without MPI the programs run as one process and say so on their first line.
# From a bundle unpacked with dpkg -x (DEPS_PREFIX) the wrapper cannot run: name its folders.
MPI_BUNDLE := $(DEPS_PREFIX)/usr/lib/x86_64-linux-gnu/openmpi
# MPI_CFLAGS / MPI_LIBS given on the command line win.
ifeq ($(origin MPI_LIBS), undefined)
  ifneq ($(and $(DEPS_PREFIX),$(wildcard $(MPI_BUNDLE)/include/mpi.h)),)
    MPI_CFLAGS := -I$(MPI_BUNDLE)/include -I$(MPI_BUNDLE)/include/openmpi
    MPI_LIBS := -L$(MPI_BUNDLE)/lib -Wl,-rpath,$(MPI_BUNDLE)/lib -lmpi
  else
    MPI_CFLAGS := $(shell mpicc --showme:compile 2>/dev/null || pkg-config --cflags ompi 2>/dev/null)
    MPI_LIBS := $(shell mpicc --showme:link 2>/dev/null || pkg-config --libs ompi 2>/dev/null)
  endif
endif
ifeq ($(origin MPI), undefined)
  MPI := $(if $(strip $(MPI_LIBS)),1,0)
endif
# The sanitizer and fuzz builds stay single-process: OpenMPI's own allocations would be
# reported as leaks, and no parser needs it.
ifneq ($(SANITIZE),0)
  MPI := 0
endif

# FUZZ=1: the libFuzzer build of `make fuzz` (clang, ASan + UBSan, CPU reference kernels only).
FUZZ ?= 0
CXX_STD := c++17
ifeq ($(FUZZ),1)
  CXX := clang++
  CUDA := 0
  ONEDNN := 0
  MPI := 0
  # clang 14 accepts lambdas that capture structured bindings (as g++ does in C++17) from C++20 on.
  CXX_STD := c++20
endif

# A build without oneDNN (or MPI) keeps its objects apart (their TESSERA_ONEDNN / TESSERA_MPI differ).
CONFIG := $(if $(filter 1,$(CUDA)),cuda,cpu)$(if $(filter 0,$(ONEDNN)),-noonednn,)$(if $(filter 0,$(MPI)),-nompi,)$(if $(filter 1,$(DEBUG)),-debug,)$(if $(filter 1,$(SANITIZE)),-asan,)$(if $(filter thread,$(SANITIZE)),-tsan,)$(if $(filter 1,$(PROFILE)),-profile,)$(if $(filter 1,$(FUZZ)),-fuzz,)
BUILD := build
OBJ := $(BUILD)/obj/$(CONFIG)

# ---- dependencies ----------------------------------------------------------------------
BLAS_INC := $(DEPS_PREFIX)/usr/include/x86_64-linux-gnu/openblas-openmp
BLAS_LIB := $(DEPS_PREFIX)/usr/lib/x86_64-linux-gnu/openblas-openmp
SYS_LIB := $(DEPS_PREFIX)/usr/lib/x86_64-linux-gnu
GTEST_DIR ?= $(if $(DEPS_PREFIX),$(BUILD)/gtest,)

INCLUDES := -I. -I$(BLAS_INC) $(if $(DEPS_PREFIX),-I$(DEPS_PREFIX)/usr/include,) \
            $(if $(GTEST_DIR),-I$(DEPS_PREFIX)/usr/src/googletest/googletest/include,)
OPT := $(if $(filter 1,$(DEBUG)),-O0 -g -DTESSERA_DEBUG=1,-O3 $(ARCH_FLAGS) -g1)
# Sanitized builds compile at -O1: about half the compile time of -O3, and ASan's reports keep
# their line numbers; the suite still runs at a few times the speed of -O0. GCC 12 at -O1 with
# the sanitizers reports std::regex's and std::function's members as maybe-uninitialized (a
# known false positive of that combination), so that one warning is off there.
# SAN_OPT: CI's sanitized subset compiles at -O0 (make ci-sanitize-test, below).
SAN_OPT ?= -O1
ifneq ($(SANITIZE),0)
  OPT := $(SAN_OPT) $(ARCH_FLAGS) -g1 -Wno-maybe-uninitialized
endif
# Profile builds keep full host symbols and frame pointers (nsys / perf call stacks).
PROFILE_HOST := $(if $(filter 1,$(PROFILE)),-g -fno-omit-frame-pointer,)
OPT += $(PROFILE_HOST)
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer
SAN := $(if $(filter 1,$(SANITIZE)),$(ASAN_FLAGS),)$(if $(filter thread,$(SANITIZE)),-fsanitize=thread,)
ifeq ($(FUZZ),1)
  # Coverage for libFuzzer everywhere; any sanitizer report ends the run (no recovery). -O1
  # (after -O3, so it wins) compiles faster; the sanitizers block some `omp simd` loops, which
  # clang would otherwise report as errors.
  SAN := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
         -O1 -Wno-pass-failed
endif
# WERROR=0 keeps warnings as warnings: gpu-check builds so on a machine whose compiler is newer
# than this project's (a new warning must not cost the GPU visit; the build row lists them).
WERROR ?= 1
CXXFLAGS := -std=$(CXX_STD) $(OPT) $(SAN) -fopenmp -Wall -Wextra $(if $(filter 1,$(WERROR)),-Werror,) -MMD -MP $(INCLUDES) \
            -DTESSERA_CUDA=$(CUDA) -DTESSERA_ONEDNN=$(ONEDNN) -DTESSERA_MPI=$(MPI)
SYS_RPATH := -Wl,-rpath,$(SYS_LIB)
LDLIBS := -L$(BLAS_LIB) -Wl,-rpath,$(BLAS_LIB) -lopenblas \
          -L$(SYS_LIB) $(if $(DEPS_PREFIX),$(SYS_RPATH),) -lstb -lz -lpthread
ifeq ($(MPI),1)
  # -isystem: MPI's headers are not held to this project's warnings.
  CXXFLAGS += $(patsubst -I%,-isystem %,$(MPI_CFLAGS))
  LDLIBS += $(MPI_LIBS)
endif
ifeq ($(ONEDNN),1)
  # libdnnl needs libOpenCL.so.1 (its GPU runtime, unused here). From an unpacked bundle that
  # library is found only through an old-style RPATH, which also serves a library's own
  # dependencies (a RUNPATH serves the program's direct ones only).
  OLD_STYLE_RPATH := -Wl,--disable-new-dtags
  LDLIBS += -ldnnl $(if $(DEPS_PREFIX),$(OLD_STYLE_RPATH),)
endif
# ---- CUDA libraries: wherever they are -----------------------------------------------------
# cuDNN, cuBLAS and cuRAND (and NCCL, linked when MPI=1: the GPUs' collectives) are looked for, in
# this order, in CUDA_HOME, in the system's folders, and in the NVIDIA pip wheels of a Python
# environment (/opt/torch/.venv, or the python3 on PATH): CUDA 13 wheels put every library in
# nvidia/cu13/{include,lib}, cuDNN and NCCL in nvidia/cudnn and nvidia/nccl, CUDA 12 wheels in
# nvidia/<name>. A place counts when it holds both the header and the library. Wheels ship only
# the versioned library (libcudnn.so.9): then the link names that file (-l:libcudnn.so.9).
# `make cuda-config` prints what was found where. CUDNN_INC / CUDNN_LIB (and CUBLAS_*, ...)
# given on the command line win.
ifeq ($(CUDA),1)
  MULTIARCH_LIB := /usr/lib/x86_64-linux-gnu
  comma := ,
  CUDA_PLACES := $(CUDA_HOME)/include|$(CUDA_HOME)/lib64 $(CUDA_HOME)/include|$(CUDA_HOME)/lib /usr/include|$(MULTIARCH_LIB) \
                 /usr/include/x86_64-linux-gnu|$(MULTIARCH_LIB)
  # The wheels' nvidia/ folders, looked up (python3 started) only when a search reaches them,
  # and then once (the first expansion replaces the variable by its value).
  NVIDIA_WHEEL_DIRS = $(eval NVIDIA_WHEEL_DIRS := $(sort $(wildcard /opt/torch/.venv/lib/python3*/site-packages/nvidia) \
                        $(shell python3 -c 'import nvidia; print(*nvidia.__path__)' 2>/dev/null)))$(NVIDIA_WHEEL_DIRS)
  wheel_places = $(foreach w,$(NVIDIA_WHEEL_DIRS),$(foreach s,$(1),$(w)/$(s)/include|$(w)/$(s)/lib))
  place_inc = $(word 1,$(subst |, ,$(1)))
  place_lib = $(word 2,$(subst |, ,$(1)))
  # The first place among $(3) whose include folder has header $(1) and whose lib folder has lib$(2).so*.
  first_place = $(firstword $(foreach p,$(3),$(if $(and $(wildcard $(call place_inc,$(p))/$(1)),$(wildcard $(call place_lib,$(p))/lib$(2).so*)),$(p))))
  # $(call find_cuda_lib,HEADER,NAME,WHEEL_SUBDIRS): CUDA_PLACES first, the wheels only if none has it.
  find_cuda_lib = $(or $(call first_place,$(1),$(2),$(CUDA_PLACES)),$(call first_place,$(1),$(2),$(call wheel_places,$(3))))
  # -lNAME when the unversioned library exists, else -l:libNAME.so.MAJOR.
  link_flag = $(if $(wildcard $(1)/lib$(2).so),-l$(2),-l:$(notdir $(firstword $(sort $(wildcard $(1)/lib$(2).so.[0-9] $(1)/lib$(2).so.[0-9][0-9])))))

  CUDART_PLACE := $(call find_cuda_lib,cuda_runtime.h,cudart,cu13 cuda_runtime)
  CUDNN_PLACE := $(call find_cuda_lib,cudnn.h,cudnn,cudnn)
  CUBLAS_PLACE := $(call find_cuda_lib,cublas_v2.h,cublas,cu13 cublas)
  CURAND_PLACE := $(call find_cuda_lib,curand.h,curand,cu13 curand)
  NCCL_PLACE := $(call find_cuda_lib,nccl.h,nccl,nccl)
  # Given on the command line, CUDNN_INC=... CUDNN_LIB=... (and CUBLAS_*, CURAND_*) win.
  CUDART_INC := $(call place_inc,$(CUDART_PLACE))
  CUDART_LIB := $(call place_lib,$(CUDART_PLACE))
  CUDNN_INC := $(call place_inc,$(CUDNN_PLACE))
  CUDNN_LIB := $(call place_lib,$(CUDNN_PLACE))
  CUBLAS_INC := $(call place_inc,$(CUBLAS_PLACE))
  CUBLAS_LIB := $(call place_lib,$(CUBLAS_PLACE))
  CURAND_INC := $(call place_inc,$(CURAND_PLACE))
  CURAND_LIB := $(call place_lib,$(CURAND_PLACE))
  CUDA_SEARCHED = $(subst |, + ,$(subst $() ,$(comma) ,$(strip $(CUDA_PLACES)))), and the pip wheels' nvidia/<name>/{include,lib} \
                  under $(or $(NVIDIA_WHEEL_DIRS),/opt/torch/.venv and python3's nvidia package (neither found))
  rparen := )
  CUDA_NOT_FOUND = $(subst $(rparen) ,$(rparen)$(comma) ,$(strip $(if $(CUDNN_INC),,cuDNN (cudnn.h with libcudnn.so*)) \
                   $(if $(CUDART_LIB),,the CUDA runtime (cuda_runtime.h with libcudart.so*)) \
                   $(if $(CUBLAS_INC),,cuBLAS (cublas_v2.h with libcublas.so*)) \
                   $(if $(CURAND_INC),,cuRAND (curand.h with libcurand.so*))))
  CUDA_MISSING = $(CUDA_NOT_FOUND) not found: searched $(CUDA_SEARCHED); name the folders with \
                 CUDNN_INC=DIR CUDNN_LIB=DIR (CUBLAS_*, CURAND_*, CUDART_*), or build with CUDA=0
  # Goals that compile stop here, in one line; the others (cuda-config prints the picture) go on.
  ifneq ($(filter-out cuda-config checklist clean deps gpu-bundle gpu-check gpu-session,$(or $(MAKECMDGOALS),all)),)
    ifneq ($(CUDA_NOT_FOUND),)
      $(error $(CUDA_MISSING))
    endif
  endif
  CUDA_LIB_DIRS := $(filter-out $(MULTIARCH_LIB),$(sort $(CUDNN_LIB) $(CUBLAS_LIB) $(CURAND_LIB) $(CUDART_LIB)))
  CUDA_INC_DIRS := $(filter-out $(CUDA_HOME)/include /usr/include,$(sort $(CUDART_INC) $(CUDNN_INC) $(CUBLAS_INC) $(CURAND_INC)))
  # NCCL: the collectives on device buffers of a multi-process run (MPI bootstraps it).
  NCCL_INC := $(call place_inc,$(NCCL_PLACE))
  NCCL_LIB := $(call place_lib,$(NCCL_PLACE))
  # Without NCCL an MPI build still runs several ranks on the CPU; a multi-rank CUDA run is
  # refused with the reason (engine/distributed.cpp), and the checklist says nccl=0.
  ifneq ($(and $(filter 1,$(MPI)),$(NCCL_PLACE)),)
    NCCL := 1
    CUDA_LIB_DIRS += $(filter-out $(MULTIARCH_LIB) $(CUDA_LIB_DIRS),$(NCCL_LIB))
    CUDA_INC_DIRS += $(filter-out $(CUDA_HOME)/include /usr/include $(CUDA_INC_DIRS),$(NCCL_INC))
  endif
endif
NCCL ?= 0
CXXFLAGS += -DTESSERA_NCCL=$(NCCL)

ifeq ($(CUDA),1)
  NVCCFLAGS := -std=c++17 $(if $(filter 1,$(DEBUG)),-O0 -g -G,-O3 -lineinfo) $(CUDA_ARCHS) \
               $(if $(filter 1,$(PROFILE)),-g -Xcompiler -fno-omit-frame-pointer,) \
               --expt-relaxed-constexpr -Xcompiler -fopenmp,-Wall,-Wextra$(if $(filter 1,$(WERROR)),$(comma)-Werror,) -MMD -MP \
               $(INCLUDES) -DTESSERA_CUDA=1 -DTESSERA_MPI=$(MPI) -DTESSERA_NCCL=$(NCCL) $(if $(filter 1,$(MPI)),$(patsubst -I%,-isystem %,$(MPI_CFLAGS)),)
  # -ldl: NVTX (engine/profile.cpp) loads a profiler's injection library; in libc since glibc 2.34.
  # An old-style RPATH (as for oneDNN above) also serves the libraries' own lookups: cuDNN 9
  # loads its sub-libraries (libcudnn_cnn.so.9, ...) from where libcudnn.so.9 is.
  LDLIBS += $(foreach d,$(CUDA_LIB_DIRS),-L$(d) -Wl,-rpath,$(d)) -Wl,--disable-new-dtags \
            $(call link_flag,$(CUDNN_LIB),cudnn) $(call link_flag,$(CUBLAS_LIB),cublas) \
            $(call link_flag,$(CURAND_LIB),curand) $(call link_flag,$(CUDART_LIB),cudart) -ldl \
            $(if $(filter 1,$(NCCL)),$(call link_flag,$(NCCL_LIB),nccl),)
  # The folders found first: a toolkit may hold a cudnn.h without its library, and the header
  # must match the library that is linked.
  CXXFLAGS += $(addprefix -I,$(CUDA_INC_DIRS)) -I$(CUDA_HOME)/include
  NVCCFLAGS += $(addprefix -I,$(CUDA_INC_DIRS))
endif
LDFLAGS := -fopenmp $(SAN)

# ---- sources ---------------------------------------------------------------------------
# Each program is one main file; everything else under apps/ (the programs' bodies, the run
# machinery in apps/run, the benchmarks) goes into the library so the tests can run whole
# trainings in-process.
#   program        main
PROGRAM_MAINS := byol:apps/byol/main.cpp fixmatch:apps/fixmatch/main.cpp moco:apps/moco/main.cpp \
                 init:apps/tools/init.cpp embed:apps/tools/embed.cpp \
                 augment-grid:apps/tools/augment-grid.cpp bench:apps/tools/bench/main.cpp
APP_MAINS := $(foreach p,$(PROGRAM_MAINS),$(word 2,$(subst :, ,$(p))))
APPS := $(foreach p,$(PROGRAM_MAINS),$(BUILD)/$(word 1,$(subst :, ,$(p))))
LIB_DIRS := kernels/cpu $(if $(filter 1,$(ONEDNN)),kernels/onednn,) engine models data apps/run apps/byol \
            apps/fixmatch apps/moco apps/tools/bench
LIB_CPP := $(filter-out $(APP_MAINS),$(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.cpp)))
LIB_CU := $(if $(filter 1,$(CUDA)),$(wildcard kernels/cuda/*.cu),)
TEST_CPP := $(wildcard tests/*.cpp)
TEST_CU := $(if $(filter 1,$(CUDA)),$(wildcard tests/*.cu),)

# A subset build (make ci-sanitize-test, tsan-test): only the library folders SUBSET_DIRS,
# the test files SUBSET_TESTS (tests/NAME.cpp) and the programs SUBSET_PROGRAMS, in a build
# folder of its own. The link says when a subset misses a folder it needs.
ifneq ($(SUBSET_TESTS),)
  LIB_CPP := $(filter $(addsuffix /%,$(SUBSET_DIRS)),$(LIB_CPP))
  TEST_CPP := $(patsubst %,tests/%.cpp,$(SUBSET_TESTS))
  PROGRAM_MAINS := $(filter $(addsuffix :%,$(SUBSET_PROGRAMS)),$(PROGRAM_MAINS))
  APP_MAINS := $(foreach p,$(PROGRAM_MAINS),$(word 2,$(subst :, ,$(p))))
  APPS := $(foreach p,$(PROGRAM_MAINS),$(BUILD)/$(word 1,$(subst :, ,$(p))))
endif

LIB_OBJS := $(patsubst %,$(OBJ)/%.o,$(LIB_CPP) $(LIB_CU))
TEST_OBJS := $(patsubst %,$(OBJ)/%.o,$(TEST_CPP) $(TEST_CU))
LIB := $(OBJ)/libtessera.a
TEST_BIN := $(BUILD)/tessera_tests
STAMP := $(BUILD)/.config-$(CONFIG)
FAULT_LIB := $(BUILD)/libtessera_fault.so

ifeq ($(GTEST_DIR),)
  GTEST_LIBS := -lgtest
else
  GTEST_LIBS := $(GTEST_DIR)/libgtest.a
endif

# ---- rules -----------------------------------------------------------------------------
.PHONY: all test deps checklist clean demo bench gpu-check gpu-bundle gpu-session cuda-config profile plot \
        fuzz fuzz-build sanitize-test ci-sanitize-test tsan-test
# Keep the programs' objects (pattern-rule intermediates). Naming them, rather than a bare
# .SECONDARY:, keeps the configuration stamp an ordinary file, so switching configuration
# (CUDA=0, DEBUG=1, make profile) rebuilds instead of finding the old binaries up to date.
.SECONDARY: $(patsubst %,$(OBJ)/%.o,$(APP_MAINS))

all: checklist $(APPS) $(TEST_BIN) $(FAULT_LIB)

# Binaries are shared by all configurations: relink when the configuration changes.
$(STAMP):
	@mkdir -p $(BUILD) && rm -f $(BUILD)/.config-* && touch $@

$(OBJ)/%.cpp.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(OBJ)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

# The augmentation files run the same float math on both backends (kernels/common/augment_ops.h);
# without fused multiply-adds on either side their results are bit-identical.
$(OBJ)/kernels/cpu/augment.cpp.o: CXXFLAGS += -ffp-contract=off
$(OBJ)/kernels/cuda/augment.cu.o: NVCCFLAGS += --fmad=false

$(LIB): $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

# build/NAME from its main (PROGRAM_MAINS).
define program_rule
$(BUILD)/$(word 1,$(subst :, ,$(1))): $(OBJ)/$(word 2,$(subst :, ,$(1))).o $(LIB) $(STAMP)
	$$(CXX) $$(LDFLAGS) $$< $$(LIB) $$(LDLIBS) -o $$@
endef
$(foreach p,$(PROGRAM_MAINS),$(eval $(call program_rule,$(p))))

$(TEST_BIN): $(TEST_OBJS) $(LIB) $(STAMP) $(if $(GTEST_DIR),$(GTEST_DIR)/libgtest.a,)
	$(CXX) $(LDFLAGS) $(TEST_OBJS) $(LIB) $(GTEST_LIBS) $(LDLIBS) -o $@

# The fault-injection shim the tests preload into the programs (tests/fault_inject/): a shared
# library of its own, never linked into the engine or the test binary.
$(FAULT_LIB): tests/fault_inject/fault_inject.cpp
	@mkdir -p $(BUILD)
	$(CXX) -std=c++17 -O2 -Wall -Wextra -Werror -shared -fPIC $< -o $@ -ldl

# GoogleTest from the googletest package's sources (machines without libgtest-dev).
$(BUILD)/gtest/libgtest.a:
	@mkdir -p $(BUILD)/gtest
	$(CXX) -std=c++17 -O2 -I$(DEPS_PREFIX)/usr/src/googletest/googletest/include \
	  -I$(DEPS_PREFIX)/usr/src/googletest/googletest -c \
	  $(DEPS_PREFIX)/usr/src/googletest/googletest/src/gtest-all.cc -o $(BUILD)/gtest/gtest-all.o
	ar rcs $@ $(BUILD)/gtest/gtest-all.o

# The packages first, then the build (a sub-make, so a parallel build never races the install).
test: deps
	@$(MAKE) --no-print-directory all
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(TEST_BIN) --gtest_brief=1

# ---- dependencies: install what is missing ---------------------------------------------
# python3-torch / python3-torchvision: PyTorch's CPU build, the oracle of the torchvision tests
# (tests/torchvision_check.py, skipped without it) and the other side of `make bench`.
DEB_PACKAGES := g++ make googletest libgtest-dev libopenblas-openmp-dev libdnnl-dev libstb-dev zlib1g-dev \
                nlohmann-json3-dev dataset-fashion-mnist python3-matplotlib libopenmpi-dev openmpi-bin \
                python3-torch python3-torchvision
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
deps:
	@if [ -n "$(DEPS_PREFIX)" ]; then echo "deps: using packages unpacked under $(DEPS_PREFIX)"; exit 0; fi; \
	missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "deps: all present"; fi

# One line saying what this build found.
have = $(if $(wildcard $(1)),yes,no)
checklist:
	@echo "tessera build [$(CONFIG)]: nvcc=$(call have,$(NVCC))\
	 cudnn=$(if $(filter 1,$(CUDA)),$(if $(CUDNN_INC),$(CUDNN_LIB),no),not-needed)\
	 cublas=$(if $(filter 1,$(CUDA)),$(or $(CUBLAS_LIB),no),not-needed)\
	 curand=$(if $(filter 1,$(CUDA)),$(or $(CURAND_LIB),no),not-needed)\
	 openblas=$(call have,$(BLAS_INC)/cblas.h) openmp=yes stb=$(call have,$(DEPS_PREFIX)/usr/include/stb/stb_image.h)\
	 gtest=$(call have,$(DEPS_PREFIX)/usr/include/gtest/gtest.h $(DEPS_PREFIX)/usr/src/googletest)\
	 zlib=$(call have,$(DEPS_PREFIX)/usr/include/zlib.h) onednn=$(call have,$(ONEDNN_HEADER))\
	 mpi=$(MPI)$(if $(filter 0,$(MPI)), (one process only),)$(if $(filter 1,$(CUDA)), nccl=$(NCCL)$(if $(filter 1,$(MPI)),$(if $(filter 0,$(NCCL)), (not found: multi-rank runs on the CPU only),),),)\
	 cuda-backend=$(CUDA) cpu-fast-tier=$(ONEDNN)$(if $(filter 0,$(ONEDNN)), (reference CPU kernels only),)"

# ---- the demo ----------------------------------------------------------------------------
# BYOL + STS on Fashion-MNIST with the CPU demo recipe, on the GPU when there is one. byol's
# last line is the teacher's linear-probe accuracy beside the random-init baseline's.
# DEMO_OUT=DIR names the run directory (default runs/demo-<UTC time>).
demo: deps
	@$(MAKE) --no-print-directory checklist $(BUILD)/byol
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(BUILD)/byol --config configs/byol-fashion-mnist-cpu.conf \
	  --device auto --out $${DEMO_OUT:-runs/demo-$$(date -u +%Y%m%d-%H%M%S)}

# ---- speed against PyTorch -------------------------------------------------------------------
# make bench [BENCH_ARGS='--rounds 5 --only byol,fixmatch']: the CPU speed targets (ResNet-18
# train step, the BYOL and FixMatch recipes) run back to back with the same step in PyTorch,
# interleaved, medians and ratios as a Markdown table (bench/cpu_vs_torch.py; bench/RESULTS.md).
bench: $(BUILD)/bench $(BUILD)/byol $(BUILD)/fixmatch
	/usr/bin/python3 bench/cpu_vs_torch.py --build $(BUILD) $(BENCH_ARGS)

# ---- figures ----------------------------------------------------------------------------
# make plot RUN="runs/a runs/sweep/sts" [PLOT_OUT=DIR]: loss, lr, momentum, updated fraction,
# accuracy, fragment ages and the teacher's mosaic as PNGs (apps/tools/plot.py, matplotlib);
# a sweep cell's seeds make one curve with a band. Default output: RUN/plots for one RUN.
plot:
	@if [ -z "$(RUN)" ]; then echo 'make plot: expected RUN="run directories or sweep folders", found none'; exit 2; fi
	/usr/bin/python3 apps/tools/plot.py $(RUN) $(if $(PLOT_OUT),--out $(PLOT_OUT),)

# ---- GPU machines ----------------------------------------------------------------------
# cuda-config: where the CUDA build finds its libraries (see "CUDA libraries" above).
cuda-config:
ifeq ($(CUDA),1)
	@echo "cuda-config: CUDA_HOME=$(CUDA_HOME) nvcc=$(if $(wildcard $(NVCC)),$(NVCC) ($(shell $(NVCC) --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')),not found)"
	@echo "cuda-config: cudart: $(if $(CUDART_LIB),library $(CUDART_LIB) ($(call link_flag,$(CUDART_LIB),cudart)),NOT FOUND)"
	@echo "cuda-config: cudnn: $(if $(CUDNN_INC),headers $(CUDNN_INC) library $(CUDNN_LIB) ($(call link_flag,$(CUDNN_LIB),cudnn)),NOT FOUND)"
	@echo "cuda-config: cublas: $(if $(CUBLAS_INC),headers $(CUBLAS_INC) library $(CUBLAS_LIB) ($(call link_flag,$(CUBLAS_LIB),cublas)),NOT FOUND)"
	@echo "cuda-config: curand: $(if $(CURAND_INC),headers $(CURAND_INC) library $(CURAND_LIB) ($(call link_flag,$(CURAND_LIB),curand)),NOT FOUND)"
	@echo "cuda-config: nccl: $(if $(NCCL_PLACE),headers $(call place_inc,$(NCCL_PLACE)) library $(call place_lib,$(NCCL_PLACE)),not found) ($(if $(filter 1,$(NCCL)),linked: the collectives of multi-process runs,not linked$(if $(filter 0,$(MPI)),: MPI=0,)))"
	@echo "cuda-config: rpath $(CUDA_LIB_DIRS)"
	@$(if $(CUDA_NOT_FOUND),echo "cuda-config: $(CUDA_MISSING)" >&2; false,true)
else
	@echo "cuda-config: CUDA=0: the build needs no CUDA library (nvcc $(if $(wildcard $(NVCC)),at $(NVCC),not found))"
endif

# gpu-bundle: on a machine with Debian's registry, fetch the packages a GPU machine without
# one needs (it has the CUDA toolkit, g++ and Python); the device call carries .gpu-bundle/
# and gpu-check unpacks it with dpkg -x. The working tree that travels is limited to 64 MiB,
# so the bundle must stay under 50 MiB: Fashion-MNIST (31 MB) is left out and the GPU
# session trains on generated images. make is in it in case the image has none
# (tests/gpu_check.py unpacks the bundle into build/gpu-bundle-root and uses its make, when
# `python3 bench/gpu_session.py --out DIR` is run without make); libquadmath0 is what
# libgfortran5 (OpenBLAS) needs. OpenMPI and what it links (about 7 MiB) let the GPU machine
# build with MPI=1 (and NCCL) and run the multi-process tests with the bundle's mpirun.
GPU_BUNDLE_PACKAGES := libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libquadmath0 libstb0 libstb-dev \
                       zlib1g-dev nlohmann-json3-dev googletest libgtest-dev libdnnl2 libdnnl-dev \
                       ocl-icd-libopencl1 make \
                       libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common libhwloc15 libhwloc-plugins libpmix2 \
                       libevent-core-2.1-7 libevent-pthreads-2.1-7 libevent-2.1-7 libfabric1 libucx0 libpsm2-2 \
                       libpsm-infinipath1 libibverbs1 librdmacm1 libnl-3-200 libnl-route-3-200 libnuma1 libltdl7
GPU_BUNDLE_MAX_MIB := 50
gpu-bundle:
	@mkdir -p .gpu-bundle && cd .gpu-bundle && rm -rf *.deb root && apt-get download $(GPU_BUNDLE_PACKAGES) 2>&1 | grep -v "^Get:\|^Fetched\|unsandboxed" ; \
	  missing=$$(for p in $(GPU_BUNDLE_PACKAGES); do ls $${p}_*.deb >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then echo "gpu-bundle: not downloaded: $$missing (apt-get update first?)" >&2; exit 1; fi; \
	  kib=$$(du -sk --apparent-size . | cut -f1); \
	  echo "gpu-bundle: $$(ls *.deb | wc -l) packages, $$((kib / 1024)) MiB in .gpu-bundle/ (limit $(GPU_BUNDLE_MAX_MIB) MiB)"; \
	  if [ $$kib -gt $$(($(GPU_BUNDLE_MAX_MIB) * 1024)) ]; then \
	    echo "gpu-bundle: $$((kib / 1024)) MiB is over the $(GPU_BUNDLE_MAX_MIB) MiB limit (the working tree that travels is 64 MiB in all): trim GPU_BUNDLE_PACKAGES" >&2; exit 1; fi; \
	  commit=$$(git rev-parse --short HEAD 2>/dev/null || echo '?'); \
	  if [ -n "$$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$$commit+changes"; fi; \
	  echo "$$commit" > COMMIT; echo "gpu-bundle: commit $$commit (.gpu-bundle/COMMIT: the gpu-log row's where .git does not travel or its HEAD is not the tree)"

# gpu-check: tests/gpu_check.py (phases probe, build, suite, twins, memcheck; exit 0 PASS,
# 1 FAIL, 3 no GPU here, 4 incomplete). GPU_CHECK_ARGS='--rehearse' runs it without a GPU.
gpu-check:
	@PYTHONUNBUFFERED=1 python3 tests/gpu_check.py $(GPU_CHECK_ARGS)

# gpu-session: the one prepared GPU run (bench/gpu_session.py, docs/gpu-log.md): build,
# gpu-check, the benches beside PyTorch's, 300-step byol and fixmatch, one table. OUT=DIR
# receives the results; GPU_SESSION_ARGS='--phases check,bench' for part of it. On a machine
# without make: python3 bench/gpu_session.py --out DIR (it builds with the bundle's make).
gpu-session:
	@if [ -z "$(OUT)" ]; then echo "gpu-session: expected OUT=DIR (the results folder), found none" >&2; exit 2; fi
	@PYTHONUNBUFFERED=1 python3 bench/gpu_session.py --out "$(OUT)" $(GPU_SESSION_ARGS)

profile:
	@$(MAKE) --no-print-directory PROFILE=1 all

# ---- sanitizers --------------------------------------------------------------------------
# make sanitize-test: the whole suite, and the programs it runs, built with ASan + UBSan in
# build-asan/; any report fails it. The fault shim is preloaded into sanitized programs, so
# ASan must not insist on coming first in the library order.
SANITIZE_ENV := ASAN_OPTIONS=detect_leaks=1:verify_asan_link_order=0:abort_on_error=1 \
                UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
                LSAN_OPTIONS=suppressions=$(CURDIR)/tests/sanitizer/lsan.supp
sanitize-test: deps
	@$(MAKE) --no-print-directory SANITIZE=1 BUILD=build-asan all
	$(SANITIZE_ENV) OMP_NUM_THREADS=2 build-asan/tessera_tests --gtest_brief=1

# make ci-sanitize-test: what CI runs under ASan + UBSan within its 15 minutes (.ci/run;
# docs/hardening.md lists what it covers and what it leaves to sanitize-test): the tests of
# user-facing parsing, checkpoints, the run directory and lock, the loader, injected faults,
# non-finite values and messages, and a sample of the ops, in a test binary of those files
# alone, with the programs they start. Compiled at -O0 (half the CPU time of -O1) in
# build-asan-ci/; the benchmarks are not built.
CI_ASAN_TESTS := main op_case app_flags_test check_messages_test checkpoint_test data_readers_test \
                 data_loader_test run_machinery_test run_lock_test fault_injection_test nonfinite_test \
                 nonfinite_programs_test ops_basic_test ops_loss_test ops_norm_test autograd_test optimizer_test \
                 memory_test
CI_ASAN_DIRS := kernels/cpu kernels/onednn engine models data apps/run apps/byol apps/fixmatch apps/moco
CI_ASAN_PROGRAMS := byol fixmatch moco init embed augment-grid
ci-sanitize-test: deps
	@$(MAKE) --no-print-directory SANITIZE=1 SAN_OPT=-O0 BUILD=build-asan-ci SUBSET_TESTS='$(CI_ASAN_TESTS)' \
	  SUBSET_DIRS='$(CI_ASAN_DIRS)' SUBSET_PROGRAMS='$(CI_ASAN_PROGRAMS)' all
	$(SANITIZE_ENV) OMP_NUM_THREADS=2 build-asan-ci/tessera_tests --gtest_brief=1

# make tsan-test: the loader's producer thread and prefetch queue under ThreadSanitizer, in a
# test binary of the loader's tests alone (build-tsan/, -O0). OpenMP regions are left out:
# libgomp is not instrumented, so TSan cannot see its barriers and would report every parallel
# loop (docs/hardening.md).
TSAN_FILTER := Loader.*:Sampler.*:LabeledSubset.*
tsan-test: deps
	@$(MAKE) --no-print-directory SANITIZE=thread SAN_OPT=-O0 BUILD=build-tsan SUBSET_TESTS='main op_case data_loader_test' \
	  SUBSET_DIRS='kernels/cpu kernels/onednn engine data' build-tsan/tessera_tests
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 OMP_NUM_THREADS=1 build-tsan/tessera_tests \
	  --gtest_brief=1 --gtest_filter='$(TSAN_FILTER)'

# ---- fuzzing ---------------------------------------------------------------------------
# make fuzz FUZZ_SECONDS=60: every parser of user files (tests/fuzz/*_fuzz.cpp) under libFuzzer
# for that long each; fails on a crash, a sanitizer report, a leak, an input slower than 1 s or
# an allocation over 512 MB. Corpora grow in build/fuzz/corpus across runs; findings land in
# build/fuzz/findings. Needs clang and libomp-dev (make deps does not install them).
FUZZ_SECONDS ?= 60
FUZZ_HARNESSES := $(basename $(notdir $(wildcard tests/fuzz/*_fuzz.cpp)))
fuzz:
	@$(MAKE) --no-print-directory FUZZ=1 fuzz-build
	@tests/fuzz/run.sh $(BUILD)/fuzz $(FUZZ_SECONDS) $(FUZZ_HARNESSES)

fuzz-build: $(patsubst %,$(BUILD)/fuzz/%,$(FUZZ_HARNESSES))

$(BUILD)/fuzz/%: tests/fuzz/%.cpp tests/fuzz/fuzz_input.h $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(filter-out -MMD -MP,$(CXXFLAGS)) -fsanitize=fuzzer $< $(LIB) $(LDLIBS) -o $@

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(patsubst %,$(OBJ)/%.d,$(APP_MAINS))
