/* Open-addressing hash tables for the carried state of a range of labeled hours.
 *
 * The tables live in arrays the caller owns (numpy arrays, passed through the buffer
 * protocol); these functions only probe and fill them (without the GIL; those using the
 * scratch memory below for long walks only). Python decides when a table grows (see hashtables.py) and keeps it
 * at most 70 % full, so a probe sequence always reaches an empty slot (checked all the same).
 * Linear probing over splitmix64-mixed keys.
 *
 * int64 tables: `tkeys` (INT64_MIN = empty slot) and `tvals` (int32), one value per key.
 * string tables: `tcodes` (-1 = empty slot) and `thash`, the code of a string and its hash;
 * the strings themselves are an Arrow string array's offsets (int32) and data, held by the
 * caller, a code being a position in that array.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EMPTY_KEY INT64_MIN

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static inline uint64_t hash_bytes(const uint8_t *p, int64_t len)
{
    uint64_t h = mix64((uint64_t)len ^ 0x9e3779b97f4a7c15ULL);
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix64(h ^ w);
        p += 8;
        len -= 8;
    }
    if (len > 0) {
        uint64_t w = 0;
        memcpy(&w, p, (size_t)len);
        h = mix64(h ^ w ^ 0xff51afd7ed558ccdULL);
    }
    return h;
}

/* A buffer of `itemsize`-byte items, C-contiguous, of floats when itemsize is 8 and `what`
 * says so (a name starting with "f:"), else of integers or bytes; `what` names it in errors. */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize,
                      const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    int floats = strncmp(what, "f:", 2) == 0;
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
#if PY_BIG_ENDIAN
    if (*f == '>' || *f == '!' || *f == '=' || *f == '@')
#else
    if (*f == '<' || *f == '=' || *f == '@')
#endif
        f++;
    /* native order only (another order passes as the wrong integers), and exactly the kind */
    int ok = f[0] != '\0' && f[1] == '\0'
             && (floats ? *f == 'd' : strchr("bBhHiIlLqQnNc", *f) != NULL);
    if (view->itemsize != itemsize || !ok) {
        PyErr_Format(PyExc_TypeError, "%s: %s of %zd bytes expected, got format %s of %zd",
                     what, floats ? "floats" : "integers", itemsize, f, view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static void release(Py_buffer *views, int n)
{
    for (int i = 0; i < n; i++)
        PyBuffer_Release(&views[i]);
}

/* Scratch memory kept from call to call. A fresh allocation of a few MiB per call (malloc maps
 * it, free unmaps it) cost more in page faults than the work itself: ~4,000 faults and ~10 ms per
 * labeled hour, against ~1 ms for the walk (measured). The functions using it release the GIL
 * for their walk and hold `scratch_lock` instead, which serializes them (not other threads). */
static PyThread_type_lock scratch_lock;
/* The GIL is let go only for a walk of NOGIL_MIN items or more: a tiny one (a REST request's
 * as-of) would otherwise wait up to the interpreter's switch interval to take it back. Holding
 * the GIL while waiting for `scratch_lock` cannot deadlock: its holder needs no GIL before it
 * lets the lock go. */
#define NOGIL_MIN 4096
#define SCRATCH_BEGIN(work)                                                                     \
    {                                                                                           \
        PyThreadState *_save = (work) >= NOGIL_MIN ? PyEval_SaveThread() : NULL;               \
        PyThread_acquire_lock(scratch_lock, WAIT_LOCK);
#define SCRATCH_END                                                                             \
    PyThread_release_lock(scratch_lock);                                                        \
    if (_save)                                                                                  \
        PyEval_RestoreThread(_save);                                                            \
    }
enum { SCRATCH_RUN, SCRATCH_PAIRS, SCRATCH_DOMAINS, SCRATCH_CODES, SCRATCH_FIRST, SCRATCH_N };
static struct {
    void *p;
    size_t size;
} scratch[SCRATCH_N];

static void *scratch_get(int slot, size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    if (scratch[slot].size < bytes) {
        free(scratch[slot].p);
        size_t want = bytes + bytes / 4;
        scratch[slot].p = malloc(want);
        scratch[slot].size = scratch[slot].p ? want : 0;
    }
    return scratch[slot].p;
}

/* Item counts passed beside the buffers: far below any size product overflowing. */
#define BAD_COUNT(x) ((x) < 0 || (x) > ((long long)1 << 40))

/* The `n` buffers of `objs`, each checked as get_buffer does (bit i of `writable`: buffer i is
 * written); on failure the ones taken are released. Returns n, or -1. */
static int get_buffers(PyObject *const *objs, Py_buffer *views, int n, const char *const *names,
                       const Py_ssize_t *sizes, unsigned writable)
{
    for (int i = 0; i < n; i++)
        if (get_buffer(objs[i], &views[i], (writable >> i) & 1, sizes[i], names[i]) < 0) {
            release(views, i);
            return -1;
        }
    return n;
}

static int power_of_two(Py_ssize_t n)
{
    return n > 0 && (n & (n - 1)) == 0;
}

/* int_find(tkeys, tvals, keys, out): out[i] = the value of keys[i], or -1 when absent. */
static PyObject *int_find(PyObject *self, PyObject *args)
{
    PyObject *o[4];
    Py_buffer b[4];
    int got = 0;
    if (!PyArg_ParseTuple(args, "OOOO", &o[0], &o[1], &o[2], &o[3]))
        return NULL;
    static const char *names[] = {"tkeys", "tvals", "keys", "out"};
    static const Py_ssize_t sizes[] = {8, 4, 8, 8};
    if ((got = get_buffers(o, b, 4, names, sizes, 0x8)) < 0)
        return NULL;
    Py_ssize_t cap = b[0].len / 8, n = b[2].len / 8;
    if (!power_of_two(cap) || b[1].len / 4 != cap || b[3].len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "int_find: bad table or output size");
        goto fail;
    }
    const int64_t *tk = b[0].buf, *keys = b[2].buf;
    const int32_t *tv = b[1].buf;
    int64_t *out = b[3].buf;
    uint64_t mask = (uint64_t)cap - 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t key = keys[i], found = -1;
        if (key != EMPTY_KEY) {
            uint64_t s = mix64((uint64_t)key) & mask;
            for (Py_ssize_t probes = 0; tk[s] != EMPTY_KEY && probes < cap; probes++) {
                if (tk[s] == key) {
                    found = tv[s];
                    break;
                }
                s = (s + 1) & mask;
            }
        }
        out[i] = found;
    }
    Py_END_ALLOW_THREADS
    release(b, got);
    Py_RETURN_NONE;
fail:
    release(b, got);
    return NULL;
}

