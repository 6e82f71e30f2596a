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

// Bytes of memory jemalloc has handed out and holds from the OS (after refreshing its stats).
static inline size_t tether_jemalloc_stat(const char *name) {
    uint64_t epoch = 1;
    size_t esz = sizeof(epoch);
    mallctl("epoch", &epoch, &esz, &epoch, esz);
    size_t value = 0;
    size_t len = sizeof(value);
    if (mallctl(name, &value, &len, NULL, 0) != 0) return 0;
    return value;
}
#endif
