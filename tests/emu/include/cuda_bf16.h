// The emulated bf16 types and conversions (tests/emu/cuda_emu.h).
#pragma once
#include "cuda_emu.h"
