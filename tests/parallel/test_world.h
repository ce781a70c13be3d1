// The world communicator shared by a test binary's tests (MPI may be initialised once per
// process), made by the test main in test_main.cpp.
#pragma once

#include "parallel/communicator.h"

namespace kiln::testing {
Communicator& world();
}