/* int_insert(tkeys, tvals, keys, out, next) -> next': each key absent from the table is
 * added with the value next, next + 1, ... in the order met; out[i] = the value of keys[i].
 * The caller leaves room for every key. */
static PyObject *int_insert(PyObject *self, PyObject *args)
{
    PyObject *o[4];
    Py_buffer b[4];
    long long next;
    int got = 0, full = 0;
    if (!PyArg_ParseTuple(args, "OOOOL", &o[0], &o[1], &o[2], &o[3], &next))
        return NULL;
    static const char *names[] = {"tkeys", "tvals", "keys", "out"};
    static const Py_ssize_t sizes[] = {8, 4, 8, 8};
    if ((got = get_buffers(o, b, 4, names, sizes, 0xb)) < 0)
        return NULL;
    Py_ssize_t cap = b[0].len / 8, n = b[2].len / 8;
    if (!power_of_two(cap) || b[1].len / 4 != cap || b[3].len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "int_insert: bad table or output size");
        goto fail;
    }
    if (next < 0 || n > INT32_MAX || next > (long long)INT32_MAX - n) {
        PyErr_SetString(PyExc_ValueError, "int_insert: values past 2**31 - 1");
        goto fail;
    }
    int64_t *tk = b[0].buf, *out = b[3].buf;
    int32_t *tv = b[1].buf;
    const int64_t *keys = b[2].buf;
    /* every key checked before the table changes: a failed call leaves it as it was */
    for (Py_ssize_t i = 0; i < n; i++)
        if (keys[i] == EMPTY_KEY) {
            PyErr_SetString(PyExc_ValueError, "int_insert: INT64_MIN is not a key");
            goto fail;
        }
    uint64_t mask = (uint64_t)cap - 1;
    int64_t value = next;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && !full; i++) {
        int64_t key = keys[i];
        uint64_t s = mix64((uint64_t)key) & mask;
        Py_ssize_t probes = 0;
        while (tk[s] != EMPTY_KEY && tk[s] != key) {
            s = (s + 1) & mask;
            if (++probes == cap) {
                full = 1;
                break;
            }
        }
        if (full)
            break;
        if (tk[s] == EMPTY_KEY) {
            tk[s] = key;
            tv[s] = (int32_t)value++;
        }
        out[i] = tv[s];
    }
    Py_END_ALLOW_THREADS
    if (full) {
        /* back to the table before the call: its entries hold the values from `next` on, and
           with linear probing no older entry's probe passes a newer one */
        for (Py_ssize_t s = 0; s < cap; s++)
            if (tk[s] != EMPTY_KEY && tv[s] >= next)
                tk[s] = EMPTY_KEY;
        PyErr_SetString(PyExc_ValueError, "int_insert: the table is full");
        goto fail;
    }
    release(b, got);
    return PyLong_FromLongLong(value);
fail:
    release(b, got);
    return NULL;
}

