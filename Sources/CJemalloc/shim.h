#ifndef TETHER_CJEMALLOC_SHIM_H
#define TETHER_CJEMALLOC_SHIM_H
#include <stddef.h>
#include <jemalloc/jemalloc.h>

// Reads jemalloc's version string. Calling into the library also guarantees the linker keeps
// libjemalloc (it would drop an unused library under --as-needed), so it replaces malloc.
static inline const char *tether_jemalloc_version(void) {
    const char *version = NULL;
    size_t len = sizeof(version);
    if (mallctl("version", &version, &len, NULL, 0) != 0) return NULL;
    return version;
}

#endif
