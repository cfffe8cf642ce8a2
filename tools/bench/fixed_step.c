/* TinyFleet fixed-point SGD step in C: the -O2 baseline the MicroPython kernels are timed
 * against.  It follows the SPEC's "Fixed-point MLP" contract bit-exactly (Q12 activations
 * and deltas, Q24 int32 master weights, wq = (m + 2048) >> 12, per-term >> 7, clipped ReLU,
 * integer softmax, round-to-nearest shift updates), so its weights after N steps equal the
 * integer reference's.  Like the device kernels, it skips rows whose delta is 0 (their
 * contribution is exactly 0), so C and MicroPython time the same algorithm.  Every
 * intermediate stays below 2**29, so int32_t is enough.
 *
 * Usage: fixed_step STEPS REPEATS [--dump] < input
 *   input, whitespace-separated integers:
 *     L  n_0 .. n_{L-1}  classify  lr_shift  n_samples
 *     the master weights (SPEC layout)
 *     per sample: n_0 inputs (Q12), then a label (classify) or n_{L-1} targets (Q12)
 *   Sample k of a run is sample k % n_samples.
 *   --dump: run STEPS steps once and print {"weights": [...]} (the correctness check).
 *   else:   run REPEATS timed passes of STEPS steps; print {"us_per_step": median CPU
 *           time, "wall_us_per_step": mean wall time, "repeats_us": [CPU time of each],
 *           "steps": STEPS, "checksum": ...}.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXL 8
#define MAXN 128
#define A_MAX 16383
#define D_MAX 16383
#define M_MAX 134217727

static int L, classify, lr_shift, n_samples, n_weights;
static int sizes[MAXL], offs[MAXL];
static int32_t *W, *xs, *ys;
static int32_t act[MAXL][MAXN];      /* act[0] = input, act[l + 1] = output of layer l */
static int32_t dbuf[2][MAXN];
static int32_t EXP2[256];

