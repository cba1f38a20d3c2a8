/*
 * STAND-IN for NVIDIA's libnvidia-ml.so.1 (NVML), for tests on machines without an NVIDIA GPU.
 *
 * This is NOT NVML. It exports the NVML C functions inferscope's GPU telemetry calls, with the
 * names and signatures of nvml.h (as nvml-wrapper-sys 0.10 binds them), and answers them with
 * values SCRIPTED by a small text file that the test controls:
 *
 *   INFERSCOPE_NVML_STANDIN_STATE=/path/to/state   read at nvmlInit_v2; unset or unreadable file
 *                                                  -> nvmlInit_v2 returns DRIVER_NOT_LOADED
 *   INFERSCOPE_NVML_STANDIN_FAIL=nvmlDeviceGetPowerUsage[,name...]
 *                                                  read at nvmlInit_v2; those calls return
 *                                                  NVML_ERROR_UNKNOWN
 *
 * Every call answers from the file's current content (re-read whenever the file changed: a new
 * inode, size, mtime or ctime; an unchanged file costs one stat()), so a test changes the values
 * by rewriting it atomically (write a temporary file, rename it over the old one). Format, one item a line,
 * `#` starts a comment, a key that is absent makes its getter return NVML_ERROR_NOT_SUPPORTED:
 *
 *   gpu=0 util=90 memutil=40 fb_used=2147483648 fb_total=8589934592 power_mw=123000 temp=55 \
 *         sm_mhz=1410 mem_mhz=1215 throttle=0 name="Stand-in GPU" uuid=GPU-...
 *   proc gpu=0 pid=1234 fb_used=1073741824 sm=85 mem=20
 *   fail nvmlDeviceGetTemperature          (same effect as the FAIL variable)
 *
 * Device count = highest gpu= index + 1 (write them densely: 0, 1, 2 ...). Process utilization
 * samples: one per `proc` line that has sm= (or mem=), timeStamp = now in microseconds of
 * CLOCK_REALTIME, as NVML does. See tests/gpu/README.md.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- the subset of nvml.h these functions need (values as in nvml.h) ---- */
typedef enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999
} nvmlReturn_t;

typedef struct nvmlDevice_st {
    unsigned int index;
} *nvmlDevice_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

#define NVML_VALUE_NOT_AVAILABLE (~0ULL)
#define NVML_NO_INSTANCE 0xFFFFFFFFu

enum { NVML_TEMPERATURE_GPU = 0 };
enum { NVML_CLOCK_GRAPHICS = 0, NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2, NVML_CLOCK_VIDEO = 3 };

/* ---- scripted state ---- */
#define MAX_GPUS 64
#define MAX_PROCS 256

enum {
    HAS_UTIL = 1 << 0,
    HAS_MEMUTIL = 1 << 1,
    HAS_FB_USED = 1 << 2,
    HAS_FB_TOTAL = 1 << 3,
    HAS_POWER = 1 << 4,
    HAS_TEMP = 1 << 5,
    HAS_SM_MHZ = 1 << 6,
    HAS_MEM_MHZ = 1 << 7,
    HAS_THROTTLE = 1 << 8,
};

struct gpu_state {
    unsigned int present, has;
    unsigned int util, memutil, power_mw, temp, sm_mhz, mem_mhz;
    unsigned long long fb_used, fb_total, throttle;
    char name[96];
    char uuid[96];
};

struct proc_state {
    unsigned int gpu, pid, sm, mem, has_sm, has_mem, has_fb;
    unsigned long long fb_used;
};

struct state {
    unsigned int ngpu, nproc;
    struct gpu_state gpus[MAX_GPUS];
    struct proc_state procs[MAX_PROCS];
    char fail[1024];
};

static struct nvmlDevice_st g_handles[MAX_GPUS];
static int g_init_count;           /* nvmlInit_v2 minus nvmlShutdown, as NVML refcounts */
static char g_state_path[4096];
static char g_fail_env[512];

static unsigned long long num(const char *v) { return strtoull(v, NULL, 0); }

