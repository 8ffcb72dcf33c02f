#include <stdarg.h>
#include <stdio.h>
#include "internal.h"

static __thread char last_error[512];

const char *cxl_last_error(void) { return last_error; }

int cxl_fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}
