// The CVFIO target is header-only; SwiftPM needs one C file to build it.
#include "CVFIO.h"