/* str_index(tcodes, thash, koffs, kdata, qoffs, qdata, out, add_from) -> number added.
 * For each query string i (Arrow offsets qoffs[i]..qoffs[i+1] into qdata): out[i] = the code
 * of an equal known string (offsets koffs, data kdata; code = position), else, when
 * add_from >= 0, a new code add_from, add_from + 1, ... in the order first met (a string met
 * again in the same query gets the same code), else -1. The caller then appends the new
 * strings, in code order, to its known array, and leaves room in the table for every query
 * string. */
static PyObject *str_index(PyObject *self, PyObject *args)
{
    PyObject *o[7];
    Py_buffer b[7];
    long long add_from;
    int got = 0, full = 0;
    int64_t *first = NULL;
    if (!PyArg_ParseTuple(args, "OOOOOOOL", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                          &add_from))
        return NULL;
    static const char *names[] = {"tcodes", "thash", "koffs", "kdata", "qoffs", "qdata", "out"};
    static const Py_ssize_t sizes[] = {8, 8, 4, 1, 4, 1, 8};
    if ((got = get_buffers(o, b, 7, names, sizes, 0x43)) < 0)
        return NULL;
    Py_ssize_t cap = b[0].len / 8, nk = b[2].len / 4 - 1, n = b[4].len / 4 - 1;
    if (!power_of_two(cap) || b[1].len / 8 != cap || nk < 0 || n < 0 || b[6].len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "str_index: bad table, offsets or output size");
        goto fail;
    }
    int64_t *tc = b[0].buf, *out = b[6].buf;
    uint64_t *th = b[1].buf;
    const int32_t *ko = b[2].buf, *qo = b[4].buf;
    const uint8_t *kd = b[3].buf, *qd = b[5].buf;
    int bad = ko[nk] > b[3].len || qo[n] > b[5].len || ko[0] < 0 || qo[0] < 0;
    for (Py_ssize_t i = 0; i < nk && !bad; i++)
        bad = ko[i + 1] < ko[i];
    for (Py_ssize_t i = 0; i < n && !bad; i++)
        bad = qo[i + 1] < qo[i];
    if (bad || (add_from >= 0 && add_from != nk)) {
        PyErr_SetString(PyExc_ValueError, "str_index: offsets not increasing, past the data, "
                                          "or new codes not following the known strings");
        goto fail;
    }
    uint64_t mask = (uint64_t)cap - 1;
    int64_t added = 0;
    int nomem = 0;
    SCRATCH_BEGIN(n)
    if (add_from >= 0 && n > 0) {
        first = scratch_get(SCRATCH_FIRST, (size_t)n * sizeof(int64_t)); /* new code -> query */
        nomem = first == NULL;
    }
    for (Py_ssize_t i = 0; i < n && !nomem; i++) {
        const uint8_t *p = qd + qo[i];
        int64_t len = (int64_t)qo[i + 1] - qo[i];
        uint64_t h = hash_bytes(p, len);
        uint64_t s = h & mask;
        int64_t code = -1;
        Py_ssize_t probes = 0;
        while (tc[s] >= 0) {
            if (th[s] == h) {
                int64_t c = tc[s];
                const uint8_t *q;
                int64_t qlen;
                if (c >= nk + added) { /* a code of no string: a failed call left it */
                    full = 2;
                    break;
                }
                if (c >= nk) {
                    Py_ssize_t j = first[c - add_from];
                    q = qd + qo[j];
                    qlen = (int64_t)qo[j + 1] - qo[j];
                } else {
                    q = kd + ko[c];
                    qlen = (int64_t)ko[c + 1] - ko[c];
                }
                if (qlen == len && memcmp(p, q, (size_t)len) == 0) {
                    code = c;
                    break;
                }
            }
            s = (s + 1) & mask;
            if (++probes == cap) {
                full = 1;
                break;
            }
        }
        if (full)
            break;
        if (code < 0 && add_from >= 0) {
            code = add_from + added;
            first[added++] = i;
            tc[s] = code;
            th[s] = h;
        }
        out[i] = code;
    }
    SCRATCH_END
    if (nomem) {
        PyErr_NoMemory();
        goto fail;
    }
    if (full) {
        PyErr_SetString(PyExc_ValueError, full == 1 ? "str_index: the table is full"
                                                    : "str_index: the table holds a code past "
                                                      "the known strings");
        goto fail;
    }
    release(b, got);
    return PyLong_FromLongLong(added);
fail:
    release(b, got);
    return NULL;
}

/* rehash(new_a, new_b, old_a, old_b, strings): the filled slots of an old table put into a new
 * (empty, larger) one, both of either kind:
 *   int table     a = keys (EMPTY_KEY: empty), b = int32 values; a slot's probe starts at mix64(key)
 *   string table  a = codes (-1: empty), b = uint64 hashes; it starts at the hash (`strings`) */
