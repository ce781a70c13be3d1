// MPI implementation of Communicator, the single-rank one, and the factory.
// Each communicator owns one worker thread that runs its MPI calls in submission order; callers
// get a handle and wait on it with the communicator's timeout. So backward can hand a gradient
// bucket to the worker and go on computing (overlap), and a peer that died or hangs turns into a
// kiln::Error after timeout_s instead of a job stuck forever.
#include <mpi.h>

#include <chrono>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/error.h"
#include "parallel/communicator.h"

namespace kiln {

Chunk chunk_of(std::int64_t n, int size, int rank) {
  const std::int64_t base = n / size, extra = n % size;
  const std::int64_t begin = rank * base + std::min<std::int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

namespace {

constexpr std::int64_t kMaxCount = (std::int64_t{1} << 31) - 1;

void mpi_check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw Error(message("MPI ", what, " failed: ", std::string(text, length)));
}

// Set when a collective of any communicator missed its deadline (see ~MpiCommunicator).
std::atomic<bool> g_any_stuck{false};

// A finished-or-not operation: waits on the worker's promise with a deadline.
class FutureHandle : public CommHandle {
 public:
  FutureHandle(std::future<void> done, std::string what, double timeout_s)
      : done_(std::move(done)), what_(std::move(what)), timeout_s_(timeout_s) {}
  void wait() override {
    if (!done_.valid()) return;
    if (done_.wait_for(std::chrono::duration<double>(timeout_s_)) != std::future_status::ready)
      throw Error(message(what_, " did not finish within parallel.timeout_s=", timeout_s_,
                          " s: another rank has died or is stuck; aborting the job"));
    done_.get();  // rethrows an MPI error from the worker
  }

 private:
  std::future<void> done_;
  std::string what_;
  double timeout_s_;
};

class DoneHandle : public CommHandle {
 public:
  void wait() override {}
};

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::string label, double timeout_s, int local_rank, int local_size)
      : comm_(comm), label_(std::move(label)), timeout_s_(timeout_s),
        local_rank_(local_rank), local_size_(local_size) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    worker_ = std::thread([work = work_] { run_worker(*work); });
  }

  ~MpiCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(work_->mutex);
      work_->stop = true;
      if (stuck_ || g_any_stuck) work_->tasks.clear();  // none may run after this object is gone
    }
    work_->ready.notify_all();
    // A worker stuck inside MPI (a dead peer) cannot be joined, and once any communicator of the
    // process is stuck, MPI is left alone (no MPI_Comm_free beside a pending collective, which
    // crashed OpenMPI and printed a segfault trace over the real message): the process is
    // ending, by MPI_Abort, then.
    // (The worker owns the queue it waits on, so a detached one outlives this object safely.)
    if (stuck_ || g_any_stuck) {
      worker_.detach();
      return;
    }
    worker_.join();
    if (comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string name() const override { return "mpi:" + label_; }

  std::unique_ptr<CommHandle> all_reduce_async(float* data, std::int64_t n, ReduceOp op) override {
    check_count(n, "all_reduce");
    const MPI_Op mpi_op = op == ReduceOp::max ? MPI_MAX : MPI_SUM;
    return submit(describe(op == ReduceOp::max ? "all_reduce(max)" : "all_reduce", n), [=, this] {
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, mpi_op, comm_), "Allreduce");
    });
  }

  std::unique_ptr<CommHandle> reduce_scatter_async(const float* input, float* output, std::int64_t n) override {
    check_count(n, "reduce_scatter");
    return submit(describe("reduce_scatter", n), [=, this] {
      std::vector<int> counts(size_);
      for (int r = 0; r < size_; ++r) counts[r] = static_cast<int>(chunk_of(n, size_, r).size());
      mpi_check(MPI_Reduce_scatter(input, output, counts.data(), MPI_FLOAT, MPI_SUM, comm_), "Reduce_scatter");
    });
  }

  std::unique_ptr<CommHandle> all_gather_async(const float* input, float* output, std::int64_t n) override {
    check_count(n, "all_gather");
    return submit(describe("all_gather", n), [=, this] {
      std::vector<int> counts(size_), displs(size_);
      for (int r = 0; r < size_; ++r) {
        const Chunk c = chunk_of(n, size_, r);
        counts[r] = static_cast<int>(c.size());
        displs[r] = static_cast<int>(c.begin);
      }
      // The own chunk may already sit in place inside output (ZeRO-1 parameters).
      const void* send = input == output + displs[rank_] ? MPI_IN_PLACE : input;
      mpi_check(MPI_Allgatherv(send, counts[rank_], MPI_FLOAT, output, counts.data(), displs.data(),
                               MPI_FLOAT, comm_), "Allgatherv");
    });
  }

  std::unique_ptr<CommHandle> broadcast_async(float* data, std::int64_t n, int root) override {
    check_count(n, "broadcast");
    return submit(describe("broadcast", n), [=, this] {
      mpi_check(MPI_Bcast(data, static_cast<int>(n), MPI_FLOAT, root, comm_), "Bcast");
    });
  }

  void barrier_untimed() override {
    enqueue([this] { mpi_check(MPI_Barrier(comm_), "Barrier"); }).get();  // no deadline
  }
  std::unique_ptr<CommHandle> barrier_async() override {
    return submit(describe("barrier", 0), [this] { mpi_check(MPI_Barrier(comm_), "Barrier"); });
  }

  double sum(double value) override {
    double total = 0.0;
    submit(describe("sum", 1), [&, this] {
      mpi_check(MPI_Allreduce(&value, &total, 1, MPI_DOUBLE, MPI_SUM, comm_), "Allreduce");
    })->wait();
    return total;
  }
  void sum(double* values, std::int64_t n) override {
    KILN_CHECK(n <= std::numeric_limits<int>::max(), "a sum of ", n, " doubles is too large for one MPI call");
    submit(describe("sum", n), [&, this] {
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, values, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, comm_), "Allreduce");
    })->wait();
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& label) override {
    MPI_Comm sub = MPI_COMM_NULL;
    submit(describe("split", 0), [&, this] {
      mpi_check(MPI_Comm_split(comm_, color, key, &sub), "Comm_split");
    })->wait();
    return std::make_unique<MpiCommunicator>(sub, label, timeout_s_, local_rank_, local_size_);
  }

 private:
  std::string describe(const char* op, std::int64_t n) const {
    return message("rank ", rank_, " of the ", label_, " group (", size_, " ranks): ", op,
                   n > 0 ? message(" of ", n, n == 1 ? " value" : " values") : std::string());
  }

  static void check_count(std::int64_t n, const char* op) {
    KILN_CHECK(n >= 0 && n <= kMaxCount, op, " of ", n, " elements exceeds MPI's int count (",
               kMaxCount, "); use more ranks or a smaller model per rank");
  }

  // Hands `work` to the communication thread; the future is ready when it has run.
  std::future<void> enqueue(std::function<void()> work) {
    std::packaged_task<void()> task(std::move(work));
    std::future<void> done = task.get_future();
    {
      std::lock_guard<std::mutex> lock(work_->mutex);
      work_->tasks.push_back(std::move(task));
    }
    work_->ready.notify_one();
    return done;
  }

  std::unique_ptr<CommHandle> submit(std::string what, std::function<void()> work) {
    return std::make_unique<TimedHandle>(enqueue(std::move(work)), std::move(what), timeout_s_, this);
  }

  // A FutureHandle that marks the worker stuck when it times out.
  class TimedHandle : public FutureHandle {
   public:
    TimedHandle(std::future<void> done, std::string what, double timeout_s, MpiCommunicator* owner)
        : FutureHandle(std::move(done), std::move(what), timeout_s), owner_(owner) {}
    void wait() override {
      try {
        FutureHandle::wait();
      } catch (...) {
        owner_->stuck_ = true;
        g_any_stuck = true;
        throw;
      }
    }

   private:
    MpiCommunicator* owner_;
  };

  // The communication thread's queue, shared with the thread (see ~MpiCommunicator).
  struct WorkQueue {
    std::mutex mutex;
    std::condition_variable ready;
    std::deque<std::packaged_task<void()>> tasks;
    bool stop = false;
  };

  static void run_worker(WorkQueue& work) {
    for (;;) {
      std::packaged_task<void()> task;
      {
        std::unique_lock<std::mutex> lock(work.mutex);
        work.ready.wait(lock, [&work] { return work.stop || !work.tasks.empty(); });
        if (work.tasks.empty()) return;
        task = std::move(work.tasks.front());
        work.tasks.pop_front();
      }
      task();
    }
  }

  MPI_Comm comm_;
  std::string label_;
  double timeout_s_;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  std::thread worker_;
  std::shared_ptr<WorkQueue> work_ = std::make_shared<WorkQueue>();
  std::atomic<bool> stuck_{false};
};

