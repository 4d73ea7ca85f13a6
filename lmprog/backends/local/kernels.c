/* lp.Local's AVX2 kernels for decode steps on a CPU (built and loaded by native.py).

   A decode step multiplies a few activation rows by every weight once, so it costs what its
   weight bytes cost to read. These two products read fewer bytes than torch's kernels can:

   - lmk_gemv_i8: float32 rows times int8 weights with a float32 scale (and optionally an
     offset) per group of G columns. GGUF's Q8_0, Q5_0, Q4_K and Q6_K blocks are exactly such
     groups, so a layer runs on the GGUF's own values at ~1.1 bytes a weight (float16: 2).
   - lmk_scan_q4: the output head's first pass, 4-bit weights (32 bytes and a scale per 64)
     times int8-quantized rows. Only its ranking is used: the best candidates are rescored
     exactly afterwards (head.py).

   Each computes output columns [n0, n1); the *_threads forms split the columns across a pool
   of threads of their own (below), as torch splits its products across its threads. */

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_ROWS 4 /* activation rows computed per pass over the weights */

static inline float sum8(__m256 v) {
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_hadd_ps(half, half);
    half = _mm_hadd_ps(half, half);
    return _mm_cvtss_f32(half);
}

static inline __m256 int8x8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* rows of x (stride k) times weight rows [n0, n1): out[r * n + j]. rows and g are constants
   at each call site, so the compiler unrolls the group and keeps the sums in registers. */
static inline void gemv_i8_rows(const int8_t *w, const float *scale, const float *offset,
                                const float *xsum, const float *x, float *out, const int rows,
                                const int g, int64_t n, int64_t k, int64_t n0, int64_t n1) {
    int64_t groups = k / g;
    for (int64_t j = n0; j < n1; j++) {
        const int8_t *wj = w + j * k;
        const float *sj = scale + j * groups;
        __m256 total[MAX_ROWS];
        for (int r = 0; r < rows; r++) total[r] = _mm256_setzero_ps();
        for (int64_t group = 0; group < groups; group++) {
            const int8_t *wg = wj + group * g;
            const float *xg = x + group * g;
            __m256 acc[MAX_ROWS];
            __m256 first = int8x8(wg);
            for (int r = 0; r < rows; r++) acc[r] = _mm256_mul_ps(first, _mm256_loadu_ps(xg + r * k));
            for (int c = 8; c < g; c += 8) {
                __m256 wc = int8x8(wg + c);
                for (int r = 0; r < rows; r++)
                    acc[r] = _mm256_fmadd_ps(wc, _mm256_loadu_ps(xg + r * k + c), acc[r]);
            }
            __m256 s = _mm256_broadcast_ss(sj + group);
            for (int r = 0; r < rows; r++) total[r] = _mm256_fmadd_ps(acc[r], s, total[r]);
        }
        for (int r = 0; r < rows; r++) {
            float value = sum8(total[r]);
            if (offset != NULL) {
                const float *oj = offset + j * groups, *xr = xsum + r * groups;
                for (int64_t group = 0; group < groups; group++) value += oj[group] * xr[group];
            }
            out[r * n + j] = value;
        }
    }
}

#define GEMV_CASE(ROWS, G)                                                                    \
    gemv_i8_rows(w, scale, offset, xs, x + r0 * k, out + r0 * n, ROWS, G, n, k, n0, n1)

/* out[r, j] = sum_c x[r, c] * (scale[j, c / g] * w[j, c] + offset[j, c / g]) for r < rows,
   n0 <= j < n1. offset may be NULL (symmetric groups). g is 16 or 32 and divides k. */
void lmk_gemv_i8(const int8_t *w, const float *scale, const float *offset, const float *x,
                 float *out, int64_t rows, int64_t n, int64_t k, int64_t g, int64_t n0,
                 int64_t n1) {
    int64_t groups = k / g;
    float *xsum = NULL;
    if (offset != NULL) {
        xsum = malloc(sizeof(float) * rows * groups);
        for (int64_t i = 0; i < rows * groups; i++) {
            float s = 0;
            for (int64_t c = 0; c < g; c++) s += x[i * g + c];
            xsum[i] = s;
        }
    }
    for (int64_t r0 = 0; r0 < rows; r0 += MAX_ROWS) {
        int block = rows - r0 < MAX_ROWS ? (int)(rows - r0) : MAX_ROWS;
        const float *xs = xsum == NULL ? NULL : xsum + r0 * groups;
        if (g == 16) {
            switch (block) {
            case 1: GEMV_CASE(1, 16); break;
            case 2: GEMV_CASE(2, 16); break;
            case 3: GEMV_CASE(3, 16); break;
            default: GEMV_CASE(4, 16); break;
            }
        } else {
            switch (block) {
            case 1: GEMV_CASE(1, 32); break;
            case 2: GEMV_CASE(2, 32); break;
            case 3: GEMV_CASE(3, 32); break;
            default: GEMV_CASE(4, 32); break;
            }
        }
    }
    free(xsum);
}

