/* C-side include of the public API (cxlsim_api.h stays cffi-clean, so the includes live here). */
#ifndef CXLSIM_H
#define CXLSIM_H
#include <stddef.h>
#include <stdint.h>
#include "cxlsim_api.h"
#endif
