// Output buffers for streaming CPU kernels that write every byte of a large, fresh tensor once.
//
// Why: a tensor of tens of MiB comes from glibc's mmap path, so every call gets fresh pages and the
// kernel's first write to each 4 KiB page is a page fault (zeroing + mapping, ~1 µs each). For a
// memory-bound op like cutoff those faults cost more than the copy itself: [256, 500, 74] fp32 is
// 9,251 faults per output. Advising the 2 MiB-aligned interior of the fresh range as huge-page
// memory (MADV_HUGEPAGE, honoured when THP is "madvise" or "always") before anything touches it
// leaves only the unaligned edges to fault page by page (bench_cutoff: 1,128 faults per
// forward+backward instead of 18,502). This is advice only: where the kernel refuses (THP "never",
// non-Linux), the tensor is the same ordinary buffer it would have been.
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace msa_fast {

constexpr int64_t kHugePage = int64_t(2) << 20;
// glibc's largest mmap threshold: blocks this big always come from their own fresh mmap. Smaller ones
// may be carved out of the shared heap, which must not be re-flagged under other allocations.
constexpr int64_t kFreshMmapBytes = int64_t(32) << 20;

// The interior of [data, data + bytes) that is 2 MiB-aligned, advised as huge pages.
inline void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kFreshMmapBytes) return;
  const auto begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
  const auto end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~uintptr_t(kHugePage - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// A contiguous CPU tensor like `like`, ready to be written once in full by a streaming kernel.
// at::detail::empty_cpu, not at::empty_like: under torch.use_deterministic_algorithms the latter
// first fills the buffer with NaN (fill_uninitialized_memory), a whole extra pass over memory that
// the kernel overwrites anyway.
inline at::Tensor empty_streaming_output(const at::Tensor& like) {
  at::Tensor out = at::detail::empty_cpu(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  advise_huge_pages(out.data_ptr(), int64_t(out.nbytes()));
  return out;
}

}  // namespace msa_fast