/* Splits one line into key=value tokens; a value may be "double quoted" to hold spaces. */
static void parse_line(char *line, struct state *st) {
    char *p = line;
    char *hash = strchr(p, '#');
    if (hash) *hash = 0;
    while (*p == ' ' || *p == '\t') p++;
    if (!*p || *p == '\n') return;

    int is_proc = strncmp(p, "proc", 4) == 0 && (p[4] == ' ' || p[4] == '\t');
    int is_fail = strncmp(p, "fail", 4) == 0 && (p[4] == ' ' || p[4] == '\t');
    if (is_fail) {
        size_t used = strlen(st->fail);
        snprintf(st->fail + used, sizeof st->fail - used, ",%s", p + 5);
        return;
    }
    struct gpu_state g;
    struct proc_state pr;
    memset(&g, 0, sizeof g);
    memset(&pr, 0, sizeof pr);
    long gpu_index = -1;
    if (is_proc) p += 4;

    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (!*p) break;
        char *key = p;
        while (*p && *p != '=' && *p != ' ' && *p != '\t' && *p != '\n') p++;
        if (*p != '=') { /* bare word: skip */
            while (*p && *p != ' ' && *p != '\t' && *p != '\n') p++;
            continue;
        }
        *p++ = 0;
        char *val;
        if (*p == '"') {
            val = ++p;
            while (*p && *p != '"') p++;
        } else {
            val = p;
            while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') p++;
        }
        if (*p) *p++ = 0;

        if (strcmp(key, "gpu") == 0) {
            gpu_index = (long)num(val);
            pr.gpu = (unsigned)gpu_index;
        } else if (is_proc) {
            if (strcmp(key, "pid") == 0) pr.pid = (unsigned)num(val);
            else if (strcmp(key, "fb_used") == 0) { pr.fb_used = num(val); pr.has_fb = 1; }
            else if (strcmp(key, "sm") == 0) { pr.sm = (unsigned)num(val); pr.has_sm = 1; }
            else if (strcmp(key, "mem") == 0) { pr.mem = (unsigned)num(val); pr.has_mem = 1; }
        } else {
            if (strcmp(key, "util") == 0) { g.util = (unsigned)num(val); g.has |= HAS_UTIL; }
            else if (strcmp(key, "memutil") == 0) { g.memutil = (unsigned)num(val); g.has |= HAS_MEMUTIL; }
            else if (strcmp(key, "fb_used") == 0) { g.fb_used = num(val); g.has |= HAS_FB_USED; }
            else if (strcmp(key, "fb_total") == 0) { g.fb_total = num(val); g.has |= HAS_FB_TOTAL; }
            else if (strcmp(key, "power_mw") == 0) { g.power_mw = (unsigned)num(val); g.has |= HAS_POWER; }
            else if (strcmp(key, "temp") == 0) { g.temp = (unsigned)num(val); g.has |= HAS_TEMP; }
            else if (strcmp(key, "sm_mhz") == 0) { g.sm_mhz = (unsigned)num(val); g.has |= HAS_SM_MHZ; }
            else if (strcmp(key, "mem_mhz") == 0) { g.mem_mhz = (unsigned)num(val); g.has |= HAS_MEM_MHZ; }
            else if (strcmp(key, "throttle") == 0) { g.throttle = num(val); g.has |= HAS_THROTTLE; }
            else if (strcmp(key, "name") == 0) snprintf(g.name, sizeof g.name, "%s", val);
            else if (strcmp(key, "uuid") == 0) snprintf(g.uuid, sizeof g.uuid, "%s", val);
        }
    }
    if (is_proc) {
        if (st->nproc < MAX_PROCS) st->procs[st->nproc++] = pr;
    } else if (gpu_index >= 0 && gpu_index < MAX_GPUS) {
        g.present = 1;
        if (!g.name[0]) snprintf(g.name, sizeof g.name, "inferscope NVML stand-in GPU");
        if (!g.uuid[0])
            snprintf(g.uuid, sizeof g.uuid, "GPU-5a4d5a4d-0000-4000-8000-%012ld", gpu_index);
        st->gpus[gpu_index] = g;
        if ((unsigned)gpu_index + 1 > st->ngpu) st->ngpu = (unsigned)gpu_index + 1;
    }
}