class SingleCommunicator : public Communicator {
 public:
  explicit SingleCommunicator(std::string label) : label_(std::move(label)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  std::string name() const override { return "single:" + label_; }
  std::unique_ptr<CommHandle> all_reduce_async(float*, std::int64_t, ReduceOp) override { return done(); }
  std::unique_ptr<CommHandle> reduce_scatter_async(const float* input, float* output, std::int64_t n) override {
    if (input != output) std::memmove(output, input, static_cast<std::size_t>(n) * sizeof(float));
    return done();
  }
  std::unique_ptr<CommHandle> all_gather_async(const float* input, float* output, std::int64_t n) override {
    if (input != output) std::memmove(output, input, static_cast<std::size_t>(n) * sizeof(float));
    return done();
  }
  std::unique_ptr<CommHandle> broadcast_async(float*, std::int64_t, int) override { return done(); }
  std::unique_ptr<CommHandle> barrier_async() override { return done(); }
  double sum(double value) override { return value; }
  void sum(double*, std::int64_t) override {}
  std::unique_ptr<Communicator> split(int, int, const std::string& label) override {
    return std::make_unique<SingleCommunicator>(label);
  }

 private:
  static std::unique_ptr<CommHandle> done() { return std::make_unique<DoneHandle>(); }
  std::string label_;
};

}  // namespace

