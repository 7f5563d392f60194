/*
 * What it costs to bring 350 MB of fresh anonymous memory into a process (the size of
 * ViT-B/32's fp32 weights packed for the panel kernel) in five ways, on this machine's kernel:
 *
 *   0  write one byte per 4 KiB page (a page fault each)
 *   1  MADV_HUGEPAGE, then write one byte per page (a fault per 2 MiB where granted)
 *   2  MAP_POPULATE at mmap
 *   3  MADV_HUGEPAGE, then MADV_POPULATE_WRITE (Linux 5.14+)
 *   4  MADV_POPULATE_WRITE alone
 *
 * Each run prints the wall time of mapping/populating, of touching, of a memset over the
 * whole (pages already present) and the process's system time. Used for docs/BENCHMARKS.md,
 * session 33:
 *
 *   gcc -O2 -o /tmp/bench_page_faults tools/bench_page_faults.c
 *   for m in 0 1 2 3 4; do /tmp/bench_page_faults $m; done
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static double wall(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double system_time(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_stime.tv_sec + u.ru_stime.tv_usec * 1e-6;
}

int main(int argc, char **argv) {
    if (argc != 2 || argv[1][0] < '0' || argv[1][0] > '4' || argv[1][1]) {
        fprintf(stderr, "usage: %s MODE (0-4, see the source)\n", argv[0]);
        return 2;
    }
    const size_t bytes = (size_t)350 << 20;
    const int mode = argv[1][0] - '0';
    const double t0 = wall(), s0 = system_time();
    int flags = MAP_PRIVATE | MAP_ANONYMOUS;
    if (mode == 2) flags |= MAP_POPULATE;
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    if (mode == 1 || mode == 3) madvise(p, bytes, MADV_HUGEPAGE);
    if ((mode == 3 || mode == 4) && madvise(p, bytes, MADV_POPULATE_WRITE) != 0)
        perror("MADV_POPULATE_WRITE");
    const double t1 = wall();
    for (size_t i = 0; i < bytes; i += 4096) p[i] = 1;
    const double t2 = wall();
    memset(p, 2, bytes);
    const double t3 = wall();
    printf("mode %d: map+populate %.3f s, touch %.3f s, memset %.3f s, system %.3f s\n", mode,
           t1 - t0, t2 - t1, t3 - t2, system_time() - s0);
    return 0;
}
