/* Rows of plain landing lines, without building a dict per line.
 *
 * A landing line is almost always a flat JSON object holding exactly its stream's fields, with
 * ASCII strings free of escapes, plain numbers and nulls. `rows` turns such a line into the row
 * tuple `events.parse_object` would make of it, and says "not sure" (None) for anything else:
 * escapes, non-ASCII bytes, unknown or repeated keys, nested values, booleans, integers where a
 * float is expected, ids given as numbers, blank required values, time forms other than epoch
 * milliseconds or `YYYY-MM-DDTHH:MM:SS.mmmZ`, values out of range. The caller then decodes that
 * line with orjson and asks `parse_object`, so every verdict and every row is still theirs
 * (tests compare the two on messy streams and hand-made lines).
 *
 * Field kinds (one byte each): 'I'/'i' required/optional text or id, 'T' time (required),
 * 'F'/'f' required/optional float.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FIELDS 16

enum { TOK_ABSENT = 0, TOK_NULL, TOK_STRING, TOK_INT, TOK_FLOAT };

typedef struct {
    int type;
    const char *p; /* strings: the characters between the quotes; numbers: the literal */
    Py_ssize_t len;
} token;

static inline int json_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static inline const char *skip_ws(const char *p, const char *end)
{
    while (p < end && json_ws(*p))
        p++;
    return p;
}

/* A plain string body from just after its opening quote: printable ASCII, no backslash. The
 * closing quote's position, or NULL. */
static inline const char *plain_string(const char *p, const char *end)
{
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p;
        if (c < 0x20 || c >= 0x80 || c == '\\')
            return NULL;
        p++;
    }
    return NULL;
}

static inline int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* A JSON number by its grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?. Its end, or
 * NULL; *is_float when it has a fraction or an exponent (orjson makes a float of it). */
static const char *number(const char *p, const char *end, int *is_float)
{
    *is_float = 0;
    if (p < end && *p == '-')
        p++;
    if (p >= end || !is_digit(*p))
        return NULL;
    if (*p == '0')
        p++;
    else
        while (p < end && is_digit(*p))
            p++;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p))
            p++;
        *is_float = 1;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p))
            p++;
        *is_float = 1;
    }
    return p;
}

/* The tokens of a flat object holding only known keys, each at most once; 0 when the line is
 * anything else. */
static int tokenize(const char *p, const char *end, PyObject *const *names, Py_ssize_t nf,
                    token *tok)
{
    for (Py_ssize_t i = 0; i < nf; i++)
        tok[i].type = TOK_ABSENT;
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return 0;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return skip_ws(p + 1, end) == end;
    for (;;) {
        if (p >= end || *p != '"')
            return 0;
        const char *k = p + 1, *q = plain_string(k, end);
        if (q == NULL)
            return 0;
        Py_ssize_t klen = q - k, f = -1;
        for (Py_ssize_t i = 0; i < nf; i++)
            if (PyBytes_GET_SIZE(names[i]) == klen
                && memcmp(PyBytes_AS_STRING(names[i]), k, (size_t)klen) == 0) {
                f = i;
                break;
            }
        if (f < 0 || tok[f].type != TOK_ABSENT)
            return 0;
        p = skip_ws(q + 1, end);
        if (p >= end || *p != ':')
            return 0;
        p = skip_ws(p + 1, end);
        if (p >= end)
            return 0;
        if (*p == '"') {
            q = plain_string(p + 1, end);
            if (q == NULL)
                return 0;
            tok[f] = (token){TOK_STRING, p + 1, q - p - 1};
            p = q + 1;
        } else if (*p == 'n') {
            if (end - p < 4 || memcmp(p, "null", 4) != 0)
                return 0;
            tok[f] = (token){TOK_NULL, p, 4};
            p += 4;
        } else {
            int is_float;
            q = number(p, end, &is_float);
            if (q == NULL)
                return 0;
            tok[f] = (token){is_float ? TOK_FLOAT : TOK_INT, p, q - p};
            p = q;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}')
            return skip_ws(p + 1, end) == end;
        return 0;
    }
}

