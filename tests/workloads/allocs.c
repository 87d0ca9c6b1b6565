/* Calls each libc allocation function with exact sizes, each on a line the
 * test finds by its marker comment. */
#include <stdio.h>
#include <stdlib.h>

static void *keep[4];

int main(void) {
    for (int i = 0; i < 1000; i++) {
        void *p = malloc(1000 + i % 7); /* @churn */
        free(p);
    }
    keep[0] = malloc(1111); /* @leak_malloc */
    keep[1] = calloc(10, 222); /* @leak_calloc */
    void *r = malloc(100); /* @realloc_source */
    keep[2] = realloc(r, 3333); /* @leak_realloc */
    if (posix_memalign(&keep[3], 64, 4444) != 0) /* @leak_memalign */
        return 1;
    void *t = calloc(3, 1000); /* @temp_calloc */
    free(t);
    void *g = realloc(NULL, 777); /* @realloc_null */
    free(g);
    puts("done");
    return 0;
}
