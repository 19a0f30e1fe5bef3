// Moved to comm/tuning/cost_model.hpp with the cost file and calibrate().
// This forwarding header keeps code written against the old path compiling
// while the comm-core branch (which includes it) lands; remove it after.
#pragma once

#include "tuning/cost_model.hpp"
