// The pool behind empty_output (output_pool.h).
#include "output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>

#include <cstdint>
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
// Blocks of whole 2 MB pages are mapped fresh from the system, aligned to
// them, and asked to be backed by transparent huge pages: the dB scatter reads
// the winners and the gradient down 64-column slabs, one 4 KB page per row,
// and the hard backward took 0.1-0.2 ms less of its ~1.4 ms at 1024^3 with
// 2 MB pages (in-process A/B). Mapped, not taken from the C library: in a
// process that had already freed large buffers (a diffusion model run
// before), aligned_alloc handed back heap pages already faulted in as 4 KB
// ones, the hint then changed nothing, and the hard fwd+bwd at 1024^3 took
// ~1.5 ms longer (the winner search and the scatter miss the TLB).
constexpr size_t kHugePage = size_t(2) << 20;

// A block of the pool: `mapped` ones (whole huge pages) go back with munmap.
struct Block {
  void* data;
  size_t size;
  bool mapped;
};

// `size` bytes (a multiple of kHugePage) of fresh anonymous memory aligned to
// kHugePage, or nullptr: one page more is mapped and the unaligned ends unmapped.
void* map_huge(size_t size) {
  void* raw = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (begin + kHugePage - 1) / kHugePage * kHugePage;
  const size_t head = start - begin;  // < kHugePage, so the tail below is never empty
  if (head) munmap(raw, head);
  munmap(reinterpret_cast<void*>(start + size), kHugePage - head);
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(start), size, MADV_HUGEPAGE);  // a hint: ignored where transparent huge pages are off
#endif
  return reinterpret_cast<void*>(start);
}

void free_block(const Block& b) {
  if (b.mapped)
    munmap(b.data, b.size);
  else
    std::free(b.data);
}

class Pool {
 public:
  // A kept block of at least `bytes` and not much more, mapped when `mapped`
  // (a request for whole huge pages takes no block of small pages), or
  // {nullptr, 0, false}.
  Block take(size_t bytes, bool mapped) {
    std::lock_guard<std::mutex> lock(mu_);
    // Of the fitting blocks of the smallest size, the one given back last (a
    // multimap keeps equal keys in insertion order): its lines are the
    // likeliest to be in cache.
    auto found = free_.end();
    for (auto it = free_.lower_bound(bytes); it != free_.end() && it->first <= bytes + bytes / 4; ++it) {
      if (found != free_.end() && it->first != found->first) break;
      if (it->second.mapped || !mapped) found = it;
    }
    if (found == free_.end()) return {nullptr, 0, false};
    const Block block = found->second;
    cached_ -= block.size;
    free_.erase(found);
    return block;
  }
  // Called by the deleter of the tensor that used the block (any thread).
  void give_back(const Block& b) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + b.size <= kMaxCachedBytes) {
        free_.emplace(b.size, b);
        cached_ += b.size;
        return;
      }
    }
    free_block(b);
  }
  int64_t release() {
    std::multimap<size_t, Block> blocks;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      std::swap(bytes, cached_);
    }
    for (auto& kv : blocks) free_block(kv.second);
    return int64_t(bytes);
  }
  int64_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return int64_t(cached_);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, Block> free_;  // size -> block
  size_t cached_ = 0;
};

// Never destroyed: tensors may die after static destructors have run.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

// The context of a handed-out block's DataPtr is a copy of its Block.
void give_back_block(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  pool().give_back(*b);
  delete b;
}

// The storage allocator of the outputs (a storage keeps its allocator, so a
// resized output grows through the pool too).
class PoolAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < kMinBytes) return c10::GetCPUAllocator()->allocate(bytes);
    const size_t huge_size = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    const bool huge = bytes >= kHugePage && (huge_size - bytes) * 8 <= bytes;  // rounding wastes <= 1/8
    Block b = pool().take(bytes, huge);
    if (!b.data && huge) b = {map_huge(huge_size), huge_size, true};
    if (!b.data) {  // small pages, or no mapping was to be had
      const size_t size = (bytes + kGrain - 1) / kGrain * kGrain;
      b = {std::aligned_alloc(64, size), size, false};
    }
    TORCH_CHECK(b.data, "vico_flow: out of memory allocating ", bytes, " bytes for an output");
    return {b.data, new Block(b), &give_back_block, c10::Device(c10::kCPU)};
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
