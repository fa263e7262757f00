// The architectures behind make_model (models/model.cpp). Each returns an unallocated model
// whose constructor has registered every layer; callers use make_model.
#pragma once

#include <memory>

#include "models/model.h"

namespace tessera {

// "resnet18" | "resnet34" | "resnet50": 0 when the arch is not a ResNet.
int resnet_depth(const std::string& arch);
// "wrn-28-2" -> depth 28, widen factor 2; false when the arch is not of that form.
bool parse_wrn(const std::string& arch, int* depth, int* widen);

std::unique_ptr<Model> build_resnet(const ModelSpec& spec);       // models/resnet.cpp
std::unique_ptr<Model> build_wide_resnet(const ModelSpec& spec);  // models/wide_resnet.cpp
std::unique_ptr<Model> build_mlp_head(const ModelSpec& spec);     // models/mlp_head.cpp

}  // namespace tessera
