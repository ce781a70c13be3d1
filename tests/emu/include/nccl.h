// NCCL for the host emulator (tests/emu/cuda_emu.h): the part parallel/nccl_communicator.cpp
// uses, with NCCL's names and values, carried out over MPI (tests/emu/cuda_emu_nccl.cpp).
//  - A communicator made by ncclCommInitRank covers MPI_COMM_WORLD's ranks in order (rank r of n
//    is world rank r of a world of n; anything else aborts with a message); ncclCommSplit is
//    MPI_Comm_split. Both are host-blocking collectives, as in NCCL.
//  - A collective is queued on its stream and runs, as the matching MPI collective on the buffers
//    (device memory is host memory), when the emulator runs that stream's work. Streams that carry
//    collectives run as early as their waits allow (cuda_emu.h), so a collective whose stream
//    does not wait for the kernels that write its input reads the input before they run.
//  - Each rank runs its streams' work in submission order, so every rank reaches a
//    communicator's MPI collectives in the same order (as NCCL requires of the caller).
//  - Unlike NCCL, a collective progresses only inside some host wait of every rank: a rank whose
//    host waits on another rank over MPI before any wait that runs a queued collective the other
//    already blocks in would deadlock here (the training loop in parallel.emu_nccl_np2 does not).
// Types: float and double; ops: sum and max. Errors are never asynchronous.
#pragma once

#include <cstddef>

#include "cuda_emu.h"

#define NCCL_UNIQUE_ID_BYTES 128
#define NCCL_SPLIT_NOCOLOR -1

enum ncclResult_t {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
};
enum ncclDataType_t { ncclFloat32 = 7, ncclFloat = 7, ncclFloat64 = 8, ncclDouble = 8 };
enum ncclRedOp_t { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 };
struct ncclUniqueId {
  char internal[NCCL_UNIQUE_ID_BYTES];
};
struct ncclConfig_t;  // only nullptr (the defaults) is accepted
using ncclComm_t = struct ncclComm*;

const char* ncclGetErrorString(ncclResult_t result);
ncclResult_t ncclGetUniqueId(ncclUniqueId* id);
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config);
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank);
ncclResult_t ncclCommCount(const ncclComm_t comm, int* count);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, std::size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, std::size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, std::size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, std::size_t count, ncclDataType_t datatype,
                           int root, ncclComm_t comm, cudaStream_t stream);
