// Layer: public API. Umbrella header.
#pragma once
#include "nattn/api.h"
#include "nattn/host_trace.h"
#include "nattn/problem.h"
#include "nattn/status.h"
#include "nattn/tensor.h"