/* rows of quantized x times weight rows [n0, n1), for lmk_scan_q4. */
static inline void scan_q4_rows(const uint8_t *w, const float *scale, const int8_t *xq,
                                const float *step, const int32_t *xsum, float *out, int rows,
                                int64_t n, int64_t k, int64_t n0, int64_t n1) {
    int64_t groups = k / 64;
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t j = n0; j < n1; j++) {
        const uint8_t *wj = w + j * (k / 2);
        const float *sj = scale + j * groups;
        __m256 total[MAX_ROWS];
        float correction[MAX_ROWS];
        for (int r = 0; r < rows; r++) total[r] = _mm256_setzero_ps(), correction[r] = 0;
        for (int64_t group = 0; group < groups; group++) {
            __m256i bytes = _mm256_loadu_si256((const __m256i *)(wj + group * 32));
            __m256i low = _mm256_and_si256(bytes, nibble);
            __m256i high = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble);
            __m256 s = _mm256_broadcast_ss(sj + group);
            for (int r = 0; r < rows; r++) {
                const int8_t *xg = xq + r * k + group * 64;
                /* u * x pairs are at most 2 * 15 * 127 in magnitude: two of them fit int16 */
                __m256i pairs = _mm256_add_epi16(
                    _mm256_maddubs_epi16(low, _mm256_loadu_si256((const __m256i *)xg)),
                    _mm256_maddubs_epi16(high, _mm256_loadu_si256((const __m256i *)(xg + 32))));
                __m256i sums = _mm256_madd_epi16(pairs, ones);
                total[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), s, total[r]);
                correction[r] += sj[group] * (float)xsum[r * groups + group];
            }
        }
        for (int r = 0; r < rows; r++)
            out[r * n + j] = (sum8(total[r]) - 8.0f * correction[r]) * step[r];
    }
}

/* Approximate out[r, j] = x[r] . w[j], for the head's first pass. w: per row k / 2 bytes; per
   group of 64 columns 32 bytes whose byte i holds u[i] (low nibble) and u[i + 32] (high), the
   weight being scale[j, group] * (u - 8). Each row of x is quantized here to int8 with one
   scale (the pass only ranks; its best candidates are rescored exactly). */
void lmk_scan_q4(const uint8_t *w, const float *scale, const float *x, float *out, int64_t rows,
                 int64_t n, int64_t k, int64_t n0, int64_t n1) {
    int64_t groups = k / 64;
    int8_t *xq = malloc(rows * k);
    float *step = malloc(sizeof(float) * rows);
    int32_t *xsum = malloc(sizeof(int32_t) * rows * groups); /* what the "- 8"s take away */
    for (int64_t r = 0; r < rows; r++) {
        const float *v = x + r * k;
        float most = 0;
        for (int64_t c = 0; c < k; c++) most = fmaxf(most, fabsf(v[c]));
        float inverse = most > 0 ? 127 / most : 0;
        step[r] = most / 127;
        for (int64_t group = 0; group < groups; group++) {
            int32_t sum = 0;
            for (int64_t c = group * 64; c < (group + 1) * 64; c++) {
                int q = (int)lrintf(v[c] * inverse);
                xq[r * k + c] = (int8_t)q;
                sum += q;
            }
            xsum[r * groups + group] = sum;
        }
    }
    for (int64_t r0 = 0; r0 < rows; r0 += MAX_ROWS) {
        int block = rows - r0 < MAX_ROWS ? (int)(rows - r0) : MAX_ROWS;
        const int8_t *xb = xq + r0 * k;
        const int32_t *sb = xsum + r0 * groups;
        float *ob = out + r0 * n;
        switch (block) {
        case 1: scan_q4_rows(w, scale, xb, step + r0, sb, ob, 1, n, k, n0, n1); break;
        case 2: scan_q4_rows(w, scale, xb, step + r0, sb, ob, 2, n, k, n0, n1); break;
        case 3: scan_q4_rows(w, scale, xb, step + r0, sb, ob, 3, n, k, n0, n1); break;
        default: scan_q4_rows(w, scale, xb, step + r0, sb, ob, 4, n, k, n0, n1); break;
        }
    }
    free(xq);
    free(step);
    free(xsum);
}

/* ----- a pool of threads for splitting one product ----------------------------------------

   A decode step makes ~80 products of 0.05-0.5 ms each, so handing out work must cost
   microseconds: workers spin on a generation counter after each task (SPINS pauses, ~1 ms),
   then sleep on a condition variable. One caller at a time uses the pool (callers queue on
   `dispatching`); a forked child starts a pool of its own. */

