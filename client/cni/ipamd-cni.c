/*
 * ipamd-cni: the native CNI IPAM plugin of ipamd (C99, libc only, this one file).
 *
 * It forwards one CNI call to the node's ipamd over a unix socket, exactly as the Python plugin
 * client/ipamd_cni.py does (docs/architecture.md; docs/cni-socket.md): it reads CNI_* and all of stdin, sends them
 * unchanged in a framing v1 request, writes the daemon's stderr and stdout and exits with its status. Both plugins
 * pass one conformance suite (docs/conformance.md), and tests/integration/test_plugins.py runs them side by side.
 *
 * It parses nothing except ipam.socket (which socket to use) and cniVersion (for its own error object), with a
 * scanner that agrees with the daemon's json.loads: same encodings, escapes, nesting, duplicate keys (the last
 * wins) and refusals (docs/cni-socket.md "What the plugins read").
 *
 * Socket: the network configuration's ipam.socket, else IPAMD_CNI_SOCKET, else DEFAULT_SOCKET. Deadline:
 * IPAMD_CNI_TIMEOUT seconds for the whole exchange. If the daemon cannot be reached: a code-11 error naming the
 * socket (50 for STATUS), except VERSION, which it answers itself. stdout carries one JSON object or nothing.
 *
 * Built by setup.py (and deploy/Dockerfile):
 *   cc -std=c99 -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE -static-pie ...
 * With -DIPAMD_CNI_TEST it is instead a test tool (main at the end): "scan" prints what the scanner picks from
 * documents on stdin, "quote" the JSON string it writes for stdin's bytes, "timeout" how it reads
 * IPAMD_CNI_TIMEOUT, "plugin" is the plugin itself
 * (tests/unit/test_plugin_scanner.py, tests/integration/test_plugins.py).
 */

#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* The protocol: its Python home is client/ipamd_cni.py; tests/unit/test_plugin_scanner.py pins these to it. */
#define MAGIC "IPAMD1\n"
#define MAGIC_LEN 7
#define MAX_REQUEST (4UL << 20)
#define MAX_STDIN (MAX_REQUEST - (64UL << 10))
#define MAX_ANSWER MAX_REQUEST
#define DEFAULT_TIMEOUT 30.0
#define MAX_TIMEOUT 86400.0
#define DEFAULT_SOCKET "/run/ipamd/cni.sock"
#define SUPPORTED_VERSIONS "[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]"
#define MAX_INT_DIGITS 4300

#define CHUNK 65536

extern char **environ;

typedef unsigned char uchar;

/* ---- growable byte buffers; every allocation failure ends in fail_memory() ---------------------------------- */

struct buf {
    uchar *p;
    size_t len, cap;
};

static int write_all(int fd, const void *data, size_t n);

static void fail_memory(void)
{
    static const char msg[] =
        "{\"cniVersion\":\"1.1.0\",\"code\":999,\"msg\":\"ipamd-cni: internal error: MemoryError\"}";
    write_all(1, msg, sizeof msg - 1);
    exit(1);
}

static void buf_reserve(struct buf *b, size_t extra)
{
    size_t cap;
    uchar *p;
    if (extra <= b->cap - b->len)
        return;
    cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > ((size_t)-1) / 2)
            fail_memory();
        cap *= 2;
    }
    p = realloc(b->p, cap);
    if (!p)
        fail_memory();
    b->p = p;
    b->cap = cap;
}

static void buf_add(struct buf *b, const void *data, size_t n)
{
    if (!n)
        return;
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_byte(struct buf *b, uchar c)
{
    buf_add(b, &c, 1);
}

/* A code point as UTF-8; surrogates too, three bytes each (Python's "surrogatepass"). */
static void buf_utf8(struct buf *b, unsigned long cp)
{
    uchar out[4];
    size_t n;
    if (cp < 0x80) {
        out[0] = (uchar)cp;
        n = 1;
    } else if (cp < 0x800) {
        out[0] = (uchar)(0xC0 | (cp >> 6));
        out[1] = (uchar)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        out[0] = (uchar)(0xE0 | (cp >> 12));
        out[1] = (uchar)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uchar)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        out[0] = (uchar)(0xF0 | (cp >> 18));
        out[1] = (uchar)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (uchar)(0x80 | ((cp >> 6) & 0x3F));
        out[3] = (uchar)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_add(b, out, n);
}

/* ---- UTF-8 ---------------------------------------------------------------------------------------------------- */

/*
 * Length of the well-formed UTF-8 sequence at s[0..n), or 0 (Unicode table 3-7). With surrogates, ED A0..BF xx
 * (an encoded surrogate) counts as well formed, as Python's "surrogatepass" decodes it.
 */
static size_t utf8_len(const uchar *s, size_t n, int surrogates, unsigned long *cp)
{
    uchar c = s[0], lo = 0x80, hi = 0xBF;
    size_t len, k;
    unsigned long v;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        v = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED && !surrogates)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        v = c & 0x07;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[k] & 0x3F);
    }
    *cp = v;
    return len;
}