static PyObject *rehash(PyObject *self, PyObject *args)
{
    PyObject *o[4];
    Py_buffer b[4];
    int got = 0, strings;
    if (!PyArg_ParseTuple(args, "OOOOp", &o[0], &o[1], &o[2], &o[3], &strings))
        return NULL;
    static const char *names[] = {"new_a", "new_b", "old_a", "old_b"};
    const Py_ssize_t w = strings ? 8 : 4, sizes[] = {8, w, 8, w};
    if ((got = get_buffers(o, b, 4, names, sizes, 0x3)) < 0)
        return NULL;
    Py_ssize_t cap = b[0].len / 8, old = b[2].len / 8;
    if (!power_of_two(cap) || b[1].len / w != cap || b[3].len / w != old || old > cap) {
        PyErr_SetString(PyExc_ValueError, "rehash: bad table sizes");
        goto fail;
    }
    int64_t *na = b[0].buf;
    const int64_t *oa = b[2].buf;
    char *nb = b[1].buf;
    const char *ob = b[3].buf;
    const int64_t empty = strings ? -1 : EMPTY_KEY;
    uint64_t mask = (uint64_t)cap - 1;
    int full = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < old; i++) {
        if (strings ? oa[i] < 0 : oa[i] == EMPTY_KEY)
            continue;
        uint64_t h;
        if (strings)
            memcpy(&h, ob + i * w, 8);
        else
            h = mix64((uint64_t)oa[i]);
        uint64_t s = h & mask;
        Py_ssize_t probes = 0;
        while (na[s] != empty && ++probes < cap) /* a full new table: refused below */
            s = (s + 1) & mask;
        if (na[s] != empty) {
            full = 1;
            break;
        }
        na[s] = oa[i];
        memcpy(nb + s * w, ob + i * w, (size_t)w);
    }
    Py_END_ALLOW_THREADS
    if (full) {
        PyErr_SetString(PyExc_ValueError, "rehash: the new table has no free slot (not empty?)");
        goto fail;
    }
    release(b, got);
    Py_RETURN_NONE;
fail:
    release(b, got);
    return NULL;
}


/* ---- one hour's events as of each query instant -----------------------------------------------
 *
 * hour_as_of(Q, I, i_cost, C, O, o_spend, n, mi, mc, nu, nc, nd): one pass through the hour's
 * events and the query instants in time order; a query at t sees the events with ts < t (at
 * equal times queries go first). Per local user code (0 <= user < nu) it keeps running counts,
 * spend, last and first times, and first touches of (user, campaign) and (user, domain) keys the
 * snapshot lacks; per (user, campaign) key, counts. Each query reads them at its instant.
 *
 * Q (int64, 4 x n):   order (query positions by t, ascending), user, t, campaign (-1: none)
 * I (int64, 6 x mi):  order (by ms), user (-1: no query asks), ms, campaign, domain (-1: none),
 *                     known (bit 0: the snapshot holds (user, campaign); bit 1: (user, domain))
 * i_cost (float64, mi)
 * C (int64, 5 x mc):  order, user, ms, campaign, known (bit 0)
 * O (int64, 9 x n):   impressions, clicks, last impression ms, last click ms (NULL_MS: none),
 *                     first event ms (INT64_MAX: none), new campaigns, new domains, and this
 *                     user's impressions and clicks on the query's campaign - all since the
 *                     hour's start and before t
 * o_spend (float64, n): spend since the hour's start and before t, summed in time order
 */

#define NULL_MS INT64_MIN

/* One slot per (user, campaign) key, its counts beside it: one cache line touched per probe. */
typedef struct {
    int64_t key; /* EMPTY_KEY: empty */
    int64_t imps, clks;
} PairSlot;

typedef struct {
    PairSlot *slots;
    uint64_t mask;
} PairMap;

static int pairmap_init(PairMap *m, Py_ssize_t entries, int slot)
{
    uint64_t cap = 1024;
    while (cap * 7 < (uint64_t)entries * 10) /* at most 70 % full, as the tables above */
        cap <<= 1;
    m->mask = cap - 1;
    m->slots = scratch_get(slot, cap * sizeof(PairSlot));
    if (!m->slots)
        return -1;
    for (uint64_t i = 0; i < cap; i++) {
        m->slots[i].key = EMPTY_KEY;
        m->slots[i].imps = m->slots[i].clks = 0;
    }
    return 0;
}

/* The slot of `key`; *fresh tells whether it was added now (the map has room for every key). */
static inline PairSlot *pairmap_slot(PairMap *m, int64_t key, int *fresh)
{
    uint64_t s = mix64((uint64_t)key) & m->mask;
    while (m->slots[s].key != EMPTY_KEY && m->slots[s].key != key)
        s = (s + 1) & m->mask;
    *fresh = m->slots[s].key == EMPTY_KEY;
    m->slots[s].key = key;
    return &m->slots[s];
}

