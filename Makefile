# tessera: one entry point for build, test, demo, bench and gpu-check.
#
#   make              engine library and every program into build/
#   make demo         install missing packages, build, BYOL + STS on Fashion-MNIST (configs/byol-fashion-mnist-cpu.conf)
#   make test         install missing packages, build, run the whole GoogleTest suite
#   make CUDA=0 test  the same, CPU-only engine
#   make gpu-check    on a GPU machine: suite + compute-sanitizer + one summary table
#   make profile      the same programs built for Nsight Systems / Compute and compute-sanitizer:
#                     -O3 with -lineinfo and full host symbols (docs/PROFILING.md)
#   make deps         install what is missing (Debian/Ubuntu packages)
#
# Builds use every core unless -jN is given.
# Switches: CUDA=0|1 (default: 1 when nvcc is found), CUDA_HOME, CUDA_ARCHS (nvcc -gencode
# list), ONEDNN=0|1 (the CPU's fast tier, kernels/onednn; default: 1 when oneDNN's header is
# found), DEBUG=1 (-O0 -g), SANITIZE=1 (ASan + UBSan, forces CUDA=0), DEPS_PREFIX (a folder
# where Debian packages were unpacked with dpkg -x, for machines without a package registry).

SHELL := /bin/bash
.DEFAULT_GOAL := all
# Every core unless the caller chose (make -j1 stays serial).
ifeq ($(filter -j%,$(MAKEFLAGS)),)
  MAKEFLAGS += -j$(shell nproc)
endif

CUDA_HOME ?= /usr/local/cuda
NVCC := $(CUDA_HOME)/bin/nvcc
ifeq ($(origin CUDA), undefined)
  CUDA := $(if $(wildcard $(NVCC)),1,0)
endif
SANITIZE ?= 0
DEBUG ?= 0
PROFILE ?= 0
ifeq ($(SANITIZE),1)
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

# A build without oneDNN keeps its objects apart (their TESSERA_ONEDNN differs).
CONFIG := $(if $(filter 1,$(CUDA)),cuda,cpu)$(if $(filter 0,$(ONEDNN)),-noonednn,)$(if $(filter 1,$(DEBUG)),-debug,)$(if $(filter 1,$(SANITIZE)),-asan,)$(if $(filter 1,$(PROFILE)),-profile,)
BUILD := build
OBJ := $(BUILD)/obj/$(CONFIG)

# ---- dependencies ----------------------------------------------------------------------
BLAS_INC := $(DEPS_PREFIX)/usr/include/x86_64-linux-gnu/openblas-openmp
BLAS_LIB := $(DEPS_PREFIX)/usr/lib/x86_64-linux-gnu/openblas-openmp
SYS_LIB := $(DEPS_PREFIX)/usr/lib/x86_64-linux-gnu
GTEST_DIR ?= $(if $(DEPS_PREFIX),$(BUILD)/gtest,)

INCLUDES := -I. -I$(BLAS_INC) $(if $(DEPS_PREFIX),-I$(DEPS_PREFIX)/usr/include,) \
            $(if $(GTEST_DIR),-I$(DEPS_PREFIX)/usr/src/googletest/googletest/include,)
OPT := $(if $(filter 1,$(DEBUG)),-O0 -g,-O3 $(ARCH_FLAGS) -g1)
# Profile builds keep full host symbols and frame pointers (nsys / perf call stacks).
PROFILE_HOST := $(if $(filter 1,$(PROFILE)),-g -fno-omit-frame-pointer,)
OPT += $(PROFILE_HOST)
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer
SAN := $(if $(filter 1,$(SANITIZE)),$(ASAN_FLAGS),)
CXXFLAGS := -std=c++17 $(OPT) $(SAN) -fopenmp -Wall -Wextra -Werror -MMD -MP $(INCLUDES) \
            -DTESSERA_CUDA=$(CUDA) -DTESSERA_ONEDNN=$(ONEDNN)
SYS_RPATH := -Wl,-rpath,$(SYS_LIB)
LDLIBS := -L$(BLAS_LIB) -Wl,-rpath,$(BLAS_LIB) -lopenblas \
          -L$(SYS_LIB) $(if $(DEPS_PREFIX),$(SYS_RPATH),) -lstb -lz -lpthread
ifeq ($(ONEDNN),1)
  # libdnnl needs libOpenCL.so.1 (its GPU runtime, unused here). From an unpacked bundle that
  # library is found only through an old-style RPATH, which also serves a library's own
  # dependencies (a RUNPATH serves the program's direct ones only).
  OLD_STYLE_RPATH := -Wl,--disable-new-dtags
  LDLIBS += -ldnnl $(if $(DEPS_PREFIX),$(OLD_STYLE_RPATH),)