/*
 * s as a JSON string of ASCII only, as client/ipamd_cni.py's _quote writes it: characters outside ' '..'~' as
 * \uXXXX (a pair beyond the BMP), each byte of an invalid UTF-8 sequence as U+DC80+byte ("surrogateescape").
 */
static void json_quote(struct buf *b, const uchar *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = 0;
    buf_byte(b, '"');
    while (i < n) {
        unsigned long cp;
        size_t len = utf8_len(s + i, n - i, 0, &cp);
        if (!len) {
            cp = 0xDC00 | s[i];
            len = 1;
        }
        i += len;
        if (cp == '"' || cp == '\\') {
            buf_byte(b, '\\');
            buf_byte(b, (uchar)cp);
        } else if (cp >= 0x20 && cp <= 0x7E) {
            buf_byte(b, (uchar)cp);
        } else {
            unsigned long units[2];
            int k, count = 1;
            units[0] = cp;
            if (cp > 0xFFFF) {
                units[0] = 0xD800 + ((cp - 0x10000) >> 10);
                units[1] = 0xDC00 + ((cp - 0x10000) & 0x3FF);
                count = 2;
            }
            for (k = 0; k < count; k++) {
                char esc[6] = {'\\', 'u', hex[(units[k] >> 12) & 15], hex[(units[k] >> 8) & 15],
                               hex[(units[k] >> 4) & 15], hex[units[k] & 15]};
                buf_add(b, esc, sizeof esc);
            }
        }
    }
    buf_byte(b, '"');
}

/* ---- the scanner: ipam.socket and cniVersion, agreeing with the daemon's json.loads ------------------------- */

enum encoding { UTF8, UTF8_SIG, UTF16, UTF16_BE, UTF16_LE, UTF32, UTF32_BE, UTF32_LE };

/* json.detect_encoding: what json.loads(bytes) decodes the document with. */
static enum encoding detect_encoding(const uchar *b, size_t n)
{
    if (n >= 4 && ((b[0] == 0 && b[1] == 0 && b[2] == 0xFE && b[3] == 0xFF) ||
                   (b[0] == 0xFF && b[1] == 0xFE && b[2] == 0 && b[3] == 0)))
        return UTF32;
    if (n >= 2 && ((b[0] == 0xFE && b[1] == 0xFF) || (b[0] == 0xFF && b[1] == 0xFE)))
        return UTF16;
    if (n >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF)
        return UTF8_SIG;
    if (n >= 4) {
        if (!b[0])
            return b[1] ? UTF16_BE : UTF32_BE;
        if (!b[1])
            return (b[2] || b[3]) ? UTF16_LE : UTF32_LE;
    } else if (n == 2) {
        if (!b[0])
            return UTF16_BE;
        if (!b[1])
            return UTF16_LE;
    }
    return UTF8;
}

/*
 * The document as UTF-8 with lone surrogates encoded like other code points, decoded as json.loads(bytes) does
 * (bytes.decode(detect_encoding(b), "surrogatepass")). Sets *out (data itself, or a copy in *tmp); -1 where that
 * decoding fails.
 */