static inline const PairSlot *pairmap_find(const PairMap *m, int64_t key)
{
    uint64_t s = mix64((uint64_t)key) & m->mask;
    while (m->slots[s].key != EMPTY_KEY) {
        if (m->slots[s].key == key)
            return &m->slots[s];
        s = (s + 1) & m->mask;
    }
    return NULL;
}

/* A set of int64 keys (EMPTY_KEY: empty slot), at most 70 % full. */
typedef struct {
    int64_t *keys;
    uint64_t mask;
} KeySet;

static int keyset_init(KeySet *m, Py_ssize_t entries, int slot)
{
    uint64_t cap = 1024;
    while (cap * 7 < (uint64_t)entries * 10)
        cap <<= 1;
    m->mask = cap - 1;
    m->keys = scratch_get(slot, cap * sizeof(int64_t));
    if (!m->keys)
        return -1;
    for (uint64_t i = 0; i < cap; i++)
        m->keys[i] = EMPTY_KEY;
    return 0;
}

/* Adds `key`; whether it was new. */
static inline int keyset_add(KeySet *m, int64_t key)
{
    uint64_t s = mix64((uint64_t)key) & m->mask;
    while (m->keys[s] != EMPTY_KEY && m->keys[s] != key)
        s = (s + 1) & m->mask;
    int fresh = m->keys[s] == EMPTY_KEY;
    m->keys[s] = key;
    return fresh;
}

/* What one user's events since the hour's start add up to so far: one cache line. */
typedef struct {
    int64_t cnt_i, cnt_c, last_i, last_c, first, new_c, new_d;
    double spend;
} UserRun;