static int two(const char *s)
{
    return is_digit(s[0]) && is_digit(s[1]) ? (s[0] - '0') * 10 + (s[1] - '0') : -1;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* Epoch ms of `YYYY-MM-DDTHH:MM:SS.mmmZ` with a year in [2000, 2100) and a valid date and time
 * (no leap second); -1 otherwise. */
static int64_t iso_ms(const char *s, Py_ssize_t n)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (n != 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':'
        || s[19] != '.' || s[23] != 'Z')
        return -1;
    int cc = two(s), yy = two(s + 2), mo = two(s + 5), d = two(s + 8), h = two(s + 11),
        mi = two(s + 14), se = two(s + 17), m1 = two(s + 20), m2 = is_digit(s[22]) ? s[22] - '0' : -1;
    if (cc != 20 || yy < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0
        || mi > 59 || se < 0 || se > 59 || m1 < 0 || m2 < 0)
        return -1;
    int year = 2000 + yy;
    int leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    if (d > mdays[mo - 1] + (mo == 2 && leap))
        return -1;
    int64_t days = days_from_civil(year, mo, d);
    return ((days * 24 + h) * 60 + mi) * 60000 + se * 1000 + m1 * 10 + m2;
}

/* Whether a number literal's digits before its exponent are not all zeros (a literal that
 * reads as 0.0 then underflowed). */
static int nonzero_mantissa(const char *s)
{
    for (; *s && *s != 'e' && *s != 'E'; s++)
        if (*s >= '1' && *s <= '9')
            return 1;
    return 0;
}

/* The row of a tokenized line, or NULL with no error set when not sure (or with an error set
 * when Python ran out of memory). */
static PyObject *row_of(const token *tok, const char *kinds, Py_ssize_t nf, const double *lo,
                        const double *hi, int64_t ts_lo, int64_t ts_hi)
{
    PyObject *row = PyTuple_New(nf);
    if (row == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nf; i++) {
        const token *t = &tok[i];
        char kind = kinds[i];
        PyObject *v = NULL;
        if (t->type == TOK_ABSENT || t->type == TOK_NULL) {
            if (kind != 'i' && kind != 'f')
                goto unsure; /* a required field: parse_object says missing_field */
            v = Py_NewRef(Py_None);
        } else if (kind == 'I' || kind == 'i') {
            if (t->type != TOK_STRING)
                goto unsure;
            Py_ssize_t k = 0;
            while (k < t->len && t->p[k] == ' ')
                k++;
            if (k == t->len) { /* blank */
                if (kind == 'I')
                    goto unsure;
                v = Py_NewRef(Py_None);
            } else {
                v = PyUnicode_New(t->len, 127);
                if (v == NULL)
                    goto fail;
                memcpy(PyUnicode_1BYTE_DATA(v), t->p, (size_t)t->len);
            }
        } else if (kind == 'T') {
            int64_t ms;
            if (t->type == TOK_INT) {
                if (t->p[0] == '-' || t->len > 16)
                    goto unsure;
                ms = 0;
                for (Py_ssize_t k = 0; k < t->len; k++)
                    ms = ms * 10 + (t->p[k] - '0');
            } else if (t->type == TOK_STRING) {
                ms = iso_ms(t->p, t->len);
                if (ms < 0)
                    goto unsure;
            } else {
                goto unsure;
            }
            if (ms < ts_lo || ms > ts_hi)
                goto unsure;
            v = PyLong_FromLongLong(ms);
            if (v == NULL)
                goto fail;
        } else if (kind == 'F' || kind == 'f') {
            char buf[64], *end;
            if (t->type != TOK_FLOAT || t->len >= (Py_ssize_t)sizeof buf)
                goto unsure;
            memcpy(buf, t->p, (size_t)t->len);
            buf[t->len] = '\0';
            /* Python's own parser: correctly rounded, and blind to the C locale (strtod would
             * stop at the '.' where a decimal comma is the locale's). */
            double x = PyOS_string_to_double(buf, &end, NULL);
            if (x == -1.0 && PyErr_Occurred()) {
                PyErr_Clear();
                goto unsure;
            }
            /* beyond a double (orjson: invalid JSON), or below its smallest normal value
             * (left to orjson's own rounding) */
            if (end != buf + t->len || !isfinite(x) || (x != 0.0 && fabs(x) < DBL_MIN)
                || (x == 0.0 && nonzero_mantissa(buf)) || !(lo[i] <= x && x <= hi[i]))
                goto unsure;
            v = PyFloat_FromDouble(x);
            if (v == NULL)
                goto fail;
        } else {
            goto unsure;
        }
        PyTuple_SET_ITEM(row, i, v);
    }
    return row;
unsure:
    Py_DECREF(row);
    return NULL;
fail:
    Py_DECREF(row);
    return NULL;
}