static int to_wtf8(const uchar *data, size_t n, struct buf *tmp, const uchar **out, size_t *out_len)
{
    enum encoding enc = detect_encoding(data, n);
    size_t i, unit;
    int big;
    if (enc == UTF8 || enc == UTF8_SIG) {
        unsigned long cp;
        if (enc == UTF8_SIG) {
            data += 3;
            n -= 3;
        }
        for (i = 0; i < n;) {
            size_t len = utf8_len(data + i, n - i, 1, &cp);
            if (!len)
                return -1;
            i += len;
        }
        *out = data;
        *out_len = n;
        return 0;
    }
    unit = (enc == UTF16 || enc == UTF16_BE || enc == UTF16_LE) ? 2 : 4;
    big = enc == UTF16_BE || enc == UTF32_BE;
    if (enc == UTF16 || enc == UTF32) { /* the byte order mark says which, and is not part of the text */
        big = data[0] == 0 || data[0] == 0xFE;
        data += unit;
        n -= unit;
    }
    if (n % unit)
        return -1;
    buf_reserve(tmp, n / unit * 3 + 1);
    for (i = 0; i < n; i += unit) {
        unsigned long cp;
        if (unit == 2) {
            cp = big ? ((unsigned long)data[i] << 8 | data[i + 1]) : ((unsigned long)data[i + 1] << 8 | data[i]);
            if (cp >= 0xD800 && cp < 0xDC00 && i + 4 <= n) {
                unsigned long lo = big ? ((unsigned long)data[i + 2] << 8 | data[i + 3])
                                       : ((unsigned long)data[i + 3] << 8 | data[i + 2]);
                if (lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 2;
                }
            }
        } else {
            cp = big ? ((unsigned long)data[i] << 24 | (unsigned long)data[i + 1] << 16 |
                        (unsigned long)data[i + 2] << 8 | data[i + 3])
                     : ((unsigned long)data[i + 3] << 24 | (unsigned long)data[i + 2] << 16 |
                        (unsigned long)data[i + 1] << 8 | data[i]);
            if (cp > 0x10FFFF)
                return -1;
        }
        buf_utf8(tmp, cp);
    }
    *out = tmp->p ? tmp->p : (const uchar *)"";
    *out_len = tmp->len;
    return 0;
}

struct scanner {
    const uchar *s;
    size_t n, i;
};

