/* Throughput of the AVX2 instructions the int8 and f32 kernels are built of, one core.
 *
 *   gcc -O2 tools/bench_avx2_ops.c -o /tmp/bench_avx2_ops && /tmp/bench_avx2_ops
 *
 * Each line runs one instruction (or one kernel step) on 12 independent registers for 2e8
 * iterations and prints nanoseconds per instruction (per step for the kernel steps). The
 * steps: `int8 exact step` is what int8-avx2 issues per 32 multiply-adds (vpsignb,
 * vpmaddubsw, vpmaddwd, vpaddd; its vpabsb, once per two steps, left out), `int8 7-bit step`
 * what a kernel on unsigned 7-bit codes would (no sign handling), `i16 step x2` two of
 * vpmaddwd + vpaddd (32 multiply-adds on i16 pairs). docs/BENCHMARKS.md (session 34) has
 * the figures on Zen 3.
 */
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define N 200000000L
#define TWELVE(ins) ins("%%ymm0") ins("%%ymm1") ins("%%ymm2") ins("%%ymm3") ins("%%ymm4") \
    ins("%%ymm5") ins("%%ymm6") ins("%%ymm7") ins("%%ymm8") ins("%%ymm9") ins("%%ymm10") ins("%%ymm11")
#define RUN(label, ins)                                                                        \
    do {                                                                                       \
        double t = now();                                                                      \
        __asm__ volatile("vpcmpeqb %%ymm15,%%ymm15,%%ymm15\n vpxor %%ymm13,%%ymm13,%%ymm13\n"  \
                         "vpxor %%ymm12,%%ymm12,%%ymm12\n mov %0, %%rcx\n 1:\n" TWELVE(ins)    \
                         "dec %%rcx\n jnz 1b\n"                                                \
                         :                                                                     \
                         : "r"(N)                                                              \
                         : "rcx", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",    \
                           "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", \
                           "xmm14", "xmm15");                                                  \
        printf("%-18s %.3f ns\n", label, (now() - t) / N * 1e9 / 12);                          \
    } while (0)

#define MADDUBS(r) "vpmaddubsw %%ymm15," r "," r "\n"
#define MADDWD(r) "vpmaddwd %%ymm15," r "," r "\n"
#define SIGNB(r) "vpsignb %%ymm15," r "," r "\n"
#define ABSB(r) "vpabsb %%ymm15," r "\n"
#define ADDD(r) "vpaddd %%ymm15," r "," r "\n"
#define FMA(r) "vfmadd231ps %%ymm15,%%ymm15," r "\n"
#define BCAST(r) "vpbroadcastd (%%rsp)," r "\n"
#define EXACT(r) "vpsignb %%ymm15,%%ymm13,%%ymm14\n vpmaddubsw %%ymm14,%%ymm13,%%ymm14\n" \
    "vpmaddwd %%ymm12,%%ymm14,%%ymm14\n vpaddd %%ymm14," r "," r "\n"
#define SEVEN(r) "vpmaddubsw %%ymm15,%%ymm13,%%ymm14\n vpmaddwd %%ymm12,%%ymm14,%%ymm14\n" \
    "vpaddd %%ymm14," r "," r "\n"
#define I16(r) "vpmaddwd %%ymm15,%%ymm13,%%ymm14\n vpaddd %%ymm14," r "," r "\n" \
    "vpmaddwd %%ymm15,%%ymm12,%%ymm14\n vpaddd %%ymm14," r "," r "\n"

int main(void) {
    RUN("vpmaddubsw", MADDUBS);
    RUN("vpmaddwd", MADDWD);
    RUN("vpsignb", SIGNB);
    RUN("vpabsb", ABSB);
    RUN("vpaddd", ADDD);
    RUN("vfmadd231ps", FMA);
    RUN("vpbroadcastd mem", BCAST);
    RUN("int8 exact step", EXACT);
    RUN("int8 7-bit step", SEVEN);
    RUN("i16 step x2", I16);
    return 0;
}
