// Collective communication behind one interface. Implementations: MpiCommunicator (host memory,
// any number of processes), SingleCommunicator (world size 1: kiln runs without mpirun), and
// later NCCL for device memory. Every collective can be started asynchronously; the returned
// handle is waited on, and a wait that exceeds the communicator's timeout throws kiln::Error
// naming the rank, the group and the operation — a dead or stuck peer never hangs a job forever.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace kiln {

// The slice [begin, end) of n elements that rank r of `size` owns when n is split as evenly as
// possible: the first n % size ranks get one element more. Used by reduce_scatter, all_gather
// and ZeRO-1.
struct Chunk {
  std::int64_t begin;
  std::int64_t end;
  std::int64_t size() const { return end - begin; }
};
Chunk chunk_of(std::int64_t n, int size, int rank);

enum class ReduceOp { sum, max };

class CommHandle {
 public:
  virtual ~CommHandle() = default;
  // Blocks until the operation completed; throws kiln::Error on timeout or failure.
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;   // "mpi" or "single", with the group's label
  // This process's place among the ranks on its own machine (for thread counts, GPU choice).
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;

  // In place: data (n) becomes the sum (or max) over ranks.
  virtual std::unique_ptr<CommHandle> all_reduce_async(float* data, std::int64_t n,
                                                       ReduceOp op = ReduceOp::sum) = 0;
  // input (n) summed over ranks; this rank's chunk_of(n, size, rank) lands in output.
  virtual std::unique_ptr<CommHandle> reduce_scatter_async(const float* input, float* output,
                                                           std::int64_t n) = 0;
  // Each rank's chunk_of(n, size, rank) of `input` (input points at the chunk) gathered into
  // output (n) on every rank.
  virtual std::unique_ptr<CommHandle> all_gather_async(const float* input, float* output,
                                                       std::int64_t n) = 0;
  virtual std::unique_ptr<CommHandle> broadcast_async(float* data, std::int64_t n, int root) = 0;
  virtual std::unique_ptr<CommHandle> barrier_async() = 0;
  // Sum of one double over ranks (losses, token counts, norms).
  virtual double sum(double value) = 0;
  // In place: each of n doubles becomes its sum over ranks (host memory; one collective where the
  // communicator has one, else one sum() each).
  virtual void sum(double* values, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) values[i] = sum(values[i]);
  }

  void all_reduce(float* data, std::int64_t n, ReduceOp op = ReduceOp::sum) {
    all_reduce_async(data, n, op)->wait();
  }
  void reduce_scatter(const float* input, float* output, std::int64_t n) {
    reduce_scatter_async(input, output, n)->wait();
  }
  void all_gather(const float* input, float* output, std::int64_t n) {
    all_gather_async(input, output, n)->wait();
  }
  void broadcast(float* data, std::int64_t n, int root) { broadcast_async(data, n, root)->wait(); }
  void barrier() { barrier_async()->wait(); }
  // A barrier without parallel.timeout_s, for ranks that wait while rank 0 does work known to be
  // long (tokenizing a corpus, writing a checkpoint, clearing a run folder): such a wait is not
  // a hang. A rank that dies meanwhile is still noticed by the launcher, which ends the job.
  virtual void barrier_untimed() { barrier(); }

  // A sub-group: ranks with equal color, ordered by key (MPI_Comm_split semantics).
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& label) = 0;
};

// The world: MPI when this process was started by mpirun (or srun) with more than one rank,
// else a single-rank communicator. Initialises MPI on first use (thread level MULTIPLE);
// `timeout_s` bounds every wait. Logs its choice on rank 0.
std::unique_ptr<Communicator> make_world_communicator(double timeout_s, bool log);

// A communicator of one rank (no MPI), e.g. for a reference run inside a distributed test.
std::unique_ptr<Communicator> make_single_communicator(const std::string& label);

// True when the launcher (mpirun, srun) started this process as one of several ranks.
bool launched_with_several_ranks();

// This process's rank as its launcher numbered it (OpenMPI, PMIx, PMI or srun's environment),
// readable before MPI starts; 0 when it was started alone.
int launcher_rank();
// Whether the ranks have started communicating (MPI is initialised); before that, every rank
// fails the same way on the same config, and only rank 0 need say so.
bool communication_started();

// Ends every rank of the job with this exit code (MPI_Abort) when running under MPI with
// several ranks; otherwise does nothing. For the CLI, after a fatal error.
void abort_all_ranks(int code);

// Finalises MPI if it was initialised (call once at the end of main).
void finalize_communication();

}  // namespace kiln
