// The emulated CUDA runtime (tests/emu/cuda_emu.h), found before the toolkit's in test_cuda_emu.
#pragma once
#include "cuda_emu.h"
