// NCCL implementation of Communicator (see nccl_communicator.h).
#include "parallel/nccl_communicator.h"

#include "kernels/error.h"
#include "kernels/device.h"

#ifdef KILN_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>
#endif

namespace kiln {

#ifndef KILN_WITH_NCCL

std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, int, double, const std::string&) {
  throw Error("this build of kiln has no NCCL; build where the CUDA toolkit and NCCL are installed");
}

#else

namespace {

void cuda_check(cudaError_t code, const char* what) {
  KILN_CHECK(code == cudaSuccess, "CUDA ", what, " failed: ", cudaGetErrorString(code));
}

void nccl_check(ncclResult_t code, const char* what) {
  KILN_CHECK(code == ncclSuccess, "NCCL ", what, " failed: ", ncclGetErrorString(code));
}

class NcclCommunicator;

// Waits for an event recorded after the operation on the communicator's stream.
class EventHandle : public CommHandle {
 public:
  EventHandle(cudaEvent_t event, std::string what, double timeout_s, ncclComm_t comm)
      : event_(event), what_(std::move(what)), timeout_s_(timeout_s), comm_(comm) {}
  ~EventHandle() override { cudaEventDestroy(event_); }
  void wait() override {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    for (;;) {
      const cudaError_t state = cudaEventQuery(event_);
      if (state == cudaSuccess) return;
      KILN_CHECK(state == cudaErrorNotReady, what_, ": CUDA error ", cudaGetErrorString(state));
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      KILN_CHECK(async == ncclSuccess || async == ncclInProgress, what_, ": NCCL error ",
                 ncclGetErrorString(async));
      if (std::chrono::steady_clock::now() > deadline) {
        ncclCommAbort(comm_);
        throw Error(message(what_, " did not finish within parallel.timeout_s=", timeout_s_,
                            " s: another rank has died or is stuck; aborting the job"));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

 private:
  cudaEvent_t event_;
  std::string what_;
  double timeout_s_;
  ncclComm_t comm_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, std::string label, double timeout_s, int local_rank, int local_size)
      : comm_(comm), label_(std::move(label)), timeout_s_(timeout_s), local_rank_(local_rank),
        local_size_(local_size) {
    nccl_check(ncclCommUserRank(comm_, &rank_), "CommUserRank");
    nccl_check(ncclCommCount(comm_, &size_), "CommCount");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "StreamCreate");
    cuda_check(cudaMalloc(&scalar_, sizeof(double)), "Malloc");
  }
  ~NcclCommunicator() override {
    cudaFree(scalar_);
    cudaStreamDestroy(stream_);
    ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string name() const override { return "nccl:" + label_; }

  std::unique_ptr<CommHandle> all_reduce_async(float* data, std::int64_t n, ReduceOp op) override {
    after_compute();
    nccl_check(ncclAllReduce(data, data, n, ncclFloat, op == ReduceOp::max ? ncclMax : ncclSum, comm_, stream_),
               "AllReduce");
    return record("all_reduce", n);
  }
  std::unique_ptr<CommHandle> reduce_scatter_async(const float* input, float* output, std::int64_t n) override {
    after_compute();
    // NCCL's reduce-scatter takes equal chunks: uneven sizes go through a padded temporary.
    const std::int64_t chunk = (n + size_ - 1) / size_;
    if (chunk * size_ == n) {
      nccl_check(ncclReduceScatter(input, output, chunk, ncclFloat, ncclSum, comm_, stream_), "ReduceScatter");
      return record("reduce_scatter", n);
    }
    float* padded = scratch(2 * chunk * size_);
    cuda_check(cudaMemsetAsync(padded, 0, sizeof(float) * chunk * size_, stream_), "MemsetAsync");
    for (int r = 0; r < size_; ++r) {
      const Chunk c = chunk_of(n, size_, r);
      cuda_check(cudaMemcpyAsync(padded + r * chunk, input + c.begin, sizeof(float) * c.size(),
                                 cudaMemcpyDeviceToDevice, stream_), "MemcpyAsync");
    }
    float* reduced = padded + chunk * size_;
    nccl_check(ncclReduceScatter(padded, reduced, chunk, ncclFloat, ncclSum, comm_, stream_), "ReduceScatter");
    cuda_check(cudaMemcpyAsync(output, reduced, sizeof(float) * chunk_of(n, size_, rank_).size(),
                               cudaMemcpyDeviceToDevice, stream_), "MemcpyAsync");
    return record("reduce_scatter", n);
  }
  std::unique_ptr<CommHandle> all_gather_async(const float* input, float* output, std::int64_t n) override {
    after_compute();
    const std::int64_t chunk = (n + size_ - 1) / size_;
    if (chunk * size_ == n) {
      nccl_check(ncclAllGather(input, output, chunk, ncclFloat, comm_, stream_), "AllGather");
      return record("all_gather", n);
    }
    float* padded = scratch(chunk * (size_ + 1));
    float* mine = padded + chunk * size_;
    cuda_check(cudaMemcpyAsync(mine, input, sizeof(float) * chunk_of(n, size_, rank_).size(),
                               cudaMemcpyDeviceToDevice, stream_), "MemcpyAsync");
    nccl_check(ncclAllGather(mine, padded, chunk, ncclFloat, comm_, stream_), "AllGather");
    for (int r = 0; r < size_; ++r) {
      const Chunk c = chunk_of(n, size_, r);
      cuda_check(cudaMemcpyAsync(output + c.begin, padded + r * chunk, sizeof(float) * c.size(),
                                 cudaMemcpyDeviceToDevice, stream_), "MemcpyAsync");
    }
    return record("all_gather", n);
  }
  std::unique_ptr<CommHandle> broadcast_async(float* data, std::int64_t n, int root) override {
    after_compute();
    nccl_check(ncclBroadcast(data, data, n, ncclFloat, root, comm_, stream_), "Broadcast");
    return record("broadcast", n);
  }
  std::unique_ptr<CommHandle> barrier_async() override {
    nccl_check(ncclAllReduce(scalar_, scalar_, 1, ncclDouble, ncclSum, comm_, stream_), "AllReduce");
    return record("barrier", 0);
  }
  using Communicator::sum;  // the n-double sum: one sum() each
  double sum(double value) override {
    cuda_check(cudaMemcpyAsync(scalar_, &value, sizeof value, cudaMemcpyHostToDevice, stream_), "MemcpyAsync");
    nccl_check(ncclAllReduce(scalar_, scalar_, 1, ncclDouble, ncclSum, comm_, stream_), "AllReduce");
    cuda_check(cudaMemcpyAsync(&value, scalar_, sizeof value, cudaMemcpyDeviceToHost, stream_), "MemcpyAsync");
    record("sum", 1)->wait();
    return value;
  }
  std::unique_ptr<Communicator> split(int color, int key, const std::string& label) override {
    ncclComm_t sub = nullptr;
    nccl_check(ncclCommSplit(comm_, color, key, &sub, nullptr), "CommSplit");
    return std::make_unique<NcclCommunicator>(sub, label, timeout_s_, local_rank_, local_size_);
  }

 private:
  // The data comes from kernels on kiln's compute stream (kiln::cuda::stream()), queued but
  // perhaps not yet run: this communicator's stream waits for them before the collective reads
  // it. The caller waits on the returned handle before the compute stream uses the result.
  void after_compute() {
    compute_done_.record();
    cuda_check(cudaStreamWaitEvent(stream_, static_cast<cudaEvent_t>(compute_done_.native()), 0),
               "StreamWaitEvent");
  }
  std::unique_ptr<CommHandle> record(const char* op, std::int64_t n) {
    cudaEvent_t event;
    cuda_check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "EventCreate");
    cuda_check(cudaEventRecord(event, stream_), "EventRecord");
    return std::make_unique<EventHandle>(
        event, message("rank ", rank_, " of the ", label_, " group (", size_, " ranks): ", op,
                       n > 0 ? message(" of ", n, " values") : std::string()),
        timeout_s_, comm_);
  }
  // A device buffer of at least n floats, kept for later calls (stream-ordered reuse).
  float* scratch(std::int64_t n) {
    if (n > scratch_size_) {
      cuda_check(cudaStreamSynchronize(stream_), "StreamSynchronize");
      cudaFree(scratch_);
      cuda_check(cudaMalloc(&scratch_, sizeof(float) * n), "Malloc");
      scratch_size_ = n;
    }
    return scratch_;
  }

  ncclComm_t comm_;
  std::string label_;
  double timeout_s_;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  cudaStream_t stream_ = nullptr;
  double* scalar_ = nullptr;
  float* scratch_ = nullptr;
  std::int64_t scratch_size_ = 0;
  device::Event compute_done_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& world, int device, double timeout_s,
                                                    const std::string& label) {
  KILN_CHECK(device::cuda_available(), "no CUDA device is visible to rank ", world.rank(),
             "; NCCL needs one GPU per rank");
  device::use_device(device);
  // The unique id travels over the MPI world as floats (a byte-exact copy).
  ncclUniqueId id;
  std::vector<float> packed((sizeof id + sizeof(float) - 1) / sizeof(float), 0.0f);
  if (world.rank() == 0) {
    nccl_check(ncclGetUniqueId(&id), "GetUniqueId");
    std::memcpy(packed.data(), &id, sizeof id);
  }
  world.broadcast(packed.data(), static_cast<std::int64_t>(packed.size()), 0);
  std::memcpy(&id, packed.data(), sizeof id);
  ncclComm_t comm = nullptr;
  nccl_check(ncclCommInitRank(&comm, world.size(), id, world.rank()), "CommInitRank");
  return std::make_unique<NcclCommunicator>(comm, label, timeout_s, world.local_rank(), world.local_size());
}

#endif

}  // namespace kiln