static int blank(const char *p, Py_ssize_t n)
{
    /* bytes.isspace(): empty is not blank there, but the callers skip empty lines too */
    for (Py_ssize_t i = 0; i < n; i++)
        if (!strchr(" \t\n\r\x0b\x0c", p[i]) || p[i] == '\0')
            return 0;
    return 1;
}

/* rows(lines, names, kinds, lo, hi, ts_lo, ts_hi) -> (out, unsure, blank) */
static PyObject *rows(PyObject *self, PyObject *args)
{
    PyObject *lines, *names, *lo_o, *hi_o;
    const char *kinds;
    Py_ssize_t nk;
    long long ts_lo, ts_hi;
    if (!PyArg_ParseTuple(args, "O!O!y#O!O!LL", &PyList_Type, &lines, &PyTuple_Type, &names,
                          &kinds, &nk, &PyTuple_Type, &lo_o, &PyTuple_Type, &hi_o, &ts_lo,
                          &ts_hi))
        return NULL;
    Py_ssize_t nf = PyTuple_GET_SIZE(names);
    if (nf < 1 || nf > MAX_FIELDS || nk != nf || PyTuple_GET_SIZE(lo_o) != nf
        || PyTuple_GET_SIZE(hi_o) != nf) {
        PyErr_SetString(PyExc_ValueError, "rows: names, kinds, lo and hi must have one entry "
                                          "per field (at most 16)");
        return NULL;
    }
    PyObject *const *name = &PyTuple_GET_ITEM(names, 0);
    double lo[MAX_FIELDS], hi[MAX_FIELDS];
    for (Py_ssize_t i = 0; i < nf; i++) {
        if (!PyBytes_Check(name[i]) || !strchr("IiTFf", kinds[i]) || kinds[i] == '\0') {
            PyErr_SetString(PyExc_TypeError, "rows: names are bytes, kinds one of IiTFf");
            return NULL;
        }
        lo[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(lo_o, i));
        if (lo[i] == -1.0 && PyErr_Occurred())
            return NULL;
        hi[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(hi_o, i));
        if (hi[i] == -1.0 && PyErr_Occurred())
            return NULL;
    }
    /* A copy holding its own references: an allocation below may run a finalizer that changes
       `lines`, and the tokens point into a line's bytes until its row is made. */
    PyObject *seq = PyList_GetSlice(lines, 0, PY_SSIZE_T_MAX);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(seq), unsure = 0, blanks = 0;
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    token tok[MAX_FIELDS];
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *line = PyList_GET_ITEM(seq, j), *r;
        if (!PyBytes_Check(line)) {
            PyErr_SetString(PyExc_TypeError, "rows: lines must be bytes");
            Py_DECREF(out);
            Py_DECREF(seq);
            return NULL;
        }
        const char *p = PyBytes_AS_STRING(line);
        Py_ssize_t len = PyBytes_GET_SIZE(line);
        if (blank(p, len)) {
            r = Py_NewRef(Py_False);
            blanks++;
        } else if (tokenize(p, p + len, name, nf, tok)
                   && (r = row_of(tok, kinds, nf, lo, hi, ts_lo, ts_hi)) != NULL) {
            /* a row */
        } else {
            if (PyErr_Occurred()) {
                Py_DECREF(out);
                Py_DECREF(seq);
                return NULL;
            }
            r = Py_NewRef(Py_None);
            unsure++;
        }
        PyList_SET_ITEM(out, j, r);
    }
    Py_DECREF(seq);
    return Py_BuildValue("(Nnn)", out, unsure, blanks);
}

static PyMethodDef methods[] = {
    {"rows", rows, METH_VARARGS,
     "rows(lines, names, kinds, lo, hi, ts_lo, ts_hi) -> (out, unsure, blank): out[i] is line "
     "i's row, None (not sure: ask parse_object) or False (a blank line)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_plainjson",
    "Rows of plain landing lines (see events.plain_rows).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__plainjson(void)
{
    return PyModule_Create(&module);
}
