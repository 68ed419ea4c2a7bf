/*
 * edgeprune_ort_runner: a minimal on-device latency benchmark for ONNX Runtime (C API).
 *
 * Loads one model (.onnx or .ort), feeds it a fixed float32 input (pseudo-random with a fixed
 * seed, or read from a raw float32 file), runs warm-up inferences, then N timed inferences in one
 * process, timing each Run() with CLOCK_MONOTONIC.
 *
 * Output format (stdout, version 1; one record per line, fields separated by single spaces):
 *
 *   EDGEPRUNE_RUNNER 1
 *   ORT_VERSION <library version string> api=<requested OrtApi version>
 *   MODEL <path>
 *   THREADS <intra-op threads, 0 = ORT default>
 *   INPUT <name> shape=<d0>x<d1>x... dtype=float32 source=<random:SEED|file:PATH>
 *   WARMUP <count>
 *   INFER <index from 0> <milliseconds, 6 decimals>          (one line per timed run)
 *   SUMMARY runs=<N> mean_ms=<x> median_ms=<x> min_ms=<x> max_ms=<x>
 *   OUTPUT <name> shape=<d0>x... dtype=float32 sum=<%.9g> first=<v0>,<v1>,... (up to 8 values)
 *   END
 *
 * Names are printed as given by the model; names with spaces are not supported by the format.
 * Errors go to stderr as "error: <message>" with exit status 1 (2 for bad command-line usage).
 *
 * Options:
 *   --model PATH            model file (or the first positional argument)
 *   --runs N                timed inferences (default 1000)
 *   --warmup N              untimed inferences before timing (default 10)
 *   --threads N             intra-op threads (default 1; 0 = ONNX Runtime default)
 *   --input-shape 1,3,32,32 shape of the first input (replaces the model's shape; dynamic dims
 *                           of all inputs are otherwise set to 1)
 *   --input FILE            raw little-endian float32 data for the first input
 *   --seed N                seed of the pseudo-random input (default 42)
 *   --dump-input FILE       write the first input's raw float32 data to FILE
 *   --dump-output FILE      write the first output's raw float32 data (last inference) to FILE
 *   --no-spin               disable intra-op thread spinning
 *   --version               print the format and library versions and exit
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "onnxruntime_c_api.h"

#define FORMAT_VERSION 1
#define MAX_DIMS 16
/* Every OrtApi function used here exists since API version 4 (ONNX Runtime 1.4); the struct
 * only ever grows, so asking an older number from a newer library returns the same table. */
#define MIN_API_VERSION 4

static const OrtApi *g_ort = NULL;

static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

/* Aborts with a message that includes ORT's own text when status is non-NULL. */
static void check(OrtStatus *status, const char *what, const char *arg) {
    if (status == NULL) return;
    const char *msg = g_ort->GetErrorMessage(status);
    fprintf(stderr, "error: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", msg ? msg : "(no message)");
    g_ort->ReleaseStatus(status);
    exit(1);
}

static long parse_long(const char *opt, const char *s, long min) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min)
        die(2, "invalid value for %s: '%s' (expected an integer >= %ld)", opt, s, min);
    return v;
}

static size_t parse_shape(const char *s, int64_t *dims) {
    size_t n = 0;
    const char *p = s;
    while (*p) {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno != 0 || end == p || v <= 0 || n >= MAX_DIMS)
            die(2, "invalid --input-shape '%s' (expected positive integers separated by commas, e.g. 1,3,32,32)", s);
        dims[n++] = (int64_t)v;
        if (*end == ',') {
            p = end + 1;
            if (*p == '\0') die(2, "invalid --input-shape '%s' (trailing comma)", s);
        } else if (*end == '\0') {
            p = end;
        } else {
            die(2, "invalid --input-shape '%s' (expected positive integers separated by commas, e.g. 1,3,32,32)", s);
        }
    }
    if (n == 0) die(2, "invalid --input-shape '%s' (empty)", s);
    return n;
}

