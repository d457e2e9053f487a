/*
 * clockshim.c - LD_PRELOAD wall-clock shifter for the Lucky chaos harness.
 *
 * WHAT IT IS
 *   A tiny shared object that interposes clock_gettime(), gettimeofday() and
 *   time() and adds an offset (a step) plus a drift to the process's
 *   CLOCK_REALTIME.  The harness uses it to make a Redis server's wall clock
 *   jump forwards/backwards or run fast/slow while the server keeps running.
 *
 *       gcc -O2 -shared -fPIC -Wall -Wextra -o clockshim.so clockshim.c
 *       LD_PRELOAD=/path/clockshim.so LUCKY_CLOCK_FILE=/tmp/clk redis-server ...
 *
 * WHY IT EXISTS
 *   Debian's libfaketime cannot start Debian's redis-server: redis is linked
 *   against jemalloc, jemalloc calls clock_gettime() while it initialises,
 *   libfaketime's clock_gettime() needs dlsym()/malloc()/stdio to set itself
 *   up, and that recurses back into the allocator and the clock before either
 *   is ready, so the server hangs or crashes at start-up.  This shim avoids
 *   the whole problem: it never allocates, never uses stdio, never calls
 *   dlsym(), and never calls any libc clock function.  The real time is taken
 *   with raw syscall(SYS_clock_gettime, ...) and the control file is read
 *   with raw openat/read/close syscalls and parsed by hand.  The only libc
 *   calls are syscall() and one getenv() (neither allocates nor reads a
 *   clock).
 *
 * WHAT IS SHIFTED
 *   clock_gettime(CLOCK_REALTIME), clock_gettime(CLOCK_REALTIME_COARSE),
 *   gettimeofday() and time().  Every other clock id (CLOCK_MONOTONIC,
 *   CLOCK_MONOTONIC_RAW, CLOCK_BOOTTIME, CLOCK_TAI, CPU-time clocks, ...) is
 *   passed through to the kernel unchanged, so timeouts/intervals measured
 *   with a monotonic clock are not affected -- unless LUCKY_CLOCK_MONOTONIC=1:
 *   then the rate (never the offset) applies to CLOCK_MONOTONIC(_COARSE,
 *   _RAW) and CLOCK_BOOTTIME too, as a whole machine's clock running fast or
 *   slow (the harness uses it on client processes: Rust's Instant and
 *   tokio's timers read the clock through libc and drift; the harness's own
 *   history stamps read the vDSO directly and do not).
 *
 * CONTROL FILE
 *   Path: environment variable LUCKY_CLOCK_FILE (read once, at first use).
 *   Contents: two ASCII integers separated by white space
 *
 *       <offset_ns> [<rate_ppm>]
 *
 *   e.g. "3600000000000 0" (one hour ahead), "-10000000000" (10 s behind),
 *   "0 100000" (clock runs 10 % fast).  rate_ppm is optional, default 0.
 *   A missing, unreadable or unparsable file means offset 0, rate 0 until a
 *   first good read; after one, a failed read keeps the last values.
 *   The file is re-read at most once per 5 ms of CLOCK_MONOTONIC, so a change
 *   takes effect within ~5 ms of the next clock call.  Write the file
 *   atomically (write a temp file, then rename) so the shim never sees a
 *   half-written value; a torn read is harmless but may be seen for 5 ms.
 *
 *       shifted_realtime = real_realtime + offset_ns
 *                        + rate_ppm * (mono_now - mono_anchor) / 1e6
 *
 *   offset_ns is always relative to the REAL clock (so going from 0 to
 *   10000000000 is a +10 s jump, and going back to 0 jumps back to real
 *   time).  mono_anchor is the CLOCK_MONOTONIC time at which the shim first
 *   saw the current rate_ppm value: the first read of the file, and again
 *   every time rate_ppm changes.  Consequences: writing a new rate starts the
 *   drift from zero at that moment (no retroactive jump); changing only the
 *   offset keeps the accumulated drift; changing the rate (including back to
 *   0 or deleting the file) discards the drift accumulated so far, i.e. the
 *   clock jumps by that amount.
 *
 * THREADS / FORK
 *   Parsed values live in a small ring of slots published through an atomic
 *   generation counter; readers never block or spin (they only retry the
 *   copy if the slot was overwritten under them, which needs three re-reads
 *   of the file during one copy).  Only one thread re-reads the file at a
 *   time (an atomic try-lock; the losers simply use the current values), and
 *   the lock is a lease that expires after 100 ms, so a fork() that happens
 *   while another thread holds it cannot wedge the child.
 *
 * WHAT IT CANNOT REACH
 *   - Statically linked programs (no dynamic loader, LD_PRELOAD is ignored).
 *   - Go binaries such as etcd: the Go runtime does not use libc for time,
 *     it calls the vDSO / raw syscalls directly, so nothing here is seen.
 *   - Any code that reads the clock through the vDSO or raw syscalls itself,
 *     and calls made from inside libc (e.g. libc-internal uses of time()),
 *     which bind to libc's own symbols rather than the interposed ones.
 *   - setuid/setgid binaries (the loader drops LD_PRELOAD for them).
 *   - Kernel-side timestamps (file mtimes, SO_TIMESTAMP, timerfd with
 *     CLOCK_REALTIME, pthread_cond_timedwait absolute REALTIME deadlines,
 *     etc.) are still based on the real clock.
 *   Cost: each interposed call makes one or two real syscalls instead of a
 *   vDSO call (about 0.1-0.5 us), which is fine for a test harness.
 */

