// Memory for the CPU ops' large outputs, recycled between calls.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace vico_flow {
namespace cpu {

// An uninitialised tensor, like at::empty(sizes, options) on the CPU. A large
// one takes the memory that a dead output of about its size left behind,
// already mapped. A fresh multi-megabyte buffer costs a page fault per 4 KB
// on its first touch: the C library hands the pages of freed large blocks
// back to the system, so a hard fwd+bwd at 1024^3 (four 4 MB outputs) met up
// to ~4000 faults per call, 1-3 ms beside a 20 ms call.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Frees the blocks the pool keeps for later outputs; returns their bytes.
int64_t release_cached_outputs();

// Bytes the pool keeps now (blocks no live tensor uses).
int64_t cached_output_bytes();

}  // namespace cpu
}  // namespace vico_flow
