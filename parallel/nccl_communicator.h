// Communicator over NCCL for device memory (built wherever the CUDA toolkit and NCCL are found;
// KILN_WITH_NCCL). Collectives run on one CUDA stream per communicator, in submission order, so
// they overlap kernels on the compute stream; a handle waits on a CUDA event with the
// communicator's timeout and aborts the NCCL communicator when it expires. The unique id is
// made on rank 0 and broadcast over the MPI world communicator.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace kiln {

// An NCCL communicator over the same ranks as `world` (an MPI or single-rank communicator, or a
// group split from one), using CUDA device `device` (device::use_device); `label` names the
// group in errors. Collectives read device memory that kernels on kiln's compute stream wrote,
// after those kernels. Throws kiln::Error when kiln was built without NCCL.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& world, int device, double timeout_s,
                                                    const std::string& label = "world");

}  // namespace kiln
