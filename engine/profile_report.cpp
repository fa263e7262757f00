// The profiler's outputs: the table printed at the end of a window and profile.json.
#include <algorithm>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/profile.h"

namespace tessera::profile {

namespace {

constexpr size_t kTableRows = 40;  // the rest is in profile.json

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// Achieved rates; empty when the kernel declares no cost or took no measurable time.
std::string gbps(const Report::Row& r) {
  return r.bytes > 0 && r.total_ms > 0 ? fmt("%.1f", r.bytes / r.total_ms / 1e6) : "";
}
std::string tflops(const Report::Row& r) {
  return r.flops > 0 && r.total_ms > 0 ? fmt("%.3f", r.flops / r.total_ms / 1e9) : "";
}

}  // namespace

std::string Report::table() const {
  const double per_step = steps > 0 ? step_ms / static_cast<double>(steps) : 0.0;
  const char* time_kind = device == Device::CUDA ? "device time (CUDA events)" : "host clock";
  std::string out;
  out += "profile: steps " + std::to_string(window.first) + ".." + std::to_string(window.first + steps - 1) +
         " (" + std::to_string(steps) + " steps) on " + device_name(device) + ", " + time_kind + ": " +
         fmt("%.3f", per_step) + " ms per step, kernels " + fmt("%.1f", step_ms > 0 ? 100 * kernel_ms / step_ms : 0) +
         "% of it\n";

  size_t wp = 5, wk = 6, wl = 5;
  const size_t shown = std::min(rows.size(), kTableRows);
  for (size_t i = 0; i < shown; ++i) {
    wp = std::max(wp, rows[i].phase.size());
    wk = std::max(wk, rows[i].kernel.size() + (rows[i].device != device ? 7 : 0));
    wl = std::max(wl, rows[i].layer.size());
  }
  wk = std::max(wk, std::string("total (measured step time)").size());
  char line[512];
  std::snprintf(line, sizeof line, "%-*s  %-*s  %-*s  %7s  %10s  %10s  %6s  %8s  %8s\n", static_cast<int>(wp), "phase",
                static_cast<int>(wk), "kernel", static_cast<int>(wl), "layer", "calls", "total ms", "mean us",
                "share", "GB/s", "TFLOP/s");
  out += line;
  for (size_t i = 0; i < shown; ++i) {
    const Row& r = rows[i];
    // A kernel run on another device than the step (host work in a GPU run) is marked.
    const std::string kernel = r.device != device ? r.kernel + " (host)" : r.kernel;
    std::snprintf(line, sizeof line, "%-*s  %-*s  %-*s  %7lld  %10.3f  %10.1f  %5.1f%%  %8s  %8s\n",
                  static_cast<int>(wp), r.phase.c_str(), static_cast<int>(wk), kernel.c_str(), static_cast<int>(wl),
                  r.layer.c_str(), static_cast<long long>(r.calls), r.total_ms,
                  r.calls > 0 ? 1000 * r.total_ms / static_cast<double>(r.calls) : 0.0, 100 * r.share,
                  gbps(r).c_str(), tflops(r).c_str());
    out += line;
  }
  if (rows.size() > shown) {
    double rest_ms = 0;
    for (size_t i = shown; i < rows.size(); ++i) rest_ms += rows[i].total_ms;
    std::snprintf(line, sizeof line, "%-*s  %-*s  %-*s  %7s  %10.3f  %10s  %5.1f%%\n", static_cast<int>(wp), "",
                  static_cast<int>(wk), ("(" + std::to_string(rows.size() - shown) + " more rows)").c_str(),
                  static_cast<int>(wl), "", "", rest_ms, "", step_ms > 0 ? 100 * rest_ms / step_ms : 0.0);
    out += line;
  }
  std::snprintf(line, sizeof line, "%-*s  %-*s  %-*s  %7s  %10.3f  %10s  %5.1f%%\n", static_cast<int>(wp), "",
                static_cast<int>(wk), "(outside kernels)", static_cast<int>(wl), "", "", outside_ms, "",
                step_ms > 0 ? 100 * outside_ms / step_ms : 0.0);
  out += line;
  std::snprintf(line, sizeof line, "%-*s  %-*s  %-*s  %7s  %10.3f  %10s  %5.1f%%\n", static_cast<int>(wp), "",
                static_cast<int>(wk), "total (measured step time)", static_cast<int>(wl), "", "", step_ms, "",
                100.0);
  out += line;
  if (!phases.empty()) {
    out += "phases:";
    for (const Phase& p : phases) out += " " + p.name + " " + fmt("%.1f", 100 * p.share) + "%";
    out += "\n";
  }
  if (untimed_calls > 0)
    out += "note: " + std::to_string(untimed_calls) + " kernel calls from other threads were not timed\n";
  return out;
}

std::string Report::json() const {
  nlohmann::json j;
  j["device"] = device_name(device);
  j["timing"] = device == Device::CUDA ? "cuda_events" : "host_clock";
  j["window"] = {window.first, window.last};
  j["steps"] = steps;
  j["step_ms_total"] = step_ms;
  j["step_ms_mean"] = steps > 0 ? step_ms / static_cast<double>(steps) : 0.0;
  j["kernel_ms_total"] = kernel_ms;
  j["outside_kernels_ms"] = outside_ms;
  j["untimed_calls"] = untimed_calls;
  nlohmann::json rs = nlohmann::json::array();
  for (const Row& r : rows) {
    nlohmann::json o;
    o["phase"] = r.phase;
    o["kernel"] = r.kernel;
    o["layer"] = r.layer;
    o["device"] = device_name(r.device);
    o["calls"] = r.calls;
    o["total_ms"] = r.total_ms;
    o["mean_us"] = r.calls > 0 ? 1000 * r.total_ms / static_cast<double>(r.calls) : 0.0;
    o["share"] = r.share;
    o["bytes"] = r.bytes;
    o["flops"] = r.flops;
    o["gb_per_s"] = r.bytes > 0 && r.total_ms > 0 ? r.bytes / r.total_ms / 1e6 : 0.0;
    o["tflop_per_s"] = r.flops > 0 && r.total_ms > 0 ? r.flops / r.total_ms / 1e9 : 0.0;
    rs.push_back(o);
  }
  j["rows"] = rs;
  nlohmann::json ps = nlohmann::json::array();
  for (const Phase& p : phases) ps.push_back({{"phase", p.name}, {"total_ms", p.total_ms}, {"share", p.share}});
  j["phases"] = ps;
  return j.dump(1);
}

}  // namespace tessera::profile
