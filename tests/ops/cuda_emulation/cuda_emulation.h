// A tiny host emulation of the CUDA execution model, for tests only: lets the CUDA kernels of csrc/cuda/
// (compiled with MSA_CUDA_EMULATION by the host compiler) run on a machine without a GPU.
//
// Blocks run one after another; the threads of a block run as host threads, and __syncthreads() is a
// barrier across them, so shared memory (`__shared__` → a static variable, shared by the block's threads)
// and barrier placement behave as on a GPU. Warp-level intrinsics are not provided: the kernels under test
// communicate through shared memory and barriers only. Slow (one OS thread per CUDA thread): tiny shapes.
#pragma once

#include <barrier>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;

namespace msa_emu {

inline thread_local dim3 tl_thread_idx, tl_block_idx, tl_block_dim, tl_grid_dim;
inline thread_local std::barrier<>* tl_barrier = nullptr;

inline void syncthreads() { tl_barrier->arrive_and_wait(); }

// Runs fn() as every thread of every block of the grid. The block's threads are created once per launch
// and step through the blocks together (a barrier between blocks), so a kernel must not call
// __syncthreads() after some of its threads returned (undefined behaviour on a GPU as well).
inline void launch(dim3 grid, dim3 block, const std::function<void()>& fn) {
  const unsigned nthreads = block.x * block.y * block.z;
  std::barrier<> bar(static_cast<std::ptrdiff_t>(nthreads));
  std::exception_ptr error;
  std::mutex error_mutex;
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) {
    threads.emplace_back([&, t] {
      tl_thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      tl_block_dim = block;
      tl_grid_dim = grid;
      tl_barrier = &bar;
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            tl_block_idx = dim3(bx, by, bz);
            try {
              fn();
            } catch (...) {
              std::lock_guard<std::mutex> lock(error_mutex);
              if (!error) error = std::current_exception();
            }
            bar.arrive_and_wait();  // the block is done: shared memory may be reused by the next one
          }
    });
  }
  for (auto& th : threads) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace msa_emu

#define threadIdx (::msa_emu::tl_thread_idx)
#define blockIdx (::msa_emu::tl_block_idx)
#define blockDim (::msa_emu::tl_block_dim)
#define gridDim (::msa_emu::tl_grid_dim)
#define __syncthreads() ::msa_emu::syncthreads()
