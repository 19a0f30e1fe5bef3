// weft::nn: layers, parameters, initialisers, losses, optimizers and schedules.
// Needs CBLAS (Linear is a matmul), so it is opt-in like weft/expr/matmul.hpp.
#pragma once

#include "activation.hpp"
#include "dropout.hpp"
#include "embedding.hpp"
#include "init.hpp"
#include "layer_norm.hpp"
#include "linear.hpp"
#include "loss.hpp"
#include "metrics.hpp"
#include "optim.hpp"
#include "registry.hpp"
#include "rng.hpp"
#include "schedule.hpp"
#include "sequential.hpp"