std::unique_ptr<Communicator> make_single_communicator(const std::string& label) {
  return std::make_unique<SingleCommunicator>(label);
}

bool launched_with_several_ranks() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && std::atoi(value) > 1) {
      // srun without an MPI plugin sets SLURM_NTASKS for independent processes too; only a
      // launcher that wires up MPI (OpenMPI's mpirun, PMI/PMIx) makes them one job.
      if (std::strcmp(name, "SLURM_NTASKS") == 0 && std::getenv("PMIX_RANK") == nullptr &&
          std::getenv("PMI_RANK") == nullptr && std::getenv("OMPI_COMM_WORLD_RANK") == nullptr)
        continue;
      return true;
    }
  }
  return false;
}

std::unique_ptr<Communicator> make_world_communicator(double timeout_s, bool log) {
  KILN_CHECK(timeout_s > 0, "parallel.timeout_s must be positive, got ", timeout_s);
  if (!launched_with_several_ranks()) {
    if (log) std::printf("communicator: single rank (started without mpirun)\n");
    return std::make_unique<SingleCommunicator>("world");
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "Init_thread");
    KILN_CHECK(provided >= MPI_THREAD_MULTIPLE,
               "this MPI library does not support MPI_THREAD_MULTIPLE, which kiln's communication "
               "threads need; use an MPI built with thread support (Debian's OpenMPI has it)");
  }
  MPI_Comm node = MPI_COMM_NULL;
  mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node), "Comm_split_type");
  int local_rank = 0, local_size = 1;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_size(node, &local_size);
  MPI_Comm_free(&node);
  auto world = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world", timeout_s, local_rank, local_size);
  if (log && world->rank() == 0)
    std::printf("communicator: mpi, %d ranks (%d on this node)\n", world->size(), local_size);
  return world;
}

int launcher_rank() {
  if (!launched_with_several_ranks()) return 0;
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"})
    if (const char* value = std::getenv(name)) return std::atoi(value);
  return 0;
}

bool communication_started() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  return initialized != 0;
}

void abort_all_ranks(int code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) {
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, code);
  }
}

void finalize_communication() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Finalize();
}

}  // namespace kiln