static int is_ws(uchar c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int is_digit(uchar c)
{
    return c >= '0' && c <= '9';
}

static void skip_ws(struct scanner *sc)
{
    while (sc->i < sc->n && is_ws(sc->s[sc->i]))
        sc->i++;
}

/* The byte at the position, or -1 at the end. */
static int peek(const struct scanner *sc)
{
    return sc->i < sc->n ? sc->s[sc->i] : -1;
}

static int hex4(const struct scanner *sc, size_t at, unsigned long *v)
{
    size_t k;
    *v = 0;
    if (at > sc->n || sc->n - at < 4)
        return -1;
    for (k = 0; k < 4; k++) {
        uchar c = sc->s[at + k];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        *v = *v << 4 | (unsigned long)d;
    }
    return 0;
}

/* The string whose opening quote is at the position; its value goes to out unless out is NULL. */
static int scan_string(struct scanner *sc, struct buf *out)
{
    size_t i = sc->i + 1;
    const uchar *s = sc->s;
    for (;;) {
        uchar c;
        if (i >= sc->n)
            return -1;
        c = s[i];
        if (c == '"') {
            sc->i = i + 1;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            size_t start = i;
            while (i < sc->n && s[i] != '"' && s[i] != '\\' && s[i] >= 0x20)
                i++;
            if (out)
                buf_add(out, s + start, i - start);
            continue;
        }
        if (i + 1 >= sc->n)
            return -1;
        c = s[i + 1];
        if (c == 'u') {
            unsigned long cp, lo;
            if (hex4(sc, i + 2, &cp))
                return -1;
            i += 6;
            /* a UTF-16 pair written as two escapes is one character, as in json.loads */
            if (cp >= 0xD800 && cp < 0xDC00 && i + 1 < sc->n && s[i] == '\\' && s[i + 1] == 'u') {
                if (hex4(sc, i + 2, &lo))
                    return -1;
                if (lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            if (out)
                buf_utf8(out, cp);
            continue;
        }
        switch (c) {
        case '"': case '\\': case '/': break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        default: return -1;
        }
        if (out)
            buf_byte(out, c);
        i += 2;
    }
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?; an integer of more than MAX_INT_DIGITS digits is refused. */
static int scan_number(struct scanner *sc)
{
    const uchar *s = sc->s;
    size_t n = sc->n, j = sc->i, start, k;
    int exact = 1;
    if (j < n && s[j] == '-')
        j++;
    start = j;
    if (j < n && s[j] == '0') {
        j++;
    } else if (j < n && s[j] >= '1' && s[j] <= '9') {
        while (j < n && is_digit(s[j]))
            j++;
    } else {
        return -1; /* also -Infinity, which the daemon refuses */
    }
    k = j - start;
    if (j + 1 < n && s[j] == '.' && is_digit(s[j + 1])) {
        exact = 0;
        j += 2;
        while (j < n && is_digit(s[j]))
            j++;
    }
    if (j < n && (s[j] == 'e' || s[j] == 'E')) {
        size_t e = j + 1;
        if (e < n && (s[e] == '+' || s[e] == '-'))
            e++;
        if (e < n && is_digit(s[e])) {
            exact = 0;
            while (e < n && is_digit(s[e]))
                e++;
            j = e;
        }
    }
    if (exact && k > MAX_INT_DIGITS)
        return -1;
    sc->i = j;
    return 0;
}

static int scan_literal(struct scanner *sc, const char *word)
{
    size_t len = strlen(word);
    if (sc->n - sc->i < len || memcmp(sc->s + sc->i, word, len))
        return -1;
    sc->i += len;
    return 0;
}

static int key_is(const struct buf *key, const char *word)
{
    size_t len = strlen(word);
    return key->len == len && !memcmp(key->p, word, len);
}

/* Container kinds on the stack. */
enum { ARRAY, OBJECT, TOP, IPAM };

struct picked {
    int has_version, has_socket;
    struct buf version, socket;
};

/*
 * Scan the whole document s[0..n) (UTF-8, surrogates passed); set what it picks when it is a document json.loads
 * accepts and its top level is an object. Any nesting depth (the stack grows on the heap). -1 when invalid.
 */
static int scan_document(const uchar *s, size_t n, struct picked *pk)
{
    struct scanner sc;
    struct buf stack = {0, 0, 0}, key = {0, 0, 0};
    int need_key = 0, top_is_object, rc = -1;
    sc.s = s;
    sc.n = n;
    sc.i = 0;
    skip_ws(&sc);
    top_is_object = peek(&sc) == '{';
    for (;;) {
        int c;
        if (need_key) {
            uchar kind = stack.p[stack.len - 1];
            key.len = 0;
            if (peek(&sc) != '"' || scan_string(&sc, kind >= TOP ? &key : NULL))
                goto out;
            if (kind < TOP)
                key.len = 0;
            skip_ws(&sc);
            if (peek(&sc) != ':')
                goto out;
            sc.i++;
            skip_ws(&sc);
            /* a repeated key starts over: the last one wins, as in json.loads */
            if (kind == TOP && key_is(&key, "cniVersion"))
                pk->has_version = 0;
            else if (kind == TOP && key_is(&key, "ipam"))
                pk->has_socket = 0;
            else if (kind == IPAM && key_is(&key, "socket"))
                pk->has_socket = 0;
            need_key = 0;
        }
        /* a value starts here */
        c = peek(&sc);
        if (c == '{' || c == '[') {
            uchar kind = ARRAY;
            if (c == '{') {
                kind = stack.len ? OBJECT : TOP;
                if (kind == OBJECT && stack.p[stack.len - 1] == TOP && key_is(&key, "ipam"))
                    kind = IPAM;
            }
            buf_byte(&stack, kind);
            sc.i++;
            skip_ws(&sc);
            if (peek(&sc) != (kind == ARRAY ? ']' : '}')) {
                need_key = kind != ARRAY;
                continue;
            }
            stack.len--;
            sc.i++;
        } else if (c == '"') {
            struct buf *out = NULL;
            if (stack.len && stack.p[stack.len - 1] == TOP && key_is(&key, "cniVersion"))
                out = &pk->version;
            else if (stack.len && stack.p[stack.len - 1] == IPAM && key_is(&key, "socket"))
                out = &pk->socket;
            if (out)
                out->len = 0;
            if (scan_string(&sc, out))
                goto out;
            if (out == &pk->version)
                pk->has_version = 1;
            else if (out == &pk->socket)
                pk->has_socket = 1;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            if (scan_number(&sc))
                goto out;
        } else if (c == 't' || c == 'n') {
            if (scan_literal(&sc, c == 't' ? "true" : "null"))
                goto out;
        } else if (c == 'f') {
            if (scan_literal(&sc, "false"))
                goto out;
        } else {
            goto out; /* also NaN and Infinity, which the daemon refuses */
        }
        /* the value ended: then a comma, a closing bracket, or the end of the document */
        for (;;) {
            uchar kind;
            skip_ws(&sc);
            if (!stack.len) {
                if (sc.i != n)
                    goto out;
                rc = top_is_object ? 0 : -1;
                goto out;
            }
            kind = stack.p[stack.len - 1];
            c = peek(&sc);
            if (c == ',') {
                sc.i++;
                skip_ws(&sc);
                need_key = kind != ARRAY;
                break;
            }
            if (c != (kind == ARRAY ? ']' : '}'))
                goto out;
            stack.len--;
            sc.i++;
        }
    }
out:
    free(stack.p);
    free(key.p);
    if (rc) {
        pk->has_version = pk->has_socket = 0;
    }
    return rc;
}

/* (cniVersion, ipam.socket) of a network configuration, as client/ipamd_cni.py's pick(). */
static void pick(const uchar *data, size_t n, struct picked *pk)
{
    struct buf tmp = {0, 0, 0};
    const uchar *s;
    size_t len;
    pk->has_version = pk->has_socket = 0;
    if (to_wtf8(data, n, &tmp, &s, &len) == 0)
        scan_document(s, len, pk);
    free(tmp.p);
}

/* ---- the plugin ------------------------------------------------------------------------------------------------ */

static int write_all(int fd, const void *data, size_t n)
{
    const uchar *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* An environment variable as Python's posix.environ has it: the first entry of that name wins. */
static const char *env_get(const char *name)
{
    size_t len = strlen(name);
    char **e;
    for (e = environ; *e; e++)
        if (!strncmp(*e, name, len) && (*e)[len] == '=')
            return *e + len + 1;
    return NULL;
}

/* The CNI_* variables as KEY=VALUE\0 pairs, in environment order, the first of a name only. */
static void env_pairs(struct buf *out)
{
    char **e, **f;
    for (e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        size_t klen;
        int seen = 0;
        if (!eq || strncmp(*e, "CNI_", 4))
            continue;
        klen = (size_t)(eq - *e);
        for (f = environ; f < e && !seen; f++)
            seen = !strncmp(*f, *e, klen + 1);
        if (!seen)
            buf_add(out, *e, strlen(*e) + 1);
    }
}

static int is_py_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/*
 * IPAMD_CNI_TIMEOUT as Python's float(bytes) reads it (surrounding white space, underscores between digits,
 * inf/nan), kept when 0 < t <= MAX_TIMEOUT, else DEFAULT_TIMEOUT.
 */
static double parse_timeout(const char *raw)
{
    size_t n = 0, i, len, digits = 0;
    const char *s, *end;
    double t = DEFAULT_TIMEOUT;
    char *clean, *stop;
    if (!raw || !*raw)
        return DEFAULT_TIMEOUT;
    len = strlen(raw);
    /* underscores: only between two digits, and the whole text is checked before white space is stripped */
    for (i = 0; i < len; i++) {
        if (raw[i] == '_' && !(i > 0 && is_digit((uchar)raw[i - 1]) && i + 1 < len && is_digit((uchar)raw[i + 1])))
            return DEFAULT_TIMEOUT;
    }
    clean = malloc(len + 1);
    if (!clean)
        fail_memory();
    s = raw;
    end = raw + len;
    while (s < end && is_py_space(*s))
        s++;
    while (end > s && is_py_space(end[-1]))
        end--;
    for (; s < end; s++)
        if (*s != '_')
            clean[n++] = *s;
    clean[n] = 0;
    /* decimal only: [sign] (digits [. digits] | . digits) [e [sign] digits]; strtod would also take hex and
       nan(...), which Python refuses; inf, infinity and nan are out of range anyway */
    i = 0;
    if (clean[i] == '+' || clean[i] == '-')
        i++;
    for (; is_digit((uchar)clean[i]); i++)
        digits++;
    if (clean[i] == '.')
        for (i++; is_digit((uchar)clean[i]); i++)
            digits++;
    if (digits && (clean[i] == 'e' || clean[i] == 'E')) {
        size_t e = i + 1;
        if (clean[e] == '+' || clean[e] == '-')
            e++;
        i = is_digit((uchar)clean[e]) ? e : n + 1; /* no exponent digits: not a number */
        while (i <= n && is_digit((uchar)clean[i]))
            i++;
    }
    if (digits && i == n) {
        t = strtod(clean, &stop);
        if (*stop || !(t > 0 && t <= MAX_TIMEOUT))
            t = DEFAULT_TIMEOUT;
    }
    free(clean);
    return t;
}

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Why the exchange failed (NULL: nothing failed), and whether it was the deadline. */
struct failure {
    const char *reason;
    int timed_out;
};

static int fail_errno(struct failure *f)
{
    f->reason = strerror(errno);
    return -1;
}

static int fail_text(struct failure *f, const char *reason)
{
    f->reason = reason;
    return -1;
}

static int fail_deadline(struct failure *f)
{
    f->timed_out = 1;
    return -1;
}

/* Wait until fd is ready for events or the deadline passes. */
static int wait_fd(int fd, short events, double deadline, struct failure *f)
{
    for (;;) {
        struct pollfd p;
        double left = deadline - monotonic();
        double ms = left * 1000.0;
        int r, wait_ms;
        if (left <= 0)
            return fail_deadline(f);
        wait_ms = ms >= 2147483647.0 ? 2147483647 : (int)ms + ((double)(int)ms < ms);
        p.fd = fd;
        p.events = events;
        p.revents = 0;
        r = poll(&p, 1, wait_ms);
        if (r > 0)
            return 0; /* also POLLERR and POLLHUP: the next call says what happened */
        if (r < 0 && errno != EINTR)
            return fail_errno(f);
    }
}

static int recv_exact(int fd, uchar *out, size_t n, double deadline, struct failure *f)
{
    while (n) {
        ssize_t r;
        if (wait_fd(fd, POLLIN, deadline, f))
            return -1;
        r = recv(fd, out, n < CHUNK ? n : CHUNK, 0);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            return fail_errno(f);
        }
        if (r == 0)
            return fail_text(f, "ipamd closed the connection early");
        out += r;
        n -= (size_t)r;
    }
    return 0;
}

static int recv_section(int fd, struct buf *out, double deadline, struct failure *f)
{
    uchar len[4];
    size_t n;
    if (recv_exact(fd, len, 4, deadline, f))
        return -1;
    n = (size_t)len[0] << 24 | (size_t)len[1] << 16 | (size_t)len[2] << 8 | len[3];
    if (n > MAX_ANSWER)
        return fail_text(f, "answer from ipamd is larger than 4194304 bytes");
    buf_reserve(out, n);
    if (recv_exact(fd, out->p ? out->p : len, n, deadline, f))
        return -1;
    out->len = n;
    return 0;
}

/*
 * Send one request frame to the daemon's socket at path and read its answer within timeout seconds, as
 * client/ipamd_cni.py's exchange(): 0 with *status, out and err set, or -1 with f saying why.
 */
static int exchange(const uchar *path, size_t path_len, const struct buf *frame, double timeout, int *status,
                    struct buf *out, struct buf *err, struct failure *f)
{
    struct sockaddr_un addr;
    socklen_t addr_len;
    double deadline = monotonic() + timeout;
    uchar head[MAGIC_LEN + 1];
    size_t sent = 0;
    int fd, rc = -1;
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return fail_errno(f);
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (path[0] == 0) { /* Linux's abstract namespace, as Python's socket module takes it */
        if (path_len > sizeof addr.sun_path) {
            fail_text(f, "AF_UNIX path too long");
            goto out;
        }
        addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len);
    } else {
        if (path_len >= sizeof addr.sun_path) {
            fail_text(f, "AF_UNIX path too long");
            goto out;
        }
        addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len + 1);
    }
    memcpy(addr.sun_path, path, path_len);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        fail_errno(f);
        goto out;
    }
    if (connect(fd, (struct sockaddr *)&addr, addr_len) < 0) {
        int soerr = 0;
        socklen_t soerr_len = sizeof soerr;
        if (errno != EINPROGRESS && errno != EINTR) {
            fail_errno(f);
            goto out;
        }
        if (wait_fd(fd, POLLOUT, deadline, f))
            goto out;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &soerr_len) < 0) {
            fail_errno(f);
            goto out;
        }
        if (soerr) {
            errno = soerr;
            fail_errno(f);
            goto out;
        }
    }
    while (sent < frame->len) {
        ssize_t w;
        if (wait_fd(fd, POLLOUT, deadline, f))
            goto out;
        w = send(fd, frame->p + sent, frame->len - sent, 0);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            fail_errno(f);
            goto out;
        }
        sent += (size_t)w;
    }
    if (recv_exact(fd, head, sizeof head, deadline, f))
        goto out;
    if (memcmp(head, MAGIC, MAGIC_LEN)) {
        fail_text(f, "unexpected answer from ipamd");
        goto out;
    }
    if (recv_section(fd, out, deadline, f) || recv_section(fd, err, deadline, f))
        goto out;
    *status = head[MAGIC_LEN];
    rc = 0;
