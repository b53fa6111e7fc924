// The one function of CVFIO that is not inline: it needs _GNU_SOURCE, which must be defined
// before the first libc header of a translation unit.
#define _GNU_SOURCE
#include <string.h>
#include "CVFIO.h"

const char *cvfio_errno_name(int error) {
    return strerrorname_np(error);
}
