// The NCCL communicator against the same expectations as the MPI one, on GPU memory. Needs a
// CUDA device per rank: without one (this project's CI) the test reports skipped.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/device.h"
#include "parallel/nccl_communicator.h"
#include "test_world.h"

#ifdef KILN_WITH_NCCL
#include <cuda_runtime.h>
#endif

using kiln::testing::world;

TEST(Nccl, CollectivesMatchTheMpiCommunicator) {
#ifndef KILN_WITH_NCCL
  GTEST_SKIP() << "built without NCCL";
#else
  if (!kiln::device::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const int devices = kiln::device::device_count();
  if (world().local_size() > devices)  // NCCL refuses two ranks on one GPU
    GTEST_SKIP() << "needs one CUDA device per rank (" << world().local_size() << " ranks here, " << devices
                 << " devices)";
  auto nccl = kiln::make_nccl_communicator(world(), world().local_rank(), 60.0);
  ASSERT_EQ(nccl->size(), world().size());
  for (std::int64_t n : {1, 1000, 1001}) {
    std::vector<float> host(n), gathered(n);
    for (std::int64_t i = 0; i < n; ++i) host[i] = static_cast<float>((world().rank() + 1) * 100 + i % 7);
    float *data = nullptr, *shard = nullptr, *all = nullptr;
    ASSERT_EQ(cudaMalloc(&data, n * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&shard, n * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&all, n * sizeof(float)), cudaSuccess);
    cudaMemcpy(data, host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    cudaDeviceSynchronize();  // a pageable copy may return before it lands; NCCL's stream is another
    nccl->reduce_scatter(data, shard, n);
    nccl->all_gather(shard, all, n);
    cudaMemcpy(gathered.data(), all, n * sizeof(float), cudaMemcpyDeviceToHost);
    world().all_reduce(host.data(), n);  // the MPI reference on host memory
    EXPECT_EQ(gathered, host) << "n=" << n;
    nccl->all_reduce(data, n);
    cudaMemcpy(gathered.data(), data, n * sizeof(float), cudaMemcpyDeviceToHost);
    EXPECT_EQ(gathered, host) << "n=" << n;
    cudaFree(data);
    cudaFree(shard);
    cudaFree(all);
  }
  EXPECT_EQ(nccl->sum(1.0), static_cast<double>(world().size()));
  auto half = nccl->split(world().rank() % 2, world().rank(), "parity");
  EXPECT_EQ(half->sum(1.0), static_cast<double>(half->size()));
#endif
}