endif
ifeq ($(CUDA),1)
  NVCCFLAGS := -std=c++17 $(if $(filter 1,$(DEBUG)),-O0 -g -G,-O3 -lineinfo) $(CUDA_ARCHS) \
               $(if $(filter 1,$(PROFILE)),-g -Xcompiler -fno-omit-frame-pointer,) \
               --expt-relaxed-constexpr -Xcompiler -fopenmp,-Wall,-Wextra,-Werror -MMD -MP \
               $(INCLUDES) -DTESSERA_CUDA=1
  # -ldl: NVTX (engine/profile.cpp) loads a profiler's injection library; in libc since glibc 2.34.
  LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudnn -lcublas -lcurand -lcudart -ldl
  CXXFLAGS += -I$(CUDA_HOME)/include
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

LIB_OBJS := $(patsubst %,$(OBJ)/%.o,$(LIB_CPP) $(LIB_CU))
TEST_OBJS := $(patsubst %,$(OBJ)/%.o,$(TEST_CPP) $(TEST_CU))
LIB := $(OBJ)/libtessera.a
TEST_BIN := $(BUILD)/tessera_tests
STAMP := $(BUILD)/.config-$(CONFIG)

ifeq ($(GTEST_DIR),)
  GTEST_LIBS := -lgtest
else
  GTEST_LIBS := $(GTEST_DIR)/libgtest.a
endif

# ---- rules -----------------------------------------------------------------------------
.PHONY: all test deps checklist clean demo bench gpu-check gpu-bundle profile
# Keep the programs' objects (pattern-rule intermediates). Naming them, rather than a bare
# .SECONDARY:, keeps the configuration stamp an ordinary file, so switching configuration
# (CUDA=0, DEBUG=1, make profile) rebuilds instead of finding the old binaries up to date.
.SECONDARY: $(patsubst %,$(OBJ)/%.o,$(APP_MAINS))

all: checklist $(APPS) $(TEST_BIN)

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
DEB_PACKAGES := g++ make googletest libgtest-dev libopenblas-openmp-dev libdnnl-dev libstb-dev zlib1g-dev \
                nlohmann-json3-dev dataset-fashion-mnist
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
	@echo "tessera build [$(CONFIG)]: nvcc=$(call have,$(NVCC)) cudnn=$(call have,$(CUDA_HOME)/include/cudnn.h)\
	 cublas=$(call have,$(CUDA_HOME)/include/cublas_v2.h) curand=$(call have,$(CUDA_HOME)/include/curand.h)\
	 openblas=$(call have,$(BLAS_INC)/cblas.h) openmp=yes stb=$(call have,$(DEPS_PREFIX)/usr/include/stb/stb_image.h)\
	 gtest=$(call have,$(DEPS_PREFIX)/usr/include/gtest/gtest.h $(DEPS_PREFIX)/usr/src/googletest)\
	 zlib=$(call have,$(DEPS_PREFIX)/usr/include/zlib.h) onednn=$(call have,$(ONEDNN_HEADER))\
	 cuda-backend=$(CUDA) cpu-fast-tier=$(ONEDNN)$(if $(filter 0,$(ONEDNN)), (reference CPU kernels only),)"

# ---- the demo ----------------------------------------------------------------------------
# BYOL + STS on Fashion-MNIST with the CPU demo recipe, on the GPU when there is one. byol's
# last line is the teacher's linear-probe accuracy beside the random-init baseline's.
# DEMO_OUT=DIR names the run directory (default runs/demo-<UTC time>).
demo: deps
	@$(MAKE) --no-print-directory checklist $(BUILD)/byol
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(BUILD)/byol --config configs/byol-fashion-mnist-cpu.conf \
	  --device auto --out $${DEMO_OUT:-runs/demo-$$(date -u +%Y%m%d-%H%M%S)}

# ---- GPU machines ----------------------------------------------------------------------
# gpu-bundle: on a machine with Debian's registry, fetch the packages a GPU machine without
# one needs (it has the CUDA toolkit); the device call carries .gpu-bundle/ and runs gpu-check.
GPU_BUNDLE_PACKAGES := libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libstb0 libstb-dev \
                       zlib1g-dev nlohmann-json3-dev googletest libgtest-dev dataset-fashion-mnist \
                       libdnnl2 libdnnl-dev ocl-icd-libopencl1
gpu-bundle:
	@mkdir -p .gpu-bundle && cd .gpu-bundle && rm -f *.deb && apt-get download $(GPU_BUNDLE_PACKAGES) 2>/dev/null
	@du -sh .gpu-bundle

gpu-check:
	@tests/gpu-check.sh

profile:
	@$(MAKE) --no-print-directory PROFILE=1 all

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(patsubst %,$(OBJ)/%.d,$(APP_MAINS))