static inline int32_t clamp(int32_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

static void step(const int32_t *x, const int32_t *y) {
    int n0 = sizes[0];
    for (int i = 0; i < n0; i++) act[0][i] = clamp(x[i], -A_MAX, A_MAX);
    for (int l = 0; l < L - 1; l++) {                       /* forward */
        int n_in = sizes[l], n_out = sizes[l + 1], hidden = l < L - 2;
        const int32_t *a = act[l];
        int32_t *o = act[l + 1];
        for (int j = 0; j < n_out; j++) {
            const int32_t *row = W + offs[l] + j * (n_in + 1);
            int32_t acc = 0;
            for (int i = 0; i < n_in; i++) acc += (((row[i] + 2048) >> 12) * a[i]) >> 7;
            acc += ((row[n_in] + 2048) >> 12) << 5;
            int32_t z = acc >> 5;
            o[j] = hidden ? clamp(z, 0, A_MAX) : z;
        }
    }
    int nl = sizes[L - 1];
    const int32_t *z = act[L - 1];
    int32_t *d = dbuf[0], *dn = dbuf[1];
    if (!classify) {                                         /* MSE delta */
        for (int j = 0; j < nl; j++) d[j] = clamp(z[j] - y[j], -D_MAX, D_MAX);
    } else {                                                 /* integer softmax CE */
        int32_t zmax = z[0], S = 0;
        for (int j = 1; j < nl; j++) if (z[j] > zmax) zmax = z[j];
        for (int j = 0; j < nl; j++) {
            int32_t t = z[j] - zmax;
            if (t < -32768) t = -32768;
            int32_t u = (t * 5909) >> 12;
            int32_t n = (-u) >> 12, f = (-u) & 4095;
            int32_t e = n < 15 ? EXP2[f >> 4] >> n : 0;
            d[j] = e;
            S += e;
        }
        for (int j = 0; j < nl; j++) d[j] = (d[j] << 12) / S - (j == y[0] ? 4096 : 0);
    }
    int32_t R = 1 << (lr_shift - 1);
    for (int l = L - 2; l >= 0; l--) {                      /* backward */
        int n_in = sizes[l], n_out = sizes[l + 1];
        int32_t *w = W + offs[l];
        const int32_t *a = act[l];
        if (l > 0) {                     /* delta below, from the not yet updated weights */
            for (int i = 0; i < n_in; i++) dn[i] = 0;
            for (int j = 0; j < n_out; j++) {          /* row-wise: contiguous weights */
                const int32_t *row = w + j * (n_in + 1);
                int32_t dj = d[j];
                if (!dj) continue;                     /* adds exactly 0 */
                for (int i = 0; i < n_in; i++) dn[i] += (((row[i] + 2048) >> 12) * dj) >> 7;
            }
            for (int i = 0; i < n_in; i++) {
                int32_t ai = a[i];
                dn[i] = (ai > 0 && ai < A_MAX) ? clamp(dn[i] >> 5, -D_MAX, D_MAX) : 0;
            }
        }
        for (int j = 0; j < n_out; j++) {
            int32_t *row = w + j * (n_in + 1), dj = d[j];
            if (!dj) continue;                         /* (0 + R) >> s == 0: no change */
            for (int i = 0; i < n_in; i++)
                row[i] = clamp(row[i] - ((dj * a[i] + R) >> lr_shift), -M_MAX, M_MAX);
            row[n_in] = clamp(row[n_in] - ((dj * 4096 + R) >> lr_shift), -M_MAX, M_MAX);
        }
        int32_t *t = d; d = dn; dn = t;
    }
}

static int read_int(int32_t *out) {
    long v;
    if (scanf("%ld", &v) != 1) return 0;
    *out = (int32_t)v;
    return 1;
}

static void die(const char *msg) {
    fprintf(stderr, "fixed_step: %s\n", msg);
    exit(2);
}

static double now_us(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 3) die("usage: fixed_step STEPS REPEATS [--dump] < input");
    long steps = atol(argv[1]), repeats = atol(argv[2]);
    int dump = argc > 3 && strcmp(argv[3], "--dump") == 0;
    int32_t v;
    if (!read_int(&v) || v < 2 || v > MAXL) die("bad layer count");
    L = v;
    for (int l = 0; l < L; l++) {
        if (!read_int(&v) || v < 1 || v > MAXN) die("bad layer size");
        sizes[l] = v;
    }
    if (!read_int(&v)) die("missing classify");
    classify = v;
    if (!read_int(&v) || v < 1 || v > 20) die("bad lr_shift");
    lr_shift = v;
    if (!read_int(&v) || v < 1) die("bad sample count");
    n_samples = v;
    n_weights = 0;
    for (int l = 0; l < L - 1; l++) {
        offs[l] = n_weights;
        n_weights += sizes[l + 1] * (sizes[l] + 1);
    }
    int ny = classify ? 1 : sizes[L - 1];
    W = malloc(sizeof(int32_t) * n_weights);
    xs = malloc(sizeof(int32_t) * n_samples * sizes[0]);
    ys = malloc(sizeof(int32_t) * n_samples * ny);
    for (int k = 0; k < n_weights; k++) if (!read_int(&W[k])) die("truncated weights");
    for (int s = 0; s < n_samples; s++) {
        for (int i = 0; i < sizes[0]; i++) if (!read_int(&xs[s * sizes[0] + i])) die("truncated x");
        for (int i = 0; i < ny; i++) if (!read_int(&ys[s * ny + i])) die("truncated y");
    }
    for (int k = 0; k < 256; k++) EXP2[k] = (int32_t)lround(16384.0 * exp2(-k / 256.0));

    if (dump) {
        for (long k = 0; k < steps; k++) {
            int s = (int)(k % n_samples);
            step(xs + s * sizes[0], ys + s * ny);
        }
        printf("{\"weights\": [");
        for (int k = 0; k < n_weights; k++) printf(k ? ", %d" : "%d", W[k]);
        printf("]}\n");
        return 0;
    }
    if (repeats < 1 || repeats > 1000 || steps < 1) die("bad STEPS or REPEATS");
    double *us = malloc(sizeof(double) * repeats), *sorted = malloc(sizeof(double) * repeats);
    double wall = 0;
    for (long r = 0; r < repeats; r++) {
        double c0 = now_us(CLOCK_PROCESS_CPUTIME_ID), t0 = now_us(CLOCK_MONOTONIC);
        for (long k = 0; k < steps; k++) {
            int s = (int)(k % n_samples);
            step(xs + s * sizes[0], ys + s * ny);
        }
        us[r] = (now_us(CLOCK_PROCESS_CPUTIME_ID) - c0) / steps;
        wall += (now_us(CLOCK_MONOTONIC) - t0) / steps / repeats;
    }
    memcpy(sorted, us, sizeof(double) * repeats);
    qsort(sorted, repeats, sizeof(double), cmp_double);
    uint64_t checksum = 0;   /* keeps the work observable */
    for (int k = 0; k < n_weights; k++) checksum = checksum * 31 + (uint32_t)W[k];
    printf("{\"us_per_step\": %.4f, \"wall_us_per_step\": %.4f, \"steps\": %ld, "
           "\"repeats_us\": [", sorted[repeats / 2], wall, steps);
    for (long r = 0; r < repeats; r++) printf(r ? ", %.4f" : "%.4f", us[r]);
    printf("], \"checksum\": %llu}\n", (unsigned long long)checksum);
    return 0;
}
