/*
 * STAND-IN for NVIDIA's CUDA runtime, libcudart.so.12, for tests on machines without a GPU.
 *
 * This is NOT CUDA. It exports the CUDA runtime functions that agent/stage-sets/cuda.stages probes
 * (and a few a test server needs around them), with the real names and C signatures, so that
 * inferscope's `cuda` profile can be exercised end to end: a test server dlopen's this library
 * after the agent attached, calls these functions, and the uprobes fire on them.
 *
 * "Device" memory is host memory; copies are real memcpy's. Work is scripted by environment
 * variables, read on every call:
 *
 *   INFERSCOPE_CUDART_STANDIN_SYNC_US    cudaDeviceSynchronize / cudaStreamSynchronize wait this
 *                                        many microseconds (default 300) ...
 *   INFERSCOPE_CUDART_STANDIN_KERNEL_US  ... plus this many per kernel launched since the last
 *                                        synchronisation (default 0: launches only enqueue)
 *   INFERSCOPE_CUDART_STANDIN_SPIN=1     wait by spinning on the CPU (as CUDA's default spin
 *                                        scheduling does) instead of sleeping
 *   INFERSCOPE_CUDART_STANDIN_DEVICES    what cudaGetDeviceCount reports (default 1)
 *
 * cudaMemcpy synchronises like the real one: it waits for the launched kernels' time first.
 * Every exported function is a separate, non-inlined symbol that calls no other exported one,
 * so each probe fires only for its own calls.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default"), noinline))

/* ---- the subset of the CUDA runtime API types these signatures need ---- */
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidDeviceFunction = 98,
} cudaError_t;

typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
} cudaMemcpyKind;

typedef struct CUstream_st *cudaStream_t;

typedef struct dim3 {
    unsigned int x, y, z;
} dim3;

/* A stream object: only its identity matters here. */
struct CUstream_st {
    unsigned long long launches;
};

/* ---- scripted timing ---- */
static unsigned long long g_pending_launches; /* launched since the last synchronisation */
static unsigned long long g_total_launches;
static int g_device;
static cudaError_t g_last_error = cudaSuccess;

static long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    return strtol(v, NULL, 0);
}

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Waits `us` microseconds: sleeps, or spins when INFERSCOPE_CUDART_STANDIN_SPIN=1. */
static void wait_us(long us) {
    if (us <= 0) return;
    uint64_t end = mono_ns() + (uint64_t)us * 1000ULL;
    if (env_long("INFERSCOPE_CUDART_STANDIN_SPIN", 0)) {
        volatile uint64_t spins = 0;
        while (mono_ns() < end) spins++;
        return;
    }
    struct timespec ts = {(time_t)(end / 1000000000ULL), (long)(end % 1000000000ULL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {
    }
}

/* The time the "GPU" still needs for the kernels launched since the last synchronisation. */
static long drain_pending_us(void) {
    long per_kernel = env_long("INFERSCOPE_CUDART_STANDIN_KERNEL_US", 0);
    unsigned long long n = __atomic_exchange_n(&g_pending_launches, 0, __ATOMIC_RELAXED);
    return per_kernel > 0 ? (long)n * per_kernel : 0;
}

static cudaError_t fail(cudaError_t e) {
    g_last_error = e;
    return e;
}

/* ---- the functions agent/stage-sets/cuda.stages probes ---- */

EXPORT cudaError_t cudaLaunchKernel(const void *func, dim3 gridDim, dim3 blockDim, void **args,
                                    size_t sharedMem, cudaStream_t stream) {
    (void)args;
    (void)sharedMem;
    if (!func) return fail(cudaErrorInvalidDeviceFunction);
    if (gridDim.x == 0 || gridDim.y == 0 || gridDim.z == 0 || blockDim.x == 0 || blockDim.y == 0 ||
        blockDim.z == 0)
        return fail(cudaErrorInvalidValue);
    __atomic_add_fetch(&g_pending_launches, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&g_total_launches, 1, __ATOMIC_RELAXED);
    if (stream) __atomic_add_fetch(&stream->launches, 1, __ATOMIC_RELAXED);
    return cudaSuccess;
}

EXPORT cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, cudaMemcpyKind kind) {
    if ((unsigned)kind > cudaMemcpyDefault) return fail(cudaErrorInvalidValue);
    if (count && (!dst || !src)) return fail(cudaErrorInvalidValue);
    wait_us(drain_pending_us()); /* a synchronous copy waits for the work before it */
    if (count) memmove(dst, src, count);
    return cudaSuccess;
}

EXPORT cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, cudaMemcpyKind kind,
                                   cudaStream_t stream) {
    if ((unsigned)kind > cudaMemcpyDefault) return fail(cudaErrorInvalidValue);
    if (count && (!dst || !src)) return fail(cudaErrorInvalidValue);
    if (count) memmove(dst, src, count); /* "enqueued" and done at once */
    (void)stream;
    return cudaSuccess;
}

EXPORT cudaError_t cudaDeviceSynchronize(void) {
    long us = env_long("INFERSCOPE_CUDART_STANDIN_SYNC_US", 300) + drain_pending_us();
    wait_us(us);
    return cudaSuccess;
}

EXPORT cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    long us = env_long("INFERSCOPE_CUDART_STANDIN_SYNC_US", 300) + drain_pending_us();
    if (stream) __atomic_store_n(&stream->launches, 0, __ATOMIC_RELAXED);
    wait_us(us);
    return cudaSuccess;
}

EXPORT cudaError_t cudaMalloc(void **devPtr, size_t size) {
    if (!devPtr) return fail(cudaErrorInvalidValue);
    void *p = malloc(size ? size : 1);
    if (!p) {
        *devPtr = NULL;
        return fail(cudaErrorMemoryAllocation);
    }
    memset(p, 0, size ? size : 1); /* touch it, as a real allocation maps pages */
    *devPtr = p;
    return cudaSuccess;
}

EXPORT cudaError_t cudaFree(void *devPtr) {
    free(devPtr); /* cudaFree(NULL) is valid and a no-op, like free(NULL) */
    return cudaSuccess;
}

/* ---- around them: what a small test server needs ---- */

EXPORT cudaError_t cudaGetDeviceCount(int *count) {
    if (!count) return fail(cudaErrorInvalidValue);
    *count = (int)env_long("INFERSCOPE_CUDART_STANDIN_DEVICES", 1);
    return cudaSuccess;
}

EXPORT cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= env_long("INFERSCOPE_CUDART_STANDIN_DEVICES", 1))
        return fail(cudaErrorInvalidDevice);
    g_device = device;
    return cudaSuccess;
}

EXPORT cudaError_t cudaGetDevice(int *device) {
    if (!device) return fail(cudaErrorInvalidValue);
    *device = g_device;
    return cudaSuccess;
}

EXPORT cudaError_t cudaStreamCreate(cudaStream_t *pStream) {
    if (!pStream) return fail(cudaErrorInvalidValue);
    *pStream = calloc(1, sizeof(struct CUstream_st));
    return *pStream ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}

EXPORT cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    free(stream);
    return cudaSuccess;
}

EXPORT cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}

EXPORT const char *cudaGetErrorString(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    default: return "unknown error";
    }
}

/* Not CUDA: ground truth for tests (kernels launched through this stand-in since load). */
EXPORT unsigned long long inferscope_cudart_standin_launches(void) {
    return __atomic_load_n(&g_total_launches, __ATOMIC_RELAXED);
}
