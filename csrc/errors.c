#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "internal.h"

#define HUGE_PAGE (2u << 20)

void *cxl_alloc_big(size_t bytes)
{
    if (bytes < HUGE_PAGE) return calloc(1, bytes);
    size_t rounded = (bytes + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
    void *p = NULL;
    if (posix_memalign(&p, HUGE_PAGE, rounded)) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, rounded, MADV_HUGEPAGE);   /* advice only: harmless where THP is off */
#endif
    memset(p, 0, bytes);
    return p;
}

static __thread char last_error[512];

const char *cxl_last_error(void) { return last_error; }

int cxl_fail(int status, const char *fmt, ...)
{
    /* format into a scratch buffer: callers that add context pass cxl_last_error() as an argument,
     * and vsnprintf must not read the buffer it writes */
    char msg[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(last_error, msg, sizeof last_error);
    return status;
}
