// Every registry of the toolkit in one include: blocks, norms, positional encodings, routers, tasks.
#pragma once

#include "blocks/mixer.h"
#include "blocks/norm_layer.h"
#include "blocks/positional.h"
#include "experiments/task.h"
#include "routers/router.h"