static PyObject *hour_as_of(PyObject *self, PyObject *args)
{
    PyObject *o[6];
    Py_buffer b[6];
    long long n, mi, mc, nu, nc, nd;
    int got = 0, ok = 1;
    if (!PyArg_ParseTuple(args, "OOOOOOLLLLLL", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &n,
                          &mi, &mc, &nu, &nc, &nd))
        return NULL;
    static const char *names[] = {"Q", "I", "f:i_cost", "C", "O", "f:o_spend"};
    static const Py_ssize_t sizes[] = {8, 8, 8, 8, 8, 8};
    if ((got = get_buffers(o, b, 6, names, sizes, 0x30)) < 0)
        return NULL;
    if (BAD_COUNT(n) || BAD_COUNT(mi) || BAD_COUNT(mc) || BAD_COUNT(nu) || BAD_COUNT(nc) ||
        BAD_COUNT(nd) || nc < 1 || nd < 1 || b[0].len != 4 * 8 * n ||
        b[1].len != 6 * 8 * mi || b[2].len != 8 * mi || b[3].len != 5 * 8 * mc ||
        b[4].len != 9 * 8 * n || b[5].len != 8 * n) {
        PyErr_SetString(PyExc_ValueError, "hour_as_of: array sizes do not match");
        goto fail;
    }
    const int64_t *Q = b[0].buf, *I = b[1].buf, *C = b[3].buf;
    const double *i_cost = b[2].buf;
    int64_t *O = b[4].buf;
    double *o_spend = b[5].buf;
    const int64_t *q_order = Q, *q_user = Q + n, *q_t = Q + 2 * n, *q_camp = Q + 3 * n;
    const int64_t *i_order = I, *i_user = I + mi, *i_ms = I + 2 * mi, *i_camp = I + 3 * mi,
                  *i_dom = I + 4 * mi, *i_known = I + 5 * mi;
    const int64_t *c_order = C, *c_user = C + mc, *c_ms = C + 2 * mc, *c_camp = C + 3 * mc,
                  *c_known = C + 4 * mc;
    /* every index and code in range: checked before the pass */
    for (Py_ssize_t k = 0; k < n && ok; k++)
        ok = q_order[k] >= 0 && q_order[k] < n && q_user[k] >= 0 && q_user[k] < nu &&
             q_camp[k] >= -1 && q_camp[k] < nc;
    for (Py_ssize_t k = 0; k < mi && ok; k++)
        ok = i_order[k] >= 0 && i_order[k] < mi && i_user[k] >= -1 && i_user[k] < nu &&
             i_camp[k] >= 0 && i_camp[k] < nc && i_dom[k] >= -1 && i_dom[k] < nd;
    for (Py_ssize_t k = 0; k < mc && ok; k++)
        ok = c_order[k] >= 0 && c_order[k] < mc && c_user[k] >= -1 && c_user[k] < nu &&
             c_camp[k] >= 0 && c_camp[k] < nc;
    if (!ok || (nu > 0 && (nc > INT64_MAX / nu || nd > INT64_MAX / nu))) {
        PyErr_SetString(PyExc_ValueError, "hour_as_of: an index or code out of range");
        goto fail;
    }
    int mem;
    SCRATCH_BEGIN(n + mi + mc)
    UserRun *run = scratch_get(SCRATCH_RUN, ((size_t)nu + 1) * sizeof(UserRun));
    PairMap camps = {0};
    KeySet doms = {0};
    mem = run && pairmap_init(&camps, mi + mc, SCRATCH_PAIRS) == 0 &&
              keyset_init(&doms, mi, SCRATCH_DOMAINS) == 0;
    if (mem) {
        for (Py_ssize_t u = 0; u < nu; u++) {
            UserRun zero = {0, 0, NULL_MS, NULL_MS, INT64_MAX, 0, 0, 0.0};
            run[u] = zero;
        }
        Py_ssize_t qi = 0, ii = 0, ci = 0;
        const Py_ssize_t ahead = 8; /* prefetch distance: the walk is bound by memory latency */
        while (qi < n) {
            int64_t tq = q_t[q_order[qi]];
            int64_t ti = ii < mi ? i_ms[i_order[ii]] : INT64_MAX;
            int64_t tc = ci < mc ? c_ms[c_order[ci]] : INT64_MAX;
            if (tq <= ti && tq <= tc) { /* a query: the events before it are in */
                if (qi + ahead < n) {
                    Py_ssize_t f = q_order[qi + ahead];
                    __builtin_prefetch(&run[q_user[f]]);
                    if (q_camp[f] >= 0)
                        __builtin_prefetch(&camps.slots[mix64((uint64_t)(q_user[f] * nc +
                                                                        q_camp[f])) & camps.mask]);
                }
                Py_ssize_t k = q_order[qi++];
                const UserRun *r = &run[q_user[k]];
                O[k] = r->cnt_i;
                O[n + k] = r->cnt_c;
                O[2 * n + k] = r->last_i;
                O[3 * n + k] = r->last_c;
                O[4 * n + k] = r->first;
                O[5 * n + k] = r->new_c;
                O[6 * n + k] = r->new_d;
                const PairSlot *at =
                    q_camp[k] >= 0 ? pairmap_find(&camps, q_user[k] * nc + q_camp[k]) : NULL;
                O[7 * n + k] = at ? at->imps : 0;
                O[8 * n + k] = at ? at->clks : 0;
                o_spend[k] = r->spend;
            } else if (ti <= tc) {
                if (ii + ahead < mi) {
                    Py_ssize_t f = i_order[ii + ahead];
                    if (i_user[f] >= 0) {
                        __builtin_prefetch(&run[i_user[f]]);
                        __builtin_prefetch(&camps.slots[mix64((uint64_t)(i_user[f] * nc +
                                                                        i_camp[f])) & camps.mask]);
                        if (i_dom[f] >= 0)
                            __builtin_prefetch(&doms.keys[mix64((uint64_t)(i_user[f] * nd +
                                                                          i_dom[f])) & doms.mask]);
                    }
                }
                Py_ssize_t e = i_order[ii++];
                int64_t u = i_user[e];
                if (u < 0)
                    continue;
                UserRun *r = &run[u];
                r->cnt_i++;
                r->spend += i_cost[e];
                r->last_i = ti;
                if (r->first == INT64_MAX)
                    r->first = ti;
                int fresh;
                PairSlot *slot = pairmap_slot(&camps, u * nc + i_camp[e], &fresh);
                slot->imps++;
                if (fresh && !(i_known[e] & 1))
                    r->new_c++;
                if (i_dom[e] >= 0 && keyset_add(&doms, u * nd + i_dom[e]) && !(i_known[e] & 2))
                    r->new_d++;
            } else {
                Py_ssize_t e = c_order[ci++];
                int64_t u = c_user[e];
                if (u < 0)
                    continue;
                UserRun *r = &run[u];
                r->cnt_c++;
                r->last_c = tc;
                if (r->first == INT64_MAX)
                    r->first = tc;
                int fresh;
                PairSlot *slot = pairmap_slot(&camps, u * nc + c_camp[e], &fresh);
                slot->clks++;
                if (fresh && !(c_known[e] & 1))
                    r->new_c++;
            }
        }
    }
    SCRATCH_END
    if (!mem) {
        PyErr_NoMemory();
        goto fail;
    }
    release(b, got);
    Py_RETURN_NONE;
fail:
    release(b, got);
    return NULL;
}


/* ---- running sums and latest values per code, as of each instant -------------------------------
 *
 * Both walk query instants and events in time order (orders given by the caller); a query at
 * t sees the events with ms < t (at equal times queries go first). Codes are dense: 0 <= code <
 * ncodes for events, queries may carry -1 (nothing found for them).
 *
 * sums_as_of(Q, E, O, n, m, ncodes)
 *   Q (int64, 3 x n): order, code, t         E (int64, 5 x m): order, code, ms, w1, w2
 *   O (int64, 2 x n): the sums of w1 and w2 over the events of the query's code before t
 *
 * latest_as_of(Q, E, e_score, o_score, o_when, n, m, ncodes)
 *   E (int64, 4 x m): order, code, ms, rank    e_score (float64, m)
 *   o_score, o_when (float64, n): the score and ms of the code's latest event before t - the
 *   greatest rank among events at that ms - NaN when there is none
 */

