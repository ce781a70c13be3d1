// The emulator's NCCL (what and how: tests/emu/include/nccl.h): communicators are MPI
// communicators, collectives are MPI collectives queued on the emulated stream.
#include <mpi.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

// `data` carries the queued collectives, `control` the host-blocking calls (ncclCommSplit): a
// rank may split before it has run a collective that another rank already ran, and MPI needs
// each communicator's collectives in one order on every rank.
struct ncclComm {
  MPI_Comm data = MPI_COMM_NULL, control = MPI_COMM_NULL;
  int rank = 0, size = 1;
  int pending = 0;  // collectives queued and not yet run
};

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "kiln CUDA emulator, NCCL: %s\n", what);
  std::abort();
}

ncclComm* make_comm(MPI_Comm control) {
  auto* comm = new ncclComm;
  comm->control = control;
  MPI_Comm_dup(control, &comm->data);
  MPI_Comm_rank(control, &comm->rank);
  MPI_Comm_size(control, &comm->size);
  return comm;
}

MPI_Datatype mpi_type(ncclDataType_t type) {
  if (type == ncclFloat) return MPI_FLOAT;
  if (type == ncclDouble) return MPI_DOUBLE;
  return MPI_DATATYPE_NULL;
}
std::size_t type_bytes(ncclDataType_t type) { return type == ncclFloat ? sizeof(float) : sizeof(double); }

bool overlap(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
  const auto* x = static_cast<const char*>(a);
  const auto* y = static_cast<const char*>(b);
  return x < y + b_bytes && y < x + a_bytes;
}

// Queues run() on the stream as one of comm's collectives; the stream becomes eager.
template <class Run>
ncclResult_t queue(ncclComm* comm, cudaStream_t stream, ncclDataType_t type, Run run) {
  if (comm == nullptr || mpi_type(type) == MPI_DATATYPE_NULL) return ncclInvalidArgument;
  kiln::emu::make_eager(stream);
  ++comm->pending;
  kiln::emu::enqueue(stream, [comm, run] {
    if (run() != MPI_SUCCESS) fail("an MPI collective failed");
    --comm->pending;
  });
  return ncclSuccess;
}

}  // namespace

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument (emulated NCCL: float or double, sum or max only)";
    case ncclInvalidUsage: return "invalid usage";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unhandled error";
  }
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id->internal, 0, sizeof id->internal);
  std::snprintf(id->internal, sizeof id->internal, "kiln emulated NCCL, pid %d", static_cast<int>(getpid()));
  return ncclSuccess;
}

// Collective over the world: the ranks must be the world's, in order, and agree on the id.
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  int initialized = 0, world_rank = 0, world_size = 0;
  MPI_Initialized(&initialized);
  if (!initialized) fail("ncclCommInitRank needs MPI initialised (the emulated NCCL runs over MPI)");
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  if (nranks != world_size || rank != world_rank)
    fail("ncclCommInitRank: the emulated NCCL makes communicators of all of MPI_COMM_WORLD's ranks in "
         "order only (use ncclCommSplit for a part)");
  ncclUniqueId root = id;
  MPI_Bcast(root.internal, NCCL_UNIQUE_ID_BYTES, MPI_BYTE, 0, MPI_COMM_WORLD);
  if (std::memcmp(root.internal, id.internal, NCCL_UNIQUE_ID_BYTES) != 0)
    fail("ncclCommInitRank: this rank's unique id differs from rank 0's");
  MPI_Comm control;
  MPI_Comm_dup(MPI_COMM_WORLD, &control);
  *comm = make_comm(control);
  return ncclSuccess;
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config) {
  if (comm == nullptr || config != nullptr) return ncclInvalidArgument;
  MPI_Comm control;
  MPI_Comm_split(comm->control, color == NCCL_SPLIT_NOCOLOR ? MPI_UNDEFINED : color, key, &control);
  *newcomm = control == MPI_COMM_NULL ? nullptr : make_comm(control);
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  *rank = comm->rank;
  return ncclSuccess;
}
ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  *count = comm->size;
  return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t* async_error) {
  *async_error = ncclSuccess;
  return ncclSuccess;
}
// The MPI communicators stay (a queued collective may still name them).
ncclResult_t ncclCommAbort(ncclComm_t) { return ncclSuccess; }
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  if (comm->pending != 0) fail("ncclCommDestroy with collectives queued and not run: synchronise the streams first");
  MPI_Comm_free(&comm->data);
  MPI_Comm_free(&comm->control);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, std::size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (op != ncclSum && op != ncclMax) return ncclInvalidArgument;
  return queue(comm, stream, datatype, [=] {
    return MPI_Allreduce(sendbuff == recvbuff ? MPI_IN_PLACE : sendbuff, recvbuff, static_cast<int>(count),
                         mpi_type(datatype), op == ncclSum ? MPI_SUM : MPI_MAX, comm->data);
  });
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, std::size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (op != ncclSum && op != ncclMax) return ncclInvalidArgument;
  return queue(comm, stream, datatype, [=] {
    const std::size_t bytes = recvcount * type_bytes(datatype);
    std::vector<char> input;  // a copy when the output lies inside the input (NCCL's in-place)
    const void* send = sendbuff;
    if (overlap(sendbuff, bytes * comm->size, recvbuff, bytes)) {
      input.assign(static_cast<const char*>(sendbuff), static_cast<const char*>(sendbuff) + bytes * comm->size);
      send = input.data();
    }
    return MPI_Reduce_scatter_block(send, recvbuff, static_cast<int>(recvcount), mpi_type(datatype),
                                    op == ncclSum ? MPI_SUM : MPI_MAX, comm->data);
  });
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, std::size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
  return queue(comm, stream, datatype, [=] {
    const std::size_t bytes = sendcount * type_bytes(datatype);
    std::vector<char> input;  // a copy when the input overlaps the output elsewhere than in place
    const void* send = sendbuff;
    if (sendbuff == static_cast<const char*>(recvbuff) + bytes * comm->rank) {
      send = MPI_IN_PLACE;
    } else if (overlap(sendbuff, bytes, recvbuff, bytes * comm->size)) {
      input.assign(static_cast<const char*>(sendbuff), static_cast<const char*>(sendbuff) + bytes);
      send = input.data();
    }
    return MPI_Allgather(send, static_cast<int>(sendcount), mpi_type(datatype), recvbuff,
                         static_cast<int>(sendcount), mpi_type(datatype), comm->data);
  });
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, std::size_t count, ncclDataType_t datatype,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  return queue(comm, stream, datatype, [=] {
    if (comm->rank == root && sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, count * type_bytes(datatype));
    return MPI_Bcast(recvbuff, static_cast<int>(count), mpi_type(datatype), root, comm->data);
  });
}
