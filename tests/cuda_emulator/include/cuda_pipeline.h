// The CUDA emulator's cuda_pipeline.h: the async-copy primitives are in emu_runtime.h.
#pragma once
#include "emu_runtime.h"
