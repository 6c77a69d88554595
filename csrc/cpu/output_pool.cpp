// The pool behind empty_output (output_pool.h).
#include "output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <utility>

#include <sys/mman.h>

namespace vico_flow {
namespace cpu {
namespace {

// Smaller outputs come from the C library's heap, whose pages stay mapped.
constexpr size_t kMinBytes = size_t(1) << 20;
// The most the pool keeps for later calls (a block that would go past it is freed).
constexpr size_t kMaxCachedBytes = size_t(256) << 20;
// Block sizes are multiples of this; a block serves requests down to 4/5 of its size.
constexpr size_t kGrain = size_t(64) << 10;
// Blocks of whole 2 MB pages are aligned to them and asked to be backed by
// transparent huge pages: the dB scatter reads the winners and the gradient
// down 64-column slabs, one 4 KB page per row, and the hard backward took
// 0.1-0.2 ms less of its ~1.4 ms at 1024^3 with 2 MB pages (in-process A/B).
constexpr size_t kHugePage = size_t(2) << 20;

class Pool {
 public:
  // A kept block of at least `bytes` and not much more, or {nullptr, 0}.
  std::pair<void*, size_t> take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.lower_bound(bytes);
    if (it == free_.end() || it->first > bytes + bytes / 4) return {nullptr, 0};
    // Of the blocks of that size, the one given back last (a multimap keeps
    // equal keys in insertion order): its lines are the likeliest to be in cache.
    it = std::prev(free_.upper_bound(it->first));
    const std::pair<void*, size_t> block{it->second, it->first};
    cached_ -= it->first;
    free_.erase(it);
    return block;
  }
  // Called by the deleter of the tensor that used the block (any thread).
  void give_back(void* p, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + size <= kMaxCachedBytes) {
        free_.emplace(size, p);
        cached_ += size;
        return;
      }
    }
    std::free(p);
  }
  int64_t release() {
    std::multimap<size_t, void*> blocks;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      std::swap(bytes, cached_);
    }
    for (auto& kv : blocks) std::free(kv.second);
    return int64_t(bytes);
  }
  int64_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return int64_t(cached_);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // size -> block
  size_t cached_ = 0;
};

// Never destroyed: tensors may die after static destructors have run.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

// A block handed out, the context of its DataPtr.
struct Block {
  void* data;
  size_t size;
};

void give_back_block(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  pool().give_back(b->data, b->size);
  delete b;
}

// The storage allocator of the outputs (a storage keeps its allocator, so a
// resized output grows through the pool too).
class PoolAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < kMinBytes) return c10::GetCPUAllocator()->allocate(bytes);
    auto [p, size] = pool().take(bytes);
    if (!p) {
      const size_t huge_size = (bytes + kHugePage - 1) / kHugePage * kHugePage;
      const bool huge = bytes >= kHugePage && (huge_size - bytes) * 8 <= bytes;  // rounding wastes <= 1/8
      size = huge ? huge_size : (bytes + kGrain - 1) / kGrain * kGrain;
      p = std::aligned_alloc(huge ? kHugePage : 64, size);
      TORCH_CHECK(p, "vico_flow: out of memory allocating ", bytes, " bytes for an output");
#ifdef MADV_HUGEPAGE
      if (huge) madvise(p, size, MADV_HUGEPAGE);  // a hint: ignored where transparent huge pages are off
#endif
    }
    return {p, new Block{p, size}, &give_back_block, c10::Device(c10::kCPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
};

PoolAllocator& pool_allocator() {
  static PoolAllocator* a = new PoolAllocator;
  return *a;
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::detail::empty_generic(sizes, &pool_allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

int64_t release_cached_outputs() { return pool().release(); }

int64_t cached_output_bytes() { return pool().cached(); }

}  // namespace cpu
}  // namespace vico_flow