#define MAX_THREADS 64
#define SPINS 30000
#define MIN_PART 65536 /* weights a thread is worth handing at least */

typedef void (*part_fn)(const void *task, int64_t start, int64_t stop);

static pthread_mutex_t dispatching = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t sleeping = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static atomic_long generation;
static atomic_int finished;
static part_fn pool_fn;
static const void *pool_task;
static int64_t pool_n, pool_parts;
static int pool_workers;
static pid_t pool_pid;

typedef struct {
    int part;
    long seen;
} worker_start;

static void run_part(int part) {
    if (part >= pool_parts) return;
    int64_t start = pool_n * part / pool_parts, stop = pool_n * (part + 1) / pool_parts;
    if (start < stop) pool_fn(pool_task, start, stop);
}

static void *worker(void *arg) {
    worker_start begin = *(worker_start *)arg;
    free(arg);
    long seen = begin.seen;
    for (;;) {
        long now;
        int spins = 0;
        while ((now = atomic_load_explicit(&generation, memory_order_acquire)) == seen) {
            if (++spins < SPINS) {
                _mm_pause();
                continue;
            }
            pthread_mutex_lock(&sleeping);
            while ((now = atomic_load_explicit(&generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&wake, &sleeping);
            pthread_mutex_unlock(&sleeping);
            break;
        }
        seen = now;
        run_part(begin.part);
        atomic_fetch_add_explicit(&finished, 1, memory_order_release);
    }
    return NULL;
}

/* fn(task, start, stop) over [0, n) in `threads` parts, this thread doing the first. */
static void parallel(part_fn fn, const void *task, int64_t n, int64_t threads, int64_t work) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > work / MIN_PART) threads = work / MIN_PART;
    if (threads > n) threads = n;
    if (threads <= 1) {
        fn(task, 0, n);
        return;
    }
    pthread_mutex_lock(&dispatching);
    if (pool_pid != getpid()) { /* a forked child: its parent's workers are not here */
        pool_pid = getpid();
        pool_workers = 0;
    }
    long current = atomic_load(&generation);
    while (pool_workers < threads - 1) {
        worker_start *begin = malloc(sizeof(worker_start));
        pthread_t thread;
        begin->part = pool_workers + 1;
        begin->seen = current;
        if (pthread_create(&thread, NULL, worker, begin) != 0) {
            free(begin);
            break;
        }
        pthread_detach(thread);
        pool_workers++;
    }
    pool_fn = fn;
    pool_task = task;
    pool_n = n;
    pool_parts = threads < pool_workers + 1 ? threads : pool_workers + 1;
    atomic_store_explicit(&finished, 0, memory_order_relaxed);
    pthread_mutex_lock(&sleeping);
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&sleeping);
    run_part(0);
    while (atomic_load_explicit(&finished, memory_order_acquire) < pool_workers) _mm_pause();
    pthread_mutex_unlock(&dispatching);
}

typedef struct {
    const int8_t *w;
    const float *scale, *offset, *x;
    float *out;
    int64_t rows, n, k, g;
} gemv_task;

static void gemv_part(const void *task, int64_t start, int64_t stop) {
    const gemv_task *t = task;
    lmk_gemv_i8(t->w, t->scale, t->offset, t->x, t->out, t->rows, t->n, t->k, t->g, start, stop);
}

/* lmk_gemv_i8 over all n columns, on up to `threads` threads. */
void lmk_gemv_i8_threads(const int8_t *w, const float *scale, const float *offset,
                         const float *x, float *out, int64_t rows, int64_t n, int64_t k,
                         int64_t g, int64_t threads) {
    gemv_task task = {w, scale, offset, x, out, rows, n, k, g};
    parallel(gemv_part, &task, n, threads, n * k);
}

typedef struct {
    const uint8_t *w;
    const float *scale, *x;
    float *out;
    int64_t rows, n, k;
} scan_task;

static void scan_part(const void *task, int64_t start, int64_t stop) {
    const scan_task *t = task;
    lmk_scan_q4(t->w, t->scale, t->x, t->out, t->rows, t->n, t->k, start, stop);
}

/* lmk_scan_q4 over all n rows of the head, on up to `threads` threads. */
void lmk_scan_q4_threads(const uint8_t *w, const float *scale, const float *x, float *out,
                         int64_t rows, int64_t n, int64_t k, int64_t threads) {
    scan_task task = {w, scale, x, out, rows, n, k};
    parallel(scan_part, &task, n, threads, n * k);
}

