/* An allocator library that is what it says it is (functions where its
 * symbols say), for tests/tests/hostile_files.rs: loaded privately
 * (RTLD_LOCAL), never called; its file is then truncated, or replaced by a
 * link or a FIFO, while the process keeps it mapped. */
#include <stddef.h>

static char arena[1 << 16];
static size_t used;

void *malloc(size_t n) {
    if (n > sizeof arena - used)
        return NULL;
    void *p = arena + used;
    used += (n + 15) & ~(size_t)15;
    return p;
}

void free(void *p) { (void)p; }

void *calloc(size_t n, size_t size) { return malloc(n * size); }

void *realloc(void *p, size_t n) {
    (void)p;
    return malloc(n);
}