/* The parsed file and the identity it was parsed from: a call re-reads the file whenever it is
 * not the same file any more (a rename gives a new inode; an edit changes mtime or size), so
 * every call sees the current state while an unchanged file costs one stat(). */
static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct state g_cache;
static struct stat g_cache_id;
static int g_cache_valid;

static int same_file(const struct stat *a, const struct stat *b) {
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* The current state of the file into *st (fail list from the environment included). */
static int load_state(struct state *st) {
    struct stat id;
    if (!g_state_path[0] || stat(g_state_path, &id) != 0) return -1;
    pthread_mutex_lock(&g_cache_lock);
    if (!g_cache_valid || !same_file(&id, &g_cache_id)) {
        FILE *f = fopen(g_state_path, "re");
        if (!f) {
            pthread_mutex_unlock(&g_cache_lock);
            return -1;
        }
        memset(&g_cache, 0, sizeof g_cache);
        char line[1024];
        while (fgets(line, sizeof line, f)) parse_line(line, &g_cache);
        /* The identity of what was read (the path may have been renamed over meanwhile: then
         * the next call sees a different inode and reads again). */
        if (fstat(fileno(f), &id) != 0) memset(&id, 0, sizeof id);
        fclose(f);
        g_cache_id = id;
        g_cache_valid = 1;
    }
    *st = g_cache;
    pthread_mutex_unlock(&g_cache_lock);
    /* Scripted failures: the state file's `fail` lines, then the FAIL variable. */
    size_t used = strlen(st->fail);
    snprintf(st->fail + used, sizeof st->fail - used, ",%s", g_fail_env);
    return 0;
}

/* Is `fn` named in the comma/space separated fail list? */
static int should_fail(const struct state *st, const char *fn) {
    size_t n = strlen(fn);
    const char *p = st->fail;
    while ((p = strstr(p, fn)) != NULL) {
        char before = p == st->fail ? ',' : p[-1];
        char after = p[n];
        if ((before == ',' || before == ' ' || before == '\t') &&
            (after == 0 || after == ',' || after == ' ' || after == '\t' || after == '\n'))
            return 1;
        p += n;
    }
    return 0;
}

/* Common prologue of every device getter: initialised, state readable, valid handle, not
 * scripted to fail. Returns NVML_SUCCESS and the device's state in *g. */
static nvmlReturn_t device_call(const char *fn, nvmlDevice_t device, struct state *st,
                                struct gpu_state **g) {
    if (g_init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    if (load_state(st) != 0) return NVML_ERROR_UNKNOWN;
    if (should_fail(st, fn)) return NVML_ERROR_UNKNOWN;
    if (device < g_handles || device >= g_handles + MAX_GPUS) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned idx = (unsigned)(device - g_handles);
    if (idx >= st->ngpu || !st->gpus[idx].present) return NVML_ERROR_GPU_IS_LOST;
    *g = &st->gpus[idx];
    return NVML_SUCCESS;
}

#define DEVICE_PROLOGUE(device)                                            \
    struct state st;                                                       \
    struct gpu_state *g;                                                   \
    nvmlReturn_t rc_ = device_call(__func__, (device), &st, &g);           \
    if (rc_ != NVML_SUCCESS) return rc_;

static unsigned long long realtime_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL;
}

/* ---- exported NVML API ---- */

EXPORT nvmlReturn_t nvmlInit_v2(void) {
    const char *path = getenv("INFERSCOPE_NVML_STANDIN_STATE");
    const char *fail = getenv("INFERSCOPE_NVML_STANDIN_FAIL");
    snprintf(g_fail_env, sizeof g_fail_env, "%s", fail ? fail : "");
    if (!path || !*path) return NVML_ERROR_DRIVER_NOT_LOADED;
    snprintf(g_state_path, sizeof g_state_path, "%s", path);
    pthread_mutex_lock(&g_cache_lock);
    g_cache_valid = 0;
    pthread_mutex_unlock(&g_cache_lock);
    struct state st;
    if (load_state(&st) != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (should_fail(&st, "nvmlInit_v2")) return NVML_ERROR_UNKNOWN;
    for (unsigned i = 0; i < MAX_GPUS; i++) g_handles[i].index = i;
    g_init_count++;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}

EXPORT nvmlReturn_t nvmlShutdown(void) {
    if (g_init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    g_init_count--;
    return NVML_SUCCESS;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    static const char v[] = "0.0.0-inferscope-standin";
    if (g_init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    if (length < sizeof v) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(version, v, sizeof v);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    struct state st;
    if (g_init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    if (!deviceCount) return NVML_ERROR_INVALID_ARGUMENT;
    if (load_state(&st) != 0) return NVML_ERROR_UNKNOWN;
    if (should_fail(&st, __func__)) return NVML_ERROR_UNKNOWN;
    *deviceCount = st.ngpu;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    struct state st;
    if (g_init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    if (load_state(&st) != 0) return NVML_ERROR_UNKNOWN;
    if (should_fail(&st, __func__)) return NVML_ERROR_UNKNOWN;
    if (index >= st.ngpu || !st.gpus[index].present) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &g_handles[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    DEVICE_PROLOGUE(device)
    (void)g;
    if (!index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = device->index;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_string(const char *s, char *out, unsigned int length) {
    size_t n = strlen(s) + 1;
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (length < n) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, s, n);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    DEVICE_PROLOGUE(device)
    return copy_string(g->name, name, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    DEVICE_PROLOGUE(device)
    return copy_string(g->uuid, uuid, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *u) {
    DEVICE_PROLOGUE(device)
    if (!u) return NVML_ERROR_INVALID_ARGUMENT;
    if ((g->has & (HAS_UTIL | HAS_MEMUTIL)) != (HAS_UTIL | HAS_MEMUTIL)) return NVML_ERROR_NOT_SUPPORTED;
    u->gpu = g->util;
    u->memory = g->memutil;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *m) {
    DEVICE_PROLOGUE(device)
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    if ((g->has & (HAS_FB_USED | HAS_FB_TOTAL)) != (HAS_FB_USED | HAS_FB_TOTAL)) return NVML_ERROR_NOT_SUPPORTED;
    m->total = g->fb_total;
    m->used = g->fb_used;
    m->free = g->fb_total > g->fb_used ? g->fb_total - g->fb_used : 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *m) {
    DEVICE_PROLOGUE(device)
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    if (m->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if ((g->has & (HAS_FB_USED | HAS_FB_TOTAL)) != (HAS_FB_USED | HAS_FB_TOTAL)) return NVML_ERROR_NOT_SUPPORTED;
    m->total = g->fb_total;
    m->reserved = 0;
    m->used = g->fb_used;
    m->free = g->fb_total > g->fb_used ? g->fb_total - g->fb_used : 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    DEVICE_PROLOGUE(device)
    if (!power) return NVML_ERROR_INVALID_ARGUMENT;
    if (!(g->has & HAS_POWER)) return NVML_ERROR_NOT_SUPPORTED;
    *power = g->power_mw;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensorType, unsigned int *temp) {
    DEVICE_PROLOGUE(device)
    if (!temp || sensorType != NVML_TEMPERATURE_GPU) return NVML_ERROR_INVALID_ARGUMENT;
    if (!(g->has & HAS_TEMP)) return NVML_ERROR_NOT_SUPPORTED;
    *temp = g->temp;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *clock) {
    DEVICE_PROLOGUE(device)
    if (!clock) return NVML_ERROR_INVALID_ARGUMENT;
    switch (type) {
    case NVML_CLOCK_GRAPHICS:
    case NVML_CLOCK_SM:
        if (!(g->has & HAS_SM_MHZ)) return NVML_ERROR_NOT_SUPPORTED;
        *clock = g->sm_mhz;
        return NVML_SUCCESS;
    case NVML_CLOCK_MEM:
        if (!(g->has & HAS_MEM_MHZ)) return NVML_ERROR_NOT_SUPPORTED;
        *clock = g->mem_mhz;
        return NVML_SUCCESS;
    case NVML_CLOCK_VIDEO:
        return NVML_ERROR_NOT_SUPPORTED;
    default:
        return NVML_ERROR_INVALID_ARGUMENT;
    }
}

static nvmlReturn_t throttle(nvmlDevice_t device, unsigned long long *reasons, struct state *st,
                             struct gpu_state *g) {
    (void)device;
    (void)st;
    if (!reasons) return NVML_ERROR_INVALID_ARGUMENT;
    if (!(g->has & HAS_THROTTLE)) return NVML_ERROR_NOT_SUPPORTED;
    *reasons = g->throttle;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                              unsigned long long *reasons) {
    DEVICE_PROLOGUE(device)
    return throttle(device, reasons, &st, g);
}

/* The newer name of the same query (NVML 12.2+). */
EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device,
                                                           unsigned long long *reasons) {
    DEVICE_PROLOGUE(device)
    return throttle(device, reasons, &st, g);
}

/* NVML semantics: *infoCount in = array size, out = processes; too small (or infos NULL with
 * processes present) -> NVML_ERROR_INSUFFICIENT_SIZE with the needed count. */
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_t *infos) {
    DEVICE_PROLOGUE(device)
    (void)g;
    if (!infoCount) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned idx = device->index, n = 0;
    for (unsigned i = 0; i < st.nproc; i++) n += st.procs[i].gpu == idx;
    if (n == 0) {
        *infoCount = 0;
        return NVML_SUCCESS;
    }
    if (!infos || *infoCount < n) {
        *infoCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned k = 0;
    for (unsigned i = 0; i < st.nproc; i++) {
        const struct proc_state *p = &st.procs[i];
        if (p->gpu != idx) continue;
        infos[k].pid = p->pid;
        infos[k].usedGpuMemory = p->has_fb ? p->fb_used : NVML_VALUE_NOT_AVAILABLE;
        infos[k].gpuInstanceId = NVML_NO_INSTANCE;
        infos[k].computeInstanceId = NVML_NO_INSTANCE;
        k++;
    }
    *infoCount = k;
    return NVML_SUCCESS;
}

/* NVML semantics: utilization NULL -> NVML_ERROR_INSUFFICIENT_SIZE with the needed count; no
 * sample newer than lastSeenTimeStamp -> NVML_ERROR_NOT_FOUND. */
EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                                    nvmlProcessUtilizationSample_t *utilization,
                                                    unsigned int *processSamplesCount,
                                                    unsigned long long lastSeenTimeStamp) {
    DEVICE_PROLOGUE(device)
    (void)g;
    if (!processSamplesCount) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long now = realtime_us();
    unsigned idx = device->index, n = 0;
    for (unsigned i = 0; i < st.nproc; i++)
        n += st.procs[i].gpu == idx && (st.procs[i].has_sm || st.procs[i].has_mem);
    if (n == 0 || now <= lastSeenTimeStamp) return NVML_ERROR_NOT_FOUND;
    if (!utilization || *processSamplesCount < n) {
        *processSamplesCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned k = 0;
    for (unsigned i = 0; i < st.nproc; i++) {
        const struct proc_state *p = &st.procs[i];
        if (p->gpu != idx || !(p->has_sm || p->has_mem)) continue;
        utilization[k].pid = p->pid;
        utilization[k].timeStamp = now;
        utilization[k].smUtil = p->sm;
        utilization[k].memUtil = p->mem;
        utilization[k].encUtil = 0;
        utilization[k].decUtil = 0;
        k++;
    }
    *processSamplesCount = k;
    return NVML_SUCCESS;
}
