// The device runtime: caching allocator reuse, copies, and Tensor on the device.
#include "core/tensor.h"
#include "gpu_test.h"

namespace {

TEST(CudaRuntime, AllocatorReusesFreedBlocksOfTheSameSizeClass) {
  KILN_REQUIRE_GPU();
  kiln::device::release_cached();  // no free 1024-byte block left by an earlier test in this process
  void* a = kiln::device::alloc(1000);
  const auto before = kiln::device::allocator_stats();
  kiln::device::free(a);
  void* b = kiln::device::alloc(900);  // same 512-byte class (1024)
  const auto after = kiln::device::allocator_stats();
  EXPECT_EQ(a, b);
  EXPECT_EQ(after.cuda_mallocs, before.cuda_mallocs);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b) % 256, 0u);
  kiln::device::free(b);
}

TEST(CudaRuntime, TensorRoundTripsThroughTheDevice) {
  KILN_REQUIRE_GPU();
  kiln::Tensor host = kiln::Tensor::empty({3, 5});
  for (int i = 0; i < 15; ++i) host.f32()[i] = 0.5f * i - 3.0f;
  kiln::Tensor gpu = host.to(kiln::Device::cuda);
  EXPECT_EQ(gpu.device(), kiln::Device::cuda);
  kiln::Tensor back = gpu.view(5, {2, 5}).to(kiln::Device::cpu);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(back.f32()[i], host.f32()[5 + i]);
  gpu.zero_();
  back = gpu.to(kiln::Device::cpu);
  for (int i = 0; i < 15; ++i) EXPECT_EQ(back.f32()[i], 0.0f);
}

TEST(CudaRuntime, OutOfMemoryIsAClearError) {
  KILN_REQUIRE_GPU();
  std::size_t free_b = 0, total_b = 0;
  kiln::device::mem_info(&free_b, &total_b);
  try {
    kiln::device::alloc(total_b * 2);
    FAIL() << "allocating twice the device's memory succeeded";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of GPU memory"), std::string::npos) << e.what();
  }
}

}  // namespace