out:
    close(fd);
    return rc;
}

static void section(struct buf *frame, const void *data, size_t n)
{
    uchar len[4] = {(uchar)(n >> 24), (uchar)(n >> 16), (uchar)(n >> 8), (uchar)n};
    buf_add(frame, len, 4);
    buf_add(frame, data, n);
}

static void version_answer(struct buf *out, const struct picked *pk)
{
    buf_str(out, "{\"cniVersion\":");
    if (pk && pk->has_version && pk->version.len)
        json_quote(out, pk->version.p, pk->version.len);
    else
        buf_str(out, "\"1.1.0\"");
    buf_str(out, ",\"supportedVersions\":" SUPPORTED_VERSIONS "}");
}

static void error_answer(struct buf *out, const struct picked *pk, int code, const struct buf *msg)
{
    char num[16];
    buf_str(out, "{\"cniVersion\":");
    if (pk && pk->has_version && pk->version.len)
        json_quote(out, pk->version.p, pk->version.len);
    else
        buf_str(out, "\"1.1.0\"");
    snprintf(num, sizeof num, ",\"code\":%d", code);
    buf_str(out, num);
    buf_str(out, ",\"msg\":");
    json_quote(out, msg->p, msg->len);
    buf_str(out, "}");
}

/* One CNI call, as client/ipamd_cni.py's main(); returns the exit status. */
static int run(void)
{
    /* static: what the process holds until it exits stays reachable (no leak reports under sanitizers) */
    static struct buf data, frame, env, out, err, msg;
    static struct picked pk;
    const char *command = env_get("CNI_COMMAND");
    const char *read_error = "";
    struct failure f = {NULL, 0};
    const uchar *path;
    size_t size = 0, path_len;
    double timeout;
    int status = 1;

    if (!command)
        command = "";
    for (;;) { /* all of stdin; past MAX_STDIN only counted */
        uchar scratch[CHUNK], *into = scratch;
        ssize_t r;
        if (size <= MAX_STDIN) {
            buf_reserve(&data, CHUNK);
            into = data.p + data.len;
        }
        r = read(0, into, CHUNK);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            read_error = strerror(errno);
            break;
        }
        if (r == 0)
            break;
        size += (size_t)r;
        if (size <= MAX_STDIN)
            data.len += (size_t)r;
    }
    if (size > MAX_STDIN) {
        if (!strcmp(command, "VERSION")) { /* VERSION never fails (docs/cni-contract.md §2.4) */
            version_answer(&out, NULL);
            return write_all(1, out.p, out.len) ? 1 : 0;
        }
        {
            char text[128];
            snprintf(text, sizeof text, "network configuration is %lu bytes; the limit is %lu",
                     (unsigned long)size, (unsigned long)MAX_STDIN);
            buf_str(&msg, text);
        }
        error_answer(&out, NULL, 6, &msg);
        write_all(1, out.p, out.len);
        return 1;
    }
    if (data.len)
        pick(data.p, data.len, &pk);
    if (pk.has_socket && pk.socket.len) {
        path = pk.socket.p;
        path_len = pk.socket.len;
    } else {
        const char *e = env_get("IPAMD_CNI_SOCKET");
        if (!e || !*e)
            e = DEFAULT_SOCKET;
        path = (const uchar *)e;
        path_len = strlen(e);
    }
    env_pairs(&env);
    buf_add(&frame, MAGIC, MAGIC_LEN);
    section(&frame, env.p, env.len);
    section(&frame, data.p, data.len);
    section(&frame, read_error, strlen(read_error));
    timeout = parse_timeout(env_get("IPAMD_CNI_TIMEOUT"));
    if (exchange(path, path_len, &frame, timeout, &status, &out, &err, &f)) {
        int code = !strcmp(command, "STATUS") ? 50 : 11; /* "plugin not available" / "try again later" */
        out.len = 0;
        if (!strcmp(command, "VERSION")) {
            version_answer(&out, &pk);
            return write_all(1, out.p, out.len) ? 1 : 0;
        }
        buf_str(&msg, "ipamd is not reachable on ");
        buf_add(&msg, path, path_len);
        buf_str(&msg, ": ");
        if (f.timed_out) {
            char text[64];
            snprintf(text, sizeof text, "no answer within %g s", timeout);
            buf_str(&msg, text);
        } else {
            buf_str(&msg, f.reason);
        }
        buf_str(&err, "ipamd-cni: ");
        buf_add(&err, msg.p, msg.len);
        buf_str(&err, "\n");
        write_all(2, err.p, err.len);
        error_answer(&out, &pk, code, &msg);
        write_all(1, out.p, out.len);
        return 1;
    }
    if (err.len)
        write_all(2, err.p, err.len);
    if (out.len && write_all(1, out.p, out.len))
        return 1;
    return status;
}