static void format_shape(const int64_t *dims, size_t n, char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = '\0';
    if (n == 0) {
        snprintf(buf, cap, "scalar");
        return;
    }
    for (size_t i = 0; i < n && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, i ? "x%" PRId64 : "%" PRId64, dims[i]);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* xorshift32 -> uniform floats in [-1, 1); deterministic across platforms. */
static void fill_random(float *data, size_t count, uint32_t seed) {
    uint32_t x = seed ? seed : 0x9E3779B9u;
    for (size_t i = 0; i < count; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data[i] = (float)((double)(x >> 8) / 8388608.0 - 1.0); /* 24 bits -> [0, 2) - 1 */
    }
}

static void read_raw(const char *path, float *data, size_t count) {
    FILE *f = fopen(path, "rb");
    if (!f) die(1, "cannot open input file %s: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) die(1, "cannot read input file %s: %s", path, strerror(errno));
    long size = ftell(f);
    rewind(f);
    if (size < 0 || (size_t)size != count * sizeof(float))
        die(1, "input file %s has %ld bytes, expected %zu (%zu float32 values for the input shape)", path, size,
            count * sizeof(float), count);
    if (fread(data, sizeof(float), count, f) != count) die(1, "cannot read input file %s", path);
    fclose(f);
}

static void write_raw(const char *path, const float *data, size_t count) {
    FILE *f = fopen(path, "wb");
    if (!f) die(1, "cannot write %s: %s", path, strerror(errno));
    if (fwrite(data, sizeof(float), count, f) != count || fclose(f) != 0)
        die(1, "cannot write %s: %s", path, strerror(errno));
}

static const OrtApi *get_api(int *version_out) {
    const OrtApiBase *base = OrtGetApiBase();
    if (!base) die(1, "OrtGetApiBase() returned NULL");
    for (int v = ORT_API_VERSION; v >= MIN_API_VERSION; v--) {
        const OrtApi *api = base->GetApi((uint32_t)v);
        if (api) {
            *version_out = v;
            return api;
        }
    }
    die(1, "ONNX Runtime %s supports none of the API versions %d..%d this runner was built for",
        base->GetVersionString(), MIN_API_VERSION, ORT_API_VERSION);
    return NULL;
}

static void usage(FILE *out) {
    fputs("usage: edgeprune_ort_runner [--model] MODEL [--runs N] [--warmup N] [--threads N]\n"
          "         [--input-shape D0,D1,...] [--input FILE] [--seed N] [--dump-input FILE]\n"
          "         [--dump-output FILE] [--no-spin] [--version]\n",
          out);
}

int main(int argc, char **argv) {
    const char *model = NULL, *input_file = NULL, *dump_input = NULL, *dump_output = NULL, *shape_arg = NULL;
    long runs = 1000, warmup = 10, threads = 1, seed = 42;
    int no_spin = 0, want_version = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define NEXT() (i + 1 < argc ? argv[++i] : (die(2, "option %s needs a value", a), (char *)NULL))
        if (!strcmp(a, "--model")) model = NEXT();
        else if (!strcmp(a, "--runs")) runs = parse_long(a, NEXT(), 1);
        else if (!strcmp(a, "--warmup")) warmup = parse_long(a, NEXT(), 0);
        else if (!strcmp(a, "--threads")) threads = parse_long(a, NEXT(), 0);
        else if (!strcmp(a, "--seed")) seed = parse_long(a, NEXT(), 0);
        else if (!strcmp(a, "--input-shape")) shape_arg = NEXT();
        else if (!strcmp(a, "--input")) input_file = NEXT();
        else if (!strcmp(a, "--dump-input")) dump_input = NEXT();
        else if (!strcmp(a, "--dump-output")) dump_output = NEXT();
        else if (!strcmp(a, "--no-spin")) no_spin = 1;
        else if (!strcmp(a, "--version")) want_version = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (a[0] == '-' && a[1] != '\0') {
            usage(stderr);
            die(2, "unknown option %s", a);
        } else if (!model) model = a;
        else die(2, "unexpected argument %s", a);
#undef NEXT
    }

    int api_version = 0;
    g_ort = get_api(&api_version);
    const char *ort_version = OrtGetApiBase()->GetVersionString();
    if (want_version) {
        printf("EDGEPRUNE_RUNNER %d\nORT_VERSION %s api=%d\n", FORMAT_VERSION, ort_version, api_version);
        return 0;
    }
    if (!model) {
        usage(stderr);
        die(2, "no model given");
    }
    FILE *probe = fopen(model, "rb");
    if (!probe) die(1, "cannot load model %s: %s", model, strerror(errno));
    fclose(probe);

    OrtEnv *env = NULL;
    check(g_ort->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "edgeprune", &env), "cannot create ONNX Runtime environment", NULL);
    OrtSessionOptions *opts = NULL;
    check(g_ort->CreateSessionOptions(&opts), "cannot create session options", NULL);
    check(g_ort->SetIntraOpNumThreads(opts, (int)threads), "cannot set intra-op threads", NULL);
    check(g_ort->SetInterOpNumThreads(opts, 1), "cannot set inter-op threads", NULL);
    if (no_spin) check(g_ort->AddSessionConfigEntry(opts, "session.intra_op.allow_spinning", "0"), "cannot disable spinning", NULL);

    OrtSession *session = NULL;
    check(g_ort->CreateSession(env, model, opts, &session), "cannot load model", model);

    OrtAllocator *alloc = NULL;
    check(g_ort->GetAllocatorWithDefaultOptions(&alloc), "cannot get allocator", NULL);
    OrtMemoryInfo *meminfo = NULL;
    check(g_ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &meminfo), "cannot create memory info", NULL);

    size_t n_in = 0, n_out = 0;
    check(g_ort->SessionGetInputCount(session, &n_in), "cannot count inputs", NULL);
    check(g_ort->SessionGetOutputCount(session, &n_out), "cannot count outputs", NULL);
    if (n_in == 0) die(1, "model %s has no inputs", model);
    if (n_out == 0) die(1, "model %s has no outputs", model);

    char **in_names = calloc(n_in, sizeof(char *));
    char **out_names = calloc(n_out, sizeof(char *));
    OrtValue **inputs = calloc(n_in, sizeof(OrtValue *));
    OrtValue **outputs = calloc(n_out, sizeof(OrtValue *));
    float **in_data = calloc(n_in, sizeof(float *));
    size_t *in_count = calloc(n_in, sizeof(size_t));
    if (!in_names || !out_names || !inputs || !outputs || !in_data || !in_count) die(1, "out of memory");

    printf("EDGEPRUNE_RUNNER %d\n", FORMAT_VERSION);
    printf("ORT_VERSION %s api=%d\n", ort_version, api_version);
    printf("MODEL %s\n", model);
    printf("THREADS %ld\n", threads);

    for (size_t i = 0; i < n_in; i++) {
        check(g_ort->SessionGetInputName(session, i, alloc, &in_names[i]), "cannot read input name", NULL);
        OrtTypeInfo *ti = NULL;
        check(g_ort->SessionGetInputTypeInfo(session, i, &ti), "cannot read input type", in_names[i]);
        enum ONNXType otype;
        check(g_ort->GetOnnxTypeFromTypeInfo(ti, &otype), "cannot read input type", in_names[i]);
        if (otype != ONNX_TYPE_TENSOR) die(1, "input %s is not a tensor; only float32 tensor inputs are supported", in_names[i]);
        const OrtTensorTypeAndShapeInfo *tsi = NULL;
        check(g_ort->CastTypeInfoToTensorInfo(ti, &tsi), "cannot read input tensor info", in_names[i]);
        ONNXTensorElementDataType et;
        check(g_ort->GetTensorElementType(tsi, &et), "cannot read input element type", in_names[i]);
        if (et != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
            die(1, "input %s has element type %d; only float32 inputs are supported", in_names[i], (int)et);
        size_t nd = 0;
        check(g_ort->GetDimensionsCount(tsi, &nd), "cannot read input rank", in_names[i]);
        if (nd > MAX_DIMS) die(1, "input %s has rank %zu (at most %d supported)", in_names[i], nd, MAX_DIMS);
        int64_t dims[MAX_DIMS];
        check(g_ort->GetDimensions(tsi, dims, nd), "cannot read input shape", in_names[i]);
        g_ort->ReleaseTypeInfo(ti);

        if (i == 0 && shape_arg) {
            int64_t user[MAX_DIMS];
            size_t un = parse_shape(shape_arg, user);
            if (nd != 0 && un != nd)
                die(2, "--input-shape %s has %zu dims but input %s has rank %zu", shape_arg, un, in_names[i], nd);
            for (size_t d = 0; d < un && nd != 0; d++)
                if (dims[d] > 0 && dims[d] != user[d])
                    die(2, "--input-shape %s conflicts with the fixed dim %zu (= %" PRId64 ") of input %s", shape_arg, d,
                        dims[d], in_names[i]);
            memcpy(dims, user, un * sizeof(int64_t));
            nd = un;
        }
        size_t count = 1;
        for (size_t d = 0; d < nd; d++) {
            if (dims[d] <= 0) dims[d] = 1; /* dynamic dim */
            count *= (size_t)dims[d];
        }
        in_count[i] = count;
        in_data[i] = malloc(count * sizeof(float) + 1);
        if (!in_data[i]) die(1, "out of memory for input %s (%zu values)", in_names[i], count);
        const char *source = "random";
        if (i == 0 && input_file) {
            read_raw(input_file, in_data[i], count);
            source = "file";
        } else {
            fill_random(in_data[i], count, (uint32_t)seed + (uint32_t)i * 7919u);
        }
        if (i == 0 && dump_input) write_raw(dump_input, in_data[i], count);
        check(g_ort->CreateTensorWithDataAsOrtValue(meminfo, in_data[i], count * sizeof(float), dims, nd,
                                                    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &inputs[i]),
              "cannot create input tensor", in_names[i]);
        char shape_buf[256];
        format_shape(dims, nd, shape_buf, sizeof shape_buf);
        if (!strcmp(source, "file"))
            printf("INPUT %s shape=%s dtype=float32 source=file:%s\n", in_names[i], shape_buf, input_file);
        else
            printf("INPUT %s shape=%s dtype=float32 source=random:%ld\n", in_names[i], shape_buf, seed + (long)i * 7919);
    }
    if (input_file && n_in > 1) fprintf(stderr, "warning: --input applies to the first input only; others are random\n");

    for (size_t i = 0; i < n_out; i++)
        check(g_ort->SessionGetOutputName(session, i, alloc, &out_names[i]), "cannot read output name", NULL);

    printf("WARMUP %ld\n", warmup);
    fflush(stdout);

    const char *const *cin = (const char *const *)in_names;
    const char *const *cout_names = (const char *const *)out_names;
    const OrtValue *const *cinputs = (const OrtValue *const *)inputs;

#define RELEASE_OUTPUTS()                                            \
    for (size_t o = 0; o < n_out; o++) {                             \
        if (outputs[o]) g_ort->ReleaseValue(outputs[o]);             \
        outputs[o] = NULL;                                           \
    }

    for (long w = 0; w < warmup; w++) {
        check(g_ort->Run(session, NULL, cin, cinputs, n_in, cout_names, n_out, outputs), "inference failed on model", model);
        RELEASE_OUTPUTS();
    }

    double *times = malloc((size_t)runs * sizeof(double));
    if (!times) die(1, "out of memory for %ld timings", runs);
    for (long r = 0; r < runs; r++) {
        if (r > 0) RELEASE_OUTPUTS();
        double t0 = now_ms();
        OrtStatus *st = g_ort->Run(session, NULL, cin, cinputs, n_in, cout_names, n_out, outputs);
        double t1 = now_ms();
        check(st, "inference failed on model", model);
        times[r] = t1 - t0;
    }

    double sum = 0, mn = times[0], mx = times[0];
    for (long r = 0; r < runs; r++) {
        printf("INFER %ld %.6f\n", r, times[r]);
        sum += times[r];
        if (times[r] < mn) mn = times[r];
        if (times[r] > mx) mx = times[r];
    }
    qsort(times, (size_t)runs, sizeof(double), cmp_double);
    double median = (runs % 2) ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]);
    printf("SUMMARY runs=%ld mean_ms=%.6f median_ms=%.6f min_ms=%.6f max_ms=%.6f\n", runs, sum / (double)runs, median,
           mn, mx);

    for (size_t o = 0; o < n_out; o++) {
        OrtTensorTypeAndShapeInfo *info = NULL;
        enum ONNXType otype = ONNX_TYPE_UNKNOWN;
        check(g_ort->GetValueType(outputs[o], &otype), "cannot read output type", out_names[o]);
        if (otype != ONNX_TYPE_TENSOR) {
            printf("OUTPUT %s type=non-tensor\n", out_names[o]);
            continue;
        }
        check(g_ort->GetTensorTypeAndShape(outputs[o], &info), "cannot read output shape", out_names[o]);
        ONNXTensorElementDataType et;
        size_t nd = 0, count = 0;
        int64_t dims[MAX_DIMS];
        check(g_ort->GetTensorElementType(info, &et), "cannot read output type", out_names[o]);
        check(g_ort->GetDimensionsCount(info, &nd), "cannot read output rank", out_names[o]);
        if (nd > MAX_DIMS) nd = MAX_DIMS;
        check(g_ort->GetDimensions(info, dims, nd), "cannot read output shape", out_names[o]);
        check(g_ort->GetTensorShapeElementCount(info, &count), "cannot read output size", out_names[o]);
        g_ort->ReleaseTensorTypeAndShapeInfo(info);
        char shape_buf[256];
        format_shape(dims, nd, shape_buf, sizeof shape_buf);
        if (et != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
            printf("OUTPUT %s shape=%s dtype=other:%d\n", out_names[o], shape_buf, (int)et);
            if (o == 0 && dump_output) die(1, "--dump-output: output %s is not float32", out_names[o]);
            continue;
        }
        float *data = NULL;
        check(g_ort->GetTensorMutableData(outputs[o], (void **)&data), "cannot read output data", out_names[o]);
        double s = 0;
        for (size_t k = 0; k < count; k++) s += data[k];
        printf("OUTPUT %s shape=%s dtype=float32 sum=%.9g first=", out_names[o], shape_buf, s);
        for (size_t k = 0; k < count && k < 8; k++) printf(k ? ",%.9g" : "%.9g", data[k]);
        printf("\n");
        if (o == 0 && dump_output) write_raw(dump_output, data, count);
    }
    printf("END\n");
    fflush(stdout);

    RELEASE_OUTPUTS();
    for (size_t i = 0; i < n_in; i++) {
        g_ort->ReleaseValue(inputs[i]);
        free(in_data[i]);
        check(g_ort->AllocatorFree(alloc, in_names[i]), "cannot free", NULL);
    }
    for (size_t i = 0; i < n_out; i++) check(g_ort->AllocatorFree(alloc, out_names[i]), "cannot free", NULL);
    free(times);
    free(in_names);
    free(out_names);
    free(inputs);
    free(outputs);
    free(in_data);
    free(in_count);
    g_ort->ReleaseMemoryInfo(meminfo);
    g_ort->ReleaseSession(session);
    g_ort->ReleaseSessionOptions(opts);
    g_ort->ReleaseEnv(env);
    return 0;
}
