/* What one call of each hot allocation function costs: N calls of malloc,
 * free, calloc and realloc, each timed apart, printed as ns per call.
 *
 * usage: alloc_calls N ROUNDS
 *
 * Run untraced and under tracer (bench/probe_cost/run.sh): the difference
 * is what a probe adds to a call. Each round times every function once, in
 * turn, so that drift in the machine's speed lands on all of them alike;
 * the median round is printed. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, n, sizeof *v, by_value);
    return v[n / 2];
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    long n = atol(argv[1]);
    int rounds = atoi(argv[2]);
    if (n <= 0 || rounds <= 0 || rounds > 100)
        return 2;
    void **blocks = malloc(n * sizeof *blocks);
    double m[100], f[100], c[100], r[100];
    for (int k = 0; k < rounds; k++) {
        double t0 = now_ns();
        for (long i = 0; i < n; i++)
            blocks[i] = malloc(64);
        double t1 = now_ns();
        for (long i = 0; i < n; i++)
            free(blocks[i]);
        double t2 = now_ns();
        for (long i = 0; i < n; i++)
            blocks[i] = calloc(1, 64);
        double t3 = now_ns();
        /* Alternating sizes within one chunk: realloc returns it in place. */
        void *p = blocks[0];
        for (long i = 0; i < n; i++)
            p = realloc(p, 16 + (i & 1) * 8);
        double t4 = now_ns();
        blocks[0] = p;
        for (long i = 0; i < n; i++)
            free(blocks[i]);
        m[k] = (t1 - t0) / n;
        f[k] = (t2 - t1) / n;
        c[k] = (t3 - t2) / n;
        r[k] = (t4 - t3) / n;
    }
    printf("malloc %.0f free %.0f calloc %.0f realloc %.0f\n", median(m, rounds),
           median(f, rounds), median(c, rounds), median(r, rounds));
    free(blocks);
    return 0;
}