static int plugin_main(void)
{
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, NULL); /* a closed socket or stdout is an error to report, not a signal */
    return run();
}

#ifndef IPAMD_CNI_TEST

int main(void)
{
    return plugin_main();
}

#else

static void print_hex(const char *label, int has, const struct buf *b)
{
    size_t i;
    printf("%s ", label);
    if (!has) {
        printf("-\n");
        return;
    }
    printf("=");
    for (i = 0; i < b->len; i++)
        printf("%02x", b->p[i]);
    printf("\n");
}

static int read_exact(int fd, uchar *p, size_t n)
{
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/*
 * "scan": documents on stdin, each a 4-byte big-endian length and the bytes; for each, what pick() finds, as
 * "version =<hex>" or "version -", then "socket =<hex>" or "socket -". "quote": json_quote() of all of stdin.
 * "timeout VALUE": what parse_timeout() makes of VALUE. "plugin": run() itself.
 */
int main(int argc, char **argv)
{
    struct buf in = {0, 0, 0};
    if (argc == 2 && !strcmp(argv[1], "plugin"))
        return plugin_main();
    if (argc == 2 && !strcmp(argv[1], "scan")) {
        uchar len[4];
        while (!read_exact(0, len, 4)) {
            struct picked pk;
            size_t n = (size_t)len[0] << 24 | (size_t)len[1] << 16 | (size_t)len[2] << 8 | len[3];
            in.len = 0;
            buf_reserve(&in, n + 1);
            if (read_exact(0, in.p, n))
                return 1;
            memset(&pk, 0, sizeof pk);
            pick(in.p, n, &pk);
            print_hex("version", pk.has_version, &pk.version);
            print_hex("socket", pk.has_socket, &pk.socket);
            fflush(stdout);
            free(pk.version.p);
            free(pk.socket.p);
        }
    } else if (argc == 3 && !strcmp(argv[1], "timeout")) {
        printf("%.17g\n", parse_timeout(argv[2]));
    } else if (argc == 2 && !strcmp(argv[1], "quote")) {
        struct buf out = {0, 0, 0};
        uchar chunk[CHUNK];
        ssize_t r;
        while ((r = read(0, chunk, sizeof chunk)) > 0)
            buf_add(&in, chunk, (size_t)r);
        json_quote(&out, in.p ? in.p : chunk, in.len);
        fwrite(out.p, 1, out.len, stdout);
        free(out.p);
    } else {
        fprintf(stderr, "usage: %s scan|quote|plugin|timeout VALUE\n", argv[0]);
        return 2;
    }
    free(in.p);
    return 0;
}

#endif