#define _GNU_SOURCE
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define NSEC_PER_SEC 1000000000LL
#define REREAD_INTERVAL_NS (5LL * 1000 * 1000)       /* 5 ms */
#define LOCK_LEASE_NS (100LL * 1000 * 1000)          /* 100 ms */
#define NSLOTS 4u

#define EXPORT __attribute__((visibility("default")))

/* ---- state ------------------------------------------------------------ */

struct slot {
    _Atomic int64_t offset_ns;
    _Atomic int64_t rate_ppm;
    _Atomic int64_t anchor_ns;  /* CLOCK_MONOTONIC when rate_ppm took effect */
};

static struct slot slots[NSLOTS];        /* all zero: offset 0, rate 0 */
static _Atomic uint64_t gen;             /* slots[gen % NSLOTS] is current */
static _Atomic int64_t next_read_ns = INT64_MIN; /* mono time of next re-read */
static _Atomic int64_t lock_ns;          /* 0 = free, else mono time taken */

/* Only touched by the thread holding lock_ns (see maybe_reread). */
static int path_ready;
static char path_buf[4096];
static int have_path;

/* ---- raw clock -------------------------------------------------------- */

static inline int raw_clock_gettime(clockid_t id, struct timespec *ts)
{
    return (int)syscall(SYS_clock_gettime, id, ts);
}

static inline int64_t mono_now_ns(void)
{
    struct timespec ts;
    if (raw_clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * NSEC_PER_SEC + ts.tv_nsec;
}

/* ---- control file ----------------------------------------------------- */

/* Called with lock_ns held.  getenv() neither allocates nor reads a clock. */
static void init_path(void)
{
    if (path_ready)
        return;
    const char *p = getenv("LUCKY_CLOCK_FILE");
    if (p != NULL && p[0] != '\0') {
        size_t n = strnlen(p, sizeof(path_buf));
        if (n < sizeof(path_buf)) {
            memcpy(path_buf, p, n);
            path_buf[n] = '\0';
            have_path = 1;
        }
    }
    path_ready = 1;
}

/* Parse an optionally signed decimal integer; saturates on overflow.
 * Returns 1 and advances *pp on success, 0 if no digits were found. */
static int parse_i64(const char **pp, const char *end, int64_t *out)
{
    const char *p = *pp;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    int neg = 0;
    if (p < end && (*p == '-' || *p == '+')) {
        neg = (*p == '-');
        p++;
    }
    if (p >= end || *p < '0' || *p > '9')
        return 0;
    uint64_t v = 0;
    const uint64_t lim = neg ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
    while (p < end && *p >= '0' && *p <= '9') {
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (lim - d) / 10u)
            v = lim;
        else
            v = v * 10u + d;
        p++;
    }
    *out = neg ? (int64_t)(0u - v) : (int64_t)v;
    *pp = p;
    return 1;
}