/* ----- a Gemma 3 decoder layer's per-token work, for decode steps ----------------------------

   The lean pass (gemma3.py) spends more of a one-row step in ~30 small torch operations per
   layer (norms, rotary, residuals, the activation) than in its weights. These two calls do
   that work for up to MAX_ROWS rows in C; the KV cache append and the attention stay in
   torch, between them. The arithmetic is the pass's own, operation for operation. */

typedef struct {
    const int8_t *w;
    const float *scale, *offset;
    int64_t n, k, g;
} lmk_matrix;

typedef struct {
    lmk_matrix qkv, o, gate_up, down;
    const float *input_norm, *qk_norm, *post_attention_norm, *pre_mlp_norm, *post_mlp_norm;
    int64_t hidden, heads, kv_heads, dim;
    float eps;
} lmk_layer;

static void matrix_times(const lmk_matrix *m, const float *x, float *out, int64_t rows,
                         int64_t threads) {
    lmk_gemv_i8_threads(m->w, m->scale, m->offset, x, out, rows, m->n, m->k, m->g, threads);
}

/* out = x / sqrt(mean(x^2) + eps) * weight (weight NULL: 1), one vector of `size` */
static void rms_norm(const float *x, const float *weight, float *out, int64_t size, float eps) {
    float squares = 0;
    for (int64_t i = 0; i < size; i++) squares += x[i] * x[i];
    float inverse = 1.0f / sqrtf(squares / (float)size + eps);
    for (int64_t i = 0; i < size; i++)
        out[i] = weight == NULL ? x[i] * inverse : x[i] * inverse * weight[i];
}

/* q, k and v for `rows` tokens: out[rows, heads + 2 * kv_heads, dim], q and k normalised and
   rotated by cos/sin[rows, dim]. */
void lmk_attention_in(const lmk_layer *layer, const float *hidden, const float *cos,
                      const float *sin, float *out, int64_t rows, int64_t threads) {
    int64_t size = layer->hidden, dim = layer->dim, half = dim / 2;
    int64_t rotated = layer->heads + layer->kv_heads, width = layer->qkv.n;
    float *x = malloc(sizeof(float) * (rows * size + dim));
    float *normed = x + rows * size;
    for (int64_t r = 0; r < rows; r++)
        rms_norm(hidden + r * size, layer->input_norm, x + r * size, size, layer->eps);
    matrix_times(&layer->qkv, x, out, rows, threads);
    for (int64_t r = 0; r < rows; r++) {
        const float *c = cos + r * dim, *s = sin + r * dim;
        for (int64_t h = 0; h < rotated; h++) {
            float *v = out + r * width + h * dim;
            rms_norm(v, NULL, normed, dim, layer->eps);
            const float *w = layer->qk_norm + h * dim;
            for (int64_t i = 0; i < dim; i++) normed[i] = normed[i] * w[i];
            for (int64_t i = 0; i < half; i++) {
                v[i] = normed[i] * c[i] + -normed[i + half] * s[i];
                v[i + half] = normed[i + half] * c[i + half] + normed[i] * s[i + half];
            }
        }
    }
    free(x);
}

static float gelu_tanh(float x) {
    const float root = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(root * (x + 0.044715f * x * x * x)));
}

/* hidden[rows, size] += the attention's output projection and the MLP, each normalised, as
   the layer adds them; attended: [rows, heads * dim]. */
void lmk_attention_out_mlp(const lmk_layer *layer, float *hidden, const float *attended,
                           int64_t rows, int64_t threads) {
    int64_t size = layer->hidden, inner = layer->gate_up.n / 2;
    float *projected = malloc(sizeof(float) * rows * (2 * size + 3 * inner));
    float *normed = projected + rows * size, *gate_up = normed + rows * size;
    float *product = gate_up + rows * 2 * inner;
    matrix_times(&layer->o, attended, projected, rows, threads);
    for (int64_t r = 0; r < rows; r++) {
        float *h = hidden + r * size;
        rms_norm(projected + r * size, layer->post_attention_norm, normed + r * size, size,
                 layer->eps);
        for (int64_t i = 0; i < size; i++) h[i] = h[i] + normed[r * size + i];
        rms_norm(h, layer->pre_mlp_norm, normed + r * size, size, layer->eps);
    }
    matrix_times(&layer->gate_up, normed, gate_up, rows, threads);
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = gate_up + r * 2 * inner, *up = gate + inner;
        for (int64_t i = 0; i < inner; i++) product[r * inner + i] = gelu_tanh(gate[i]) * up[i];
    }
    matrix_times(&layer->down, product, projected, rows, threads);
    for (int64_t r = 0; r < rows; r++) {
        float *h = hidden + r * size;
        rms_norm(projected + r * size, layer->post_mlp_norm, normed + r * size, size, layer->eps);
        for (int64_t i = 0; i < size; i++) h[i] = h[i] + normed[r * size + i];
    }
    free(projected);
}
