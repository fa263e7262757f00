#include "apps/run/teacher_log.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "engine/check.h"

namespace tessera {

namespace {

// Four decimals keep a metrics line short; ages and fractions need no more.
double round4(double v) { return std::round(v * 1e4) / 1e4; }

}  // namespace

std::vector<SlotAges> teacher_ages(const std::vector<TeacherPart>& parts, int64_t step) {
  std::vector<SlotAges> out;
  for (const TeacherPart& p : parts)
    for (SlotAges& a : p.smoother->ages_at(step)) {
      a.name = p.prefix + a.name;
      out.push_back(std::move(a));
    }
  return out;
}

nlohmann::json teacher_event_fields(const std::vector<SlotAges>& ages) {
  const TeacherAgeStats st = age_stats(ages);
  nlohmann::json names = nlohmann::json::array(), updated = nlohmann::json::array(), age = nlohmann::json::array();
  for (const TeacherAgeStats::Layer& l : st.layers) {
    names.push_back(l.name);
    updated.push_back(round4(l.updated));
    age.push_back(round4(l.mean_age));
  }
  // Arrays in table order (a JSON object would be sorted by name, losing the layer order).
  return {{"fragments", st.fragments},       {"age_mean", round4(st.mean)},  {"age_mean_params", round4(st.param_mean)},
          {"age_p50", st.p50},               {"age_p90", st.p90},            {"age_p99", st.p99},
          {"age_max", st.max},               {"age_hist", st.histogram},     {"layer", names},
          {"layer_updated", updated},        {"layer_age_mean", age}};
}

nlohmann::json mosaic_json(const std::vector<TeacherPart>& parts, const std::vector<SlotAges>& ages,
                           int64_t steps_done) {
  TS_CHECK(!parts.empty(), "mosaic: no smoother");
  const TeacherConfig& c = parts.front().smoother->state().config;
  const bool element = c.granularity == Granularity::Element;
  nlohmann::json slots = nlohmann::json::array();
  for (const SlotAges& a : ages) {
    nlohmann::json shape = nlohmann::json::array();
    for (int d = 0; d < a.shape.ndim; ++d) shape.push_back(a.shape[d]);
    nlohmann::json tiles = nlohmann::json::array();
    if (element) {  // one tile per output channel: the mean age of its elements
      const int64_t channels = a.shape[0], row = a.shape.numel() / channels;
      for (int64_t ch = 0; ch < channels; ++ch) {
        double sum = 0;
        for (int64_t e = 0; e < row; ++e) sum += static_cast<double>(a.age[static_cast<size_t>(ch * row + e)]);
        tiles.push_back(round4(sum / static_cast<double>(row)));
      }
    } else {
      tiles = a.age;
    }
    slots.push_back({{"name", a.name}, {"shape", shape}, {"shared", !a.owns_fragments}, {"age", tiles}});
  }
  return {{"step", steps_done},
          {"mode", smoothing_mode_name(c.mode)},
          {"granularity", granularity_name(c.granularity)},
          {"preserve_prob", parts.front().smoother->preserve_prob()},
          {"tile", element ? "channel mean of its elements' ages" : "fragment age"},
          {"slots", slots}};
}

std::string mosaic_steps_problem(const std::string& text) {
  try {
    parse_mosaic_steps(text);
    return "";
  } catch (const UsageError&) {
    return "a comma-separated list of step counts >= 1, like 100,800,1600";
  }
}

void log_teacher(const std::vector<TeacherPart>& parts, const std::vector<int64_t>& mosaic_steps, int64_t step,
                 bool log_step, MetricsLog& metrics, const RunDirectory& dir, bool write_files) {
  const bool mosaic_step = std::find(mosaic_steps.begin(), mosaic_steps.end(), step) != mosaic_steps.end();
  if (!log_step && !mosaic_step) return;
  const std::vector<SlotAges> ages = teacher_ages(parts, step - 1);
  nlohmann::json ev = teacher_event_fields(ages);
  ev["step"] = step;
  metrics.write("teacher", ev);
  if (mosaic_step && write_files)
    write_file_atomic(dir.path(cat("mosaic-", step, ".json")), mosaic_json(parts, ages, step).dump());
}

std::vector<int64_t> parse_mosaic_steps(const std::string& text) {
  std::vector<int64_t> steps;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    char* stop = nullptr;
    const long long v = std::strtoll(item.c_str(), &stop, 10);
    if (item.empty() || *stop != '\0' || v < 1)
      throw UsageError(cat("--mosaic-steps: expected step counts >= 1, found '", item, "'"));
    steps.push_back(v);
    start = end + 1;
  }
  if (!text.empty() && text.back() == ',') throw UsageError("--mosaic-steps: expected a step after the last comma");
  return steps;
}

}  // namespace tessera
