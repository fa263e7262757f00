// The unit of work of arena-wide kernels (teacher update, optimizer steps).
//
// An arena is cut, slot by slot, into chunks of at most a fixed number of elements; a chunk
// never crosses a slot boundary and never covers a gap. On the GPU one block takes one chunk,
// so every thread of a block knows its slot without searching; on the CPU the chunks are the
// units OpenMP hands out. The engine builds the list once per table (engine/slot_tables.h).
// Chunks start on multiples of 4 elements (slots start on multiples of 16 and the chunk size
// is a multiple of 4), so the CUDA kernels can use 16-byte vector loads.
#pragma once

#include <cstdint>

namespace kernels {

struct ArenaChunk {
  int64_t begin;  // first element (arena index)
  int64_t end;    // one past the last element, <= the slot's end
  int32_t slot;   // index of the slot in the table
  int32_t unused = 0;
};

}  // namespace kernels