static int check_walk(const int64_t *order, const int64_t *code, Py_ssize_t len,
                      int64_t ncodes, int allow_none)
{
    for (Py_ssize_t k = 0; k < len; k++)
        if (order[k] < 0 || order[k] >= len || code[k] < (allow_none ? -1 : 0) ||
            code[k] >= ncodes)
            return 0;
    return 1;
}

static PyObject *sums_as_of(PyObject *self, PyObject *args)
{
    PyObject *o[3];
    Py_buffer b[3];
    long long n, m, ncodes;
    int got = 0;
    if (!PyArg_ParseTuple(args, "OOOLLL", &o[0], &o[1], &o[2], &n, &m, &ncodes))
        return NULL;
    static const char *names[] = {"Q", "E", "O"};
    static const Py_ssize_t sizes[] = {8, 8, 8};
    if ((got = get_buffers(o, b, 3, names, sizes, 0x4)) < 0)
        return NULL;
    if (BAD_COUNT(n) || BAD_COUNT(m) || BAD_COUNT(ncodes) || b[0].len != 3 * 8 * n ||
        b[1].len != 5 * 8 * m ||
        b[2].len != 2 * 8 * n) {
        PyErr_SetString(PyExc_ValueError, "sums_as_of: array sizes do not match");
        goto fail;
    }
    const int64_t *Q = b[0].buf, *E = b[1].buf;
    int64_t *O = b[2].buf;
    const int64_t *q_order = Q, *q_code = Q + n, *q_t = Q + 2 * n;
    const int64_t *e_order = E, *e_code = E + m, *e_ms = E + 2 * m, *w1 = E + 3 * m,
                  *w2 = E + 4 * m;
    if (!check_walk(q_order, q_code, n, ncodes, 1) || !check_walk(e_order, e_code, m, ncodes, 0)) {
        PyErr_SetString(PyExc_ValueError, "sums_as_of: an index or code out of range");
        goto fail;
    }
    size_t bytes = 2 * ((size_t)ncodes + 1) * sizeof(int64_t);
    int64_t *sums;
    SCRATCH_BEGIN(n + m)
    sums = scratch_get(SCRATCH_CODES, bytes); /* per code: w1, w2 */
    if (sums)
        memset(sums, 0, bytes);
    Py_ssize_t qi = 0, ei = 0;
    while (sums && qi < n) {
        Py_ssize_t k = q_order[qi];
        if (ei < m && e_ms[e_order[ei]] < q_t[k]) {
            Py_ssize_t e = e_order[ei++];
            sums[2 * e_code[e]] += w1[e];
            sums[2 * e_code[e] + 1] += w2[e];
            continue;
        }
        qi++;
        O[k] = q_code[k] >= 0 ? sums[2 * q_code[k]] : 0;
        O[n + k] = q_code[k] >= 0 ? sums[2 * q_code[k] + 1] : 0;
    }
    SCRATCH_END
    if (!sums) {
        PyErr_NoMemory();
        goto fail;
    }
    release(b, got);
    Py_RETURN_NONE;
fail:
    release(b, got);
    return NULL;
}