/* Read the file with raw syscalls. Missing/unreadable/garbage => 0, 0, and
 * returns 0 (the caller keeps what it had once it had something). */
static int read_file(int64_t *offset, int64_t *rate)
{
    *offset = 0;
    *rate = 0;
    if (!have_path)
        return 0;
    long fd = syscall(SYS_openat, AT_FDCWD, path_buf, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[128];
    long n = 0;
    while (n < (long)sizeof(buf)) {
        long r = syscall(SYS_read, (int)fd, buf + n, sizeof(buf) - (size_t)n);
        if (r <= 0)
            break;
        n += r;
    }
    syscall(SYS_close, (int)fd);
    const char *p = buf, *end = buf + n;
    int64_t o, r;
    if (!parse_i64(&p, end, &o))
        return 0;
    *offset = o;
    if (parse_i64(&p, end, &r))
        *rate = r;
    return 1;
}

static void maybe_reread(int64_t now)
{
    if (now < atomic_load_explicit(&next_read_ns, memory_order_relaxed))
        return;

    /* try-lock with a lease; never spins */
    int64_t held = atomic_load_explicit(&lock_ns, memory_order_relaxed);
    if (held != 0 && now - held < LOCK_LEASE_NS)
        return;
    if (!atomic_compare_exchange_strong(&lock_ns, &held, now == 0 ? 1 : now))
        return;
    if (now < atomic_load(&next_read_ns)) { /* someone just did it */
        atomic_store(&lock_ns, 0);
        return;
    }

    init_path();

    int64_t offset, rate;
    int ok = read_file(&offset, &rate);

    uint64_t g = atomic_load_explicit(&gen, memory_order_acquire);
    if (!ok && g != 0) {
        /* A failed read after a good one keeps the values (and the drift built up):
         * a writer replacing the file must not make the clock jump. */
        atomic_store(&next_read_ns, now + REREAD_INTERVAL_NS);
        atomic_store_explicit(&lock_ns, 0, memory_order_release);
        return;
    }
    struct slot *cur = &slots[g % NSLOTS];
    int64_t cur_off = atomic_load_explicit(&cur->offset_ns, memory_order_relaxed);
    int64_t cur_rate = atomic_load_explicit(&cur->rate_ppm, memory_order_relaxed);
    int64_t cur_anchor = atomic_load_explicit(&cur->anchor_ns, memory_order_relaxed);
    int first = (g == 0);

    if (first || offset != cur_off || rate != cur_rate) {
        struct slot *nx = &slots[(g + 1) % NSLOTS];
        int64_t anchor = (first || rate != cur_rate) ? now : cur_anchor;
        /* seqlock-style: order the slot stores after the publication of
         * generation g, so a reader still copying the slot that is being
         * overwritten (its generation is g + 1 - NSLOTS) sees gen >= g
         * afterwards and retries. */
        atomic_thread_fence(memory_order_release);
        atomic_store_explicit(&nx->offset_ns, offset, memory_order_relaxed);
        atomic_store_explicit(&nx->rate_ppm, rate, memory_order_relaxed);
        atomic_store_explicit(&nx->anchor_ns, anchor, memory_order_relaxed);
        atomic_store_explicit(&gen, g + 1, memory_order_release);
    }

    atomic_store(&next_read_ns, now + REREAD_INTERVAL_NS);
    atomic_store_explicit(&lock_ns, 0, memory_order_release);
}

/* Whether LUCKY_CLOCK_MONOTONIC=1: the rate (never the offset) applies to the
 * monotonic clocks too, as a client process's clock running fast or slow. */
static _Atomic int mono_mode = -1;

static int monotonic_mode(void)
{
    int m = atomic_load_explicit(&mono_mode, memory_order_relaxed);
    if (m < 0) {
        const char *p = getenv("LUCKY_CLOCK_MONOTONIC");
        m = (p != NULL && p[0] == '1');
        atomic_store_explicit(&mono_mode, m, memory_order_relaxed);
    }
    return m;
}

/* Current shift in nanoseconds to add to the real CLOCK_REALTIME; `drift_only`
 * leaves the offset out (what a monotonic clock gets). */
static int64_t shift_ns(int drift_only)
{
    int64_t now = mono_now_ns();
    maybe_reread(now);

    int64_t offset, rate, anchor;
    for (;;) {
        uint64_t g = atomic_load_explicit(&gen, memory_order_acquire);
        struct slot *s = &slots[g % NSLOTS];
        offset = atomic_load_explicit(&s->offset_ns, memory_order_relaxed);
        rate = atomic_load_explicit(&s->rate_ppm, memory_order_relaxed);
        anchor = atomic_load_explicit(&s->anchor_ns, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        /* the slot is only reused after NSLOTS-1 further publications */
        if (atomic_load_explicit(&gen, memory_order_relaxed) - g < NSLOTS - 1)
            break;
    }

    if (drift_only)
        offset = 0;
    if (rate == 0)
        return offset;
    __int128 drift = (__int128)rate * (__int128)(now - anchor) / 1000000;
    __int128 total = (__int128)offset + drift;
    if (total > INT64_MAX)
        total = INT64_MAX;
    if (total < INT64_MIN)
        total = INT64_MIN;
    return (int64_t)total;
}

static int64_t current_shift_ns(void)
{
    return shift_ns(0);
}

static void shift_timespec(struct timespec *ts, int64_t shift)
{
    int64_t sec = (int64_t)ts->tv_sec + shift / NSEC_PER_SEC;
    int64_t nsec = (int64_t)ts->tv_nsec + shift % NSEC_PER_SEC;
    if (nsec >= NSEC_PER_SEC) {
        nsec -= NSEC_PER_SEC;
        sec++;
    } else if (nsec < 0) {
        nsec += NSEC_PER_SEC;
        sec--;
    }
    ts->tv_sec = (time_t)sec;
    ts->tv_nsec = (long)nsec;
}

/* ---- interposed functions --------------------------------------------- */

EXPORT int clock_gettime(clockid_t clk_id, struct timespec *tp)
{
    int rc = raw_clock_gettime(clk_id, tp);
    if (rc != 0)
        return rc; /* syscall() already set errno and returned -1 */
    if (clk_id == CLOCK_REALTIME || clk_id == CLOCK_REALTIME_COARSE)
        shift_timespec(tp, current_shift_ns());
    else if ((clk_id == CLOCK_MONOTONIC || clk_id == CLOCK_MONOTONIC_COARSE ||
              clk_id == CLOCK_MONOTONIC_RAW || clk_id == CLOCK_BOOTTIME) &&
             monotonic_mode())
        shift_timespec(tp, shift_ns(1));
    return 0;
}

EXPORT int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
    if (tz != NULL)
        syscall(SYS_gettimeofday, NULL, tz); /* fill struct timezone */
    /* glibc declares tv nonnull, but the kernel/vDSO accept NULL; hide the
     * pointer from the optimiser so the check is kept (and not warned on). */
    __asm__("" : "+r"(tv));
    if (tv == NULL)
        return 0;
    struct timespec ts;
    int rc = raw_clock_gettime(CLOCK_REALTIME, &ts);
    if (rc != 0)
        return rc;
    shift_timespec(&ts, current_shift_ns());
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = (suseconds_t)(ts.tv_nsec / 1000);
    return 0;
}

EXPORT time_t time(time_t *tloc)
{
    struct timespec ts;
    if (raw_clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    shift_timespec(&ts, current_shift_ns());
    if (tloc != NULL)
        *tloc = ts.tv_sec;
    return ts.tv_sec;
}
