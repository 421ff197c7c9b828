/* Open-addressing hash tables for the carried state of a range of labeled hours.
 *
 * The tables live in arrays the caller owns (numpy arrays, passed through the buffer
 * protocol); these functions only probe and fill them, without the GIL. Python decides when a
 * table grows (see hashtables.py) and keeps it at most 70 % full, so a probe sequence always
 * reaches an empty slot (checked all the same). Linear probing over splitmix64-mixed keys.
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

/* A buffer of `itemsize`-byte items, C-contiguous; `what` names it in errors. */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize,
                      const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: items of %zd bytes expected, got %zd", what,
                     itemsize, view->itemsize);
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
    for (; got < 4; got++)
        if (get_buffer(o[got], &b[got], got == 3, got == 1 ? 4 : 8, names[got]) < 0)
            goto fail;
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
            while (tk[s] != EMPTY_KEY) {
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
    for (; got < 4; got++)
        if (get_buffer(o[got], &b[got], got != 2, got == 1 ? 4 : 8, names[got]) < 0)
            goto fail;
    Py_ssize_t cap = b[0].len / 8, n = b[2].len / 8;
    if (!power_of_two(cap) || b[1].len / 4 != cap || b[3].len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "int_insert: bad table or output size");
        goto fail;
    }
    if (next < 0 || next + n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "int_insert: values past 2**31 - 1");
        goto fail;
    }
    int64_t *tk = b[0].buf, *out = b[3].buf;
    int32_t *tv = b[1].buf;
    const int64_t *keys = b[2].buf;
    uint64_t mask = (uint64_t)cap - 1;
    int64_t value = next;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && !full; i++) {
        int64_t key = keys[i];
        if (key == EMPTY_KEY) {
            full = 2;
            break;
        }
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
        PyErr_SetString(PyExc_ValueError, full == 1 ? "int_insert: the table is full"
                                                    : "int_insert: INT64_MIN is not a key");
        goto fail;
    }
    release(b, got);
    return PyLong_FromLongLong(value);
fail:
    release(b, got);
    return NULL;
}

/* int_rehash(tkeys, tvals, old_keys, old_vals): every filled slot of the old table put into
 * the new (empty, larger) one. */
static PyObject *int_rehash(PyObject *self, PyObject *args)
{
    PyObject *o[4];
    Py_buffer b[4];
    int got = 0;
    if (!PyArg_ParseTuple(args, "OOOO", &o[0], &o[1], &o[2], &o[3]))
        return NULL;
    static const char *names[] = {"tkeys", "tvals", "old_keys", "old_vals"};
    for (; got < 4; got++)
        if (get_buffer(o[got], &b[got], got < 2, got % 2 ? 4 : 8, names[got]) < 0)
            goto fail;
    Py_ssize_t cap = b[0].len / 8, old = b[2].len / 8;
    if (!power_of_two(cap) || b[1].len / 4 != cap || b[3].len / 4 != old || old > cap) {
        PyErr_SetString(PyExc_ValueError, "int_rehash: bad table sizes");
        goto fail;
    }
    int64_t *tk = b[0].buf;
    int32_t *tv = b[1].buf;
    const int64_t *ok = b[2].buf;
    const int32_t *ov = b[3].buf;
    uint64_t mask = (uint64_t)cap - 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < old; i++) {
        if (ok[i] == EMPTY_KEY)
            continue;
        uint64_t s = mix64((uint64_t)ok[i]) & mask;
        while (tk[s] != EMPTY_KEY)
            s = (s + 1) & mask;
        tk[s] = ok[i];
        tv[s] = ov[i];
    }
    Py_END_ALLOW_THREADS
    release(b, got);
    Py_RETURN_NONE;
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
    for (; got < 7; got++)
        if (get_buffer(o[got], &b[got], got < 2 || got == 6, sizes[got], names[got]) < 0)
            goto fail;
    Py_ssize_t cap = b[0].len / 8, nk = b[2].len / 4 - 1, n = b[4].len / 4 - 1;
    if (!power_of_two(cap) || b[1].len / 8 != cap || nk < 0 || n < 0 || b[6].len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "str_index: bad table, offsets or output size");
        goto fail;
    }
    int64_t *tc = b[0].buf, *out = b[6].buf;
    uint64_t *th = b[1].buf;
    const int32_t *ko = b[2].buf, *qo = b[4].buf;
    const uint8_t *kd = b[3].buf, *qd = b[5].buf;
    if (ko[nk] > b[3].len || qo[n] > b[5].len || (nk >= 0 && ko[0] < 0) || qo[0] < 0) {
        PyErr_SetString(PyExc_ValueError, "str_index: offsets past the data");
        goto fail;
    }
    if (add_from >= 0 && n > 0) {
        first = malloc((size_t)n * sizeof(int64_t)); /* new code - add_from -> query index */
        if (first == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
    }
    uint64_t mask = (uint64_t)cap - 1;
    int64_t added = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
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
                if (add_from >= 0 && c >= add_from) {
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
    Py_END_ALLOW_THREADS
    free(first);
    if (full) {
        PyErr_SetString(PyExc_ValueError, "str_index: the table is full");
        goto fail;
    }
    release(b, got);
    return PyLong_FromLongLong(added);
fail:
    release(b, got);
    return NULL;
}

/* str_rehash(tcodes, thash, old_codes, old_hash): the filled slots of the old table put into
 * the new (empty, larger) one. */
static PyObject *str_rehash(PyObject *self, PyObject *args)
{
    PyObject *o[4];
    Py_buffer b[4];
    int got = 0;
    if (!PyArg_ParseTuple(args, "OOOO", &o[0], &o[1], &o[2], &o[3]))
        return NULL;
    static const char *names[] = {"tcodes", "thash", "old_codes", "old_hash"};
    for (; got < 4; got++)
        if (get_buffer(o[got], &b[got], got < 2, 8, names[got]) < 0)
            goto fail;
    Py_ssize_t cap = b[0].len / 8, old = b[2].len / 8;
    if (!power_of_two(cap) || b[1].len / 8 != cap || b[3].len / 8 != old || old > cap) {
        PyErr_SetString(PyExc_ValueError, "str_rehash: bad table sizes");
        goto fail;
    }
    int64_t *tc = b[0].buf;
    uint64_t *th = b[1].buf;
    const int64_t *oc = b[2].buf;
    const uint64_t *oh = b[3].buf;
    uint64_t mask = (uint64_t)cap - 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < old; i++) {
        if (oc[i] < 0)
            continue;
        uint64_t s = oh[i] & mask;
        while (tc[s] >= 0)
            s = (s + 1) & mask;
        tc[s] = oc[i];
        th[s] = oh[i];
    }
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
    {"int_rehash", int_rehash, METH_VARARGS, "int_rehash(tkeys, tvals, old_keys, old_vals)"},
    {"str_index", str_index, METH_VARARGS,
     "str_index(tcodes, thash, koffs, kdata, qoffs, qdata, out, add_from) -> added"},
    {"str_rehash", str_rehash, METH_VARARGS, "str_rehash(tcodes, thash, old_codes, old_hash)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hashkeys",
    "Open-addressing hash tables over caller-owned arrays (see hashtables.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__hashkeys(void)
{
    return PyModule_Create(&module);
}
