#include "engine/slot_tables.h"

#include <algorithm>

#include "engine/check.h"

namespace tessera {

std::vector<kernels::ArenaChunk> arena_chunks(const ParamTable& table, int64_t chunk_numel) {
  TS_CHECK(chunk_numel > 0 && chunk_numel % 4 == 0, "chunk size must be a positive multiple of 4, got ",
           chunk_numel);
  std::vector<kernels::ArenaChunk> chunks;
  for (size_t i = 0; i < table.size(); ++i) {
    const Slot& s = table[i];
    for (int64_t b = s.offset; b < s.offset + s.numel; b += chunk_numel) {
      kernels::ArenaChunk c;
      c.begin = b;
      c.end = std::min(b + chunk_numel, s.offset + s.numel);
      c.slot = static_cast<int32_t>(i);
      chunks.push_back(c);
    }
  }
  return chunks;
}

}  // namespace tessera
