// Stub for the standalone device harness only (not part of the build): the persistent tier needs only ScalarType.
#pragma once
#include <cstdint>
namespace at { enum class ScalarType : int8_t { Half = 5, Float = 6, Double = 7, BFloat16 = 15 }; }