static PyObject *latest_as_of(PyObject *self, PyObject *args)
{
    PyObject *o[5];
    Py_buffer b[5];
    long long n, m, ncodes;
    int got = 0;
    if (!PyArg_ParseTuple(args, "OOOOOLLL", &o[0], &o[1], &o[2], &o[3], &o[4], &n, &m, &ncodes))
        return NULL;
    static const char *names[] = {"Q", "E", "f:e_score", "f:o_score", "f:o_when"};
    static const Py_ssize_t sizes[] = {8, 8, 8, 8, 8};
    if ((got = get_buffers(o, b, 5, names, sizes, 0x18)) < 0)
        return NULL;
    if (BAD_COUNT(n) || BAD_COUNT(m) || BAD_COUNT(ncodes) || b[0].len != 3 * 8 * n ||
        b[1].len != 4 * 8 * m ||
        b[2].len != 8 * m || b[3].len != 8 * n || b[4].len != 8 * n) {
        PyErr_SetString(PyExc_ValueError, "latest_as_of: array sizes do not match");
        goto fail;
    }
    const int64_t *Q = b[0].buf, *E = b[1].buf;
    const double *e_score = b[2].buf;
    double *o_score = b[3].buf, *o_when = b[4].buf;
    const int64_t *q_order = Q, *q_code = Q + n, *q_t = Q + 2 * n;
    const int64_t *e_order = E, *e_code = E + m, *e_ms = E + 2 * m, *e_rank = E + 3 * m;
    if (!check_walk(q_order, q_code, n, ncodes, 1) || !check_walk(e_order, e_code, m, ncodes, 0)) {
        PyErr_SetString(PyExc_ValueError, "latest_as_of: an index or code out of range");
        goto fail;
    }
    /* per code: its latest event so far (index, -1: none), that event's ms and rank beside it */
    typedef struct {
        int64_t at, ms, rank;
    } Latest;
    Latest *best;
    SCRATCH_BEGIN(n + m)
    best = scratch_get(SCRATCH_CODES, ((size_t)ncodes + 1) * sizeof(Latest));
    for (Py_ssize_t c = 0; best && c < ncodes; c++)
        best[c].at = -1;
    Py_ssize_t qi = 0, ei = 0;
    while (best && qi < n) {
        Py_ssize_t k = q_order[qi];
        if (ei < m && e_ms[e_order[ei]] < q_t[k]) {
            Py_ssize_t e = e_order[ei++];
            Latest *cur = &best[e_code[e]];
            /* in time order: a later ms wins, at the same ms the greater rank (the later
             * event in the given order among equal ranks, as a stable sort keeps it) */
            if (cur->at < 0 || e_ms[e] > cur->ms || e_rank[e] >= cur->rank) {
                cur->at = e;
                cur->ms = e_ms[e];
                cur->rank = e_rank[e];
            }
            continue;
        }
        qi++;
        int64_t at = q_code[k] >= 0 ? best[q_code[k]].at : -1;
        o_score[k] = at >= 0 ? e_score[at] : Py_NAN;
        o_when[k] = at >= 0 ? (double)e_ms[at] : Py_NAN;
    }
    SCRATCH_END
    if (!best) {
        PyErr_NoMemory();
        goto fail;
    }
    release(b, got);
    Py_RETURN_NONE;
fail:
    release(b, got);
    return NULL;
}


/* scatter_add(target, idx, vals): target[idx[i]] += vals[i] in order (float64 target and values,
 * int32 indices checked in range): numpy's `target[idx] += vals` without its gather, temporary
 * and scatter, the same additions in the same order for distinct indices. */
static PyObject *scatter_add(PyObject *self, PyObject *args)
{
    PyObject *o[3];
    Py_buffer b[3];
    int got = 0;
    if (!PyArg_ParseTuple(args, "OOO", &o[0], &o[1], &o[2]))
        return NULL;
    static const char *names[] = {"f:target", "idx", "f:vals"};
    static const Py_ssize_t sizes[] = {8, 4, 8};
    if ((got = get_buffers(o, b, 3, names, sizes, 0x1)) < 0)
        return NULL;
    Py_ssize_t nt = b[0].len / 8, n = b[1].len / 4;
    if (b[2].len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "scatter_add: idx and vals differ in length");
        goto fail;
    }
    double *target = b[0].buf;
    const int32_t *idx = b[1].buf;
    const double *vals = b[2].buf;
    for (Py_ssize_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= nt) {
            PyErr_SetString(PyExc_IndexError, "scatter_add: an index out of range");
            goto fail;
        }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        target[idx[i]] += vals[i];
    Py_END_ALLOW_THREADS
    release(b, got);
    Py_RETURN_NONE;
fail:
    release(b, got);
    return NULL;
}

static PyMethodDef methods[] = {
    {"int_find", int_find, METH_VARARGS, "int_find(tkeys, tvals, keys, out)"},
    {"int_insert", int_insert, METH_VARARGS, "int_insert(tkeys, tvals, keys, out, next) -> next"},
    {"str_index", str_index, METH_VARARGS,
     "str_index(tcodes, thash, koffs, kdata, qoffs, qdata, out, add_from) -> added"},
    {"rehash", rehash, METH_VARARGS, "rehash(new_a, new_b, old_a, old_b, strings)"},
    {"sums_as_of", sums_as_of, METH_VARARGS, "sums_as_of(Q, E, O, n, m, ncodes)"},
    {"scatter_add", scatter_add, METH_VARARGS, "scatter_add(target, idx, vals)"},
    {"latest_as_of", latest_as_of, METH_VARARGS,
     "latest_as_of(Q, E, e_score, o_score, o_when, n, m, ncodes)"},
    {"hour_as_of", hour_as_of, METH_VARARGS,
     "hour_as_of(Q, I, i_cost, C, O, o_spend, n, mi, mc, nu, nc, nd)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hashkeys",
    "Open-addressing hash tables over caller-owned arrays (see hashtables.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hashkeys(void)
{
    scratch_lock = PyThread_allocate_lock();
    if (scratch_lock == NULL)
        return PyErr_NoMemory();
    return PyModule_Create(&module);
}
