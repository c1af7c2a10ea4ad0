/*
 * mqload - a single-threaded epoll load generator for STOMP 1.2 and AMQP 0-9-1, and a
 * trivial sink server speaking both (to show the generator is never the bottleneck).
 *
 * Build:  cc -O2 -Wall -o mqload mqload.c
 *
 *   mqload stomp|amqp [options]    publishers -> broker -> consumers, one JSON line on stdout
 *   mqload sink [--port P]         reads and acknowledges (CONNECTED, RECEIPT, AMQP handshake,
 *                                  confirms) as fast as it can; the generator's ceiling
 *
 * Design: one thread, one epoll loop, non-blocking sockets with TCP_NODELAY. Each publisher's
 * frame is encoded once; sending copies it into a 64 KiB output buffer, patching only the
 * STOMP receipt id, and writes the batch. Consumers read 256 KiB at a time, parse only what
 * they need (STOMP command and the ack header, AMQP frame type, method and delivery tag) and
 * send their acknowledgements in one write per read.
 *
 * Flow control, the same for every broker: --window W bounds the messages published but not
 * yet delivered to every consumer (a closed loop, so no broker queue ever holds more than
 * W per consumer); --confirms K bounds the messages awaiting a RECEIPT / basic.ack (0: none
 * asked for). Nothing is dropped by the bound, so "loss" is a broker fault.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "mqload: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}
static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}
/* a process's user+system CPU seconds from /proc (the broker's, given --broker-pid) */
static double proc_cpu(int pid) {
    char path[64], buf[2048];
    if (pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long ut, st;
    if (!p) return -1;
    for (int field = 2; *p && field < 14; p++)
        if (*p == ' ') field++;
    if (sscanf(p, "%lu %lu", &ut, &st) != 2) return -1;
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

/* ------------------------------------------------------------------------- */
/* buffers: valid data is d[off..len) */

typedef struct {
    uint8_t *d;
    size_t off, len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t need) {
    if (b->cap - b->len >= need) return;
    if (b->off) {
        memmove(b->d, b->d + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= need) return;
    }
    size_t nc = b->cap ? b->cap * 2 : 4096;
    while (nc - b->len < need) nc *= 2;
    if (!(b->d = realloc(b->d, nc))) die("out of memory");
    b->cap = nc;
}
static inline size_t buf_used(const buf_t *b) { return b->len - b->off; }
static void buf_put(buf_t *b, const void *p, size_t n) {
    buf_reserve(b, n);
    memcpy(b->d + b->len, p, n);
    b->len += n;
}
static void put8(buf_t *b, uint8_t v) { buf_put(b, &v, 1); }
static void put16(buf_t *b, uint16_t v) { uint8_t x[2] = {v >> 8, v}; buf_put(b, x, 2); }
static void put32(buf_t *b, uint32_t v) { uint8_t x[4] = {v >> 24, v >> 16, v >> 8, v}; buf_put(b, x, 4); }
static void put64(buf_t *b, uint64_t v) { put32(b, v >> 32); put32(b, (uint32_t)v); }
static void putss(buf_t *b, const char *s) { size_t l = strlen(s); put8(b, l); buf_put(b, s, l); }
static void putls(buf_t *b, const void *s, size_t l) { put32(b, l); buf_put(b, s, l); }
static uint16_t get16(const uint8_t *p) { return p[0] << 8 | p[1]; }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

/* ------------------------------------------------------------------------- */
/* AMQP 0-9-1 framing */

#define FRAME_END 0xCE
enum { A_METHOD = 1, A_HEADER = 2, A_BODY = 3, A_HEARTBEAT = 8 };

/* appends one method frame whose arguments are args[0..alen) */
static void amqp_method(buf_t *b, uint16_t ch, uint16_t cls, uint16_t mth, const buf_t *args) {
    size_t alen = args ? buf_used(args) : 0;
    put8(b, A_METHOD);
    put16(b, ch);
    put32(b, 4 + alen);
    put16(b, cls);
    put16(b, mth);
    if (alen) buf_put(b, args->d + args->off, alen);
    put8(b, FRAME_END);
}
#define ARGS(name) buf_t name = {0}
#define M(c, m) ((uint32_t)(c) << 16 | (m))

/* ------------------------------------------------------------------------- */
/* configuration and state */

static struct {
    int stomp; /* else AMQP */
    const char *host, *dest, *user, *pass, *label, *mode;
    int port, pubs, subs, payload, window, confirms, prefetch, ack, persistent, topic, no_sub, durable;
    long long count;
    double duration, drain, drain_idle, setup_timeout;
    int broker_pid;
} C = {.host = "127.0.0.1", .port = 61613, .pubs = 1, .subs = 1, .payload = 64, .window = 1000,
       .prefetch = 100, .count = 200000, .duration = 8, .drain = 10, .drain_idle = 2, .setup_timeout = 30,
       .dest = "bench", .user = "guest", .pass = "guest", .label = "broker", .mode = ""};

enum { R_PUB = 1, R_SUB };
enum { S_TCP = 1, S_SETUP, S_READY, S_CLOSED };

typedef struct conn {
    int fd, role, state, step;
    uint32_t ev;
    buf_t in, out;
    long long sent, confirmed, rx;
    uint64_t conf_low;  /* AMQP: every tag below this is confirmed */
    uint8_t *conf_seen; /* AMQP: confirmed flags by delivery tag */
    char queue[256];    /* AMQP consumer: its queue's name */
} conn_t;

static struct {
    int ep;
    conn_t **conns;
    int n;
    int publishing;
    long long sent, confirmed, nacked, rx, errors;
    double t0, t_pub_done, t_last_rx, t_last_conf;
} G;

static uint8_t *g_payload;
static buf_t g_tmpl;   /* one encoded message (STOMP SEND frame / AMQP publish+header+body) */
static int g_rcpt_off; /* STOMP: offset of the 10-digit receipt number in the template, or -1 */

static void set_events(conn_t *c, uint32_t ev) {
    if (c->state == S_CLOSED || c->ev == ev) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(G.ep, EPOLL_CTL_MOD, c->fd, &e);
    c->ev = ev;
}

static void conn_fail(conn_t *c, const char *why) {
    if (c->state == S_CLOSED) return;
    fprintf(stderr, "mqload: %s connection closed: %s\n", c->role == R_PUB ? "publisher" : "consumer", why);
    G.errors++;
    epoll_ctl(G.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = S_CLOSED;
}

static void conn_open(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0) die("socket: %s", strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(C.port)};
    inet_pton(AF_INET, C.host, &sa.sin_addr);
    c->fd = fd;
    c->state = S_TCP;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) die("connect: %s", strerror(errno));
    struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->ev = e.events;
    epoll_ctl(G.ep, EPOLL_CTL_ADD, fd, &e);
}

static void conn_flush(conn_t *c) {
    while (c->state != S_CLOSED && buf_used(&c->out)) {
        ssize_t n = write(c->fd, c->out.d + c->out.off, buf_used(&c->out));
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) conn_fail(c, strerror(errno));
            break;
        }
        c->out.off += n;
    }
    if (!buf_used(&c->out)) c->out.off = c->out.len = 0;
}

/* may this publisher send one more message now? */
static int pub_may_send(const conn_t *c) {
    if (c->role != R_PUB || c->state != S_READY || !G.publishing) return 0;
    if (G.sent >= C.count) return 0;
    if (C.confirms && c->sent - c->confirmed >= C.confirms) return 0;
    /* the closed loop: deliveries still owed to the consumers, in messages */
    if (!C.no_sub && G.sent * C.subs - G.rx >= (long long)C.window * C.subs) return 0;
    return 1;
}

static void update_interest(conn_t *c) {
    if (c->state != S_SETUP && c->state != S_READY) return;
    set_events(c, EPOLLIN | (buf_used(&c->out) || pub_may_send(c) ? EPOLLOUT : 0));
}

/* ------------------------------------------------------------------------- */
/* templates */

static void build_templates(void) {
    g_payload = malloc(C.payload + 1);
    memset(g_payload, 'x', C.payload);
    g_rcpt_off = -1;
    if (C.stomp) {
        char h[512];
        int n = snprintf(h, sizeof h, "SEND\ndestination:/%s/%s\ncontent-length:%d\n%s", C.topic ? "topic" : "queue",
                         C.dest, C.payload, C.persistent ? "persistent:true\n" : "");
        buf_put(&g_tmpl, h, n);
        if (C.confirms) {
            buf_put(&g_tmpl, "receipt:", 8);
            g_rcpt_off = g_tmpl.len;
            buf_put(&g_tmpl, "0000000000\n", 11);
        }
        buf_put(&g_tmpl, "\n", 1);
        buf_put(&g_tmpl, g_payload, C.payload);
        put8(&g_tmpl, 0);
        return;
    }
    ARGS(a);
    put16(&a, 0);
    putss(&a, C.topic ? "amq.topic" : "");
    putss(&a, C.dest); /* routing key: the queue's name, or the topic */
    put8(&a, 0);
    amqp_method(&g_tmpl, 1, 60, 40, &a);
    put8(&g_tmpl, A_HEADER);
    put16(&g_tmpl, 1);
    put32(&g_tmpl, 14 + (C.persistent ? 1 : 0));
    put16(&g_tmpl, 60);
    put16(&g_tmpl, 0);
    put64(&g_tmpl, C.payload);
    put16(&g_tmpl, C.persistent ? 0x1000 : 0); /* delivery-mode present */
    if (C.persistent) put8(&g_tmpl, 2);
    put8(&g_tmpl, FRAME_END);
    put8(&g_tmpl, A_BODY);
    put16(&g_tmpl, 1);
    put32(&g_tmpl, C.payload);
    buf_put(&g_tmpl, g_payload, C.payload);
    put8(&g_tmpl, FRAME_END);
    free(a.d);
}

/* fills the publisher's output up to 64 KiB with messages */
static void pub_fill(conn_t *c) {
    while (buf_used(&c->out) < 65536 && pub_may_send(c)) {
        size_t at = c->out.len;
        buf_put(&c->out, g_tmpl.d, g_tmpl.len);
        if (g_rcpt_off >= 0) {
            char num[11];
            snprintf(num, sizeof num, "%010lld", c->sent);
            memcpy(c->out.d + at + g_rcpt_off, num, 10);
        }
        c->sent++;
        G.sent++;
    }
    if (G.sent >= C.count && !G.t_pub_done) G.t_pub_done = now_s();
}

/* ------------------------------------------------------------------------- */
/* STOMP client */

static void stomp_greet(conn_t *c) {
    char h[512];
    int n = snprintf(h, sizeof h, "CONNECT\naccept-version:1.2\nhost:/\nlogin:%s\npasscode:%s\nheart-beat:0,0\n\n", C.user,
                     C.pass);
    buf_put(&c->out, h, n + 1); /* with the NUL */
}

/* a header's value in headers[0..hl) (lines "name:value\n"), or NULL */
static const char *stomp_header(const char *hs, size_t hl, const char *name, size_t *vl) {
    size_t nl = strlen(name);
    const char *p = hs, *end = hs + hl;
    while (p < end) {
        const char *eol = memchr(p, '\n', end - p);
        if (!eol) eol = end;
        if ((size_t)(eol - p) > nl && p[nl] == ':' && !memcmp(p, name, nl)) {
            *vl = eol - p - nl - 1;
            if (*vl && p[nl + 1 + *vl - 1] == '\r') (*vl)--;
            return p + nl + 1;
        }
        p = eol + 1;
    }
    return NULL;
}

static void stomp_frame(conn_t *c, const char *cmd, size_t cl, const char *hs, size_t hl, const char *body, size_t bl) {
    size_t vl;
    const char *v;
    if (cl == 7 && !memcmp(cmd, "MESSAGE", 7)) {
        c->rx++;
        G.rx++;
        G.t_last_rx = now_s();
        if (C.ack && (v = stomp_header(hs, hl, "ack", &vl))) {
            buf_put(&c->out, "ACK\nid:", 7);
            buf_put(&c->out, v, vl);
            buf_put(&c->out, "\n\n", 3);
        }
    } else if (cl == 7 && !memcmp(cmd, "RECEIPT", 7)) {
        if (c->state == S_SETUP) { /* the SUBSCRIBE's receipt */
            c->state = S_READY;
            return;
        }
        c->confirmed++;
        G.confirmed++;
        G.t_last_conf = now_s();
    } else if (cl == 9 && !memcmp(cmd, "CONNECTED", 9)) {
        if (c->role == R_PUB) {
            c->state = S_READY;
            return;
        }
        char h[512];
        int n = snprintf(h, sizeof h, "SUBSCRIBE\nid:0\ndestination:/%s/%s\nack:%s\nprefetch-count:%d\nreceipt:sub\n\n",
                         C.topic ? "topic" : "queue", C.dest, C.ack ? "client-individual" : "auto", C.prefetch);
        buf_put(&c->out, h, n + 1);
    } else if (cl == 5 && !memcmp(cmd, "ERROR", 5)) {
        const char *m = stomp_header(hs, hl, "message", &vl);
        fprintf(stderr, "mqload: ERROR %.*s: %.*s\n", m ? (int)vl : 0, m ? m : "", (int)(bl > 200 ? 200 : bl), body);
        conn_fail(c, "ERROR frame");
    }
}

/* parses every complete frame in c->in */
static void stomp_input(conn_t *c) {
    for (;;) {
        char *p = (char *)c->in.d + c->in.off, *end = (char *)c->in.d + c->in.len;
        while (p < end && (*p == '\n' || *p == '\r')) p++; /* heart-beats */
        c->in.off = (uint8_t *)p - c->in.d;
        if (p == end) break;
        char *hend = memmem(p, end - p, "\n\n", 2);
        if (!hend) break;
        char *eol = memchr(p, '\n', end - p);
        size_t cl = eol - p;
        if (cl && p[cl - 1] == '\r') cl--;
        const char *hs = eol + 1;
        size_t hl = hend + 1 - hs, vl, bl;
        char *body = hend + 2, *nul;
        const char *v = stomp_header(hs, hl, "content-length", &vl);
        if (v) {
            bl = strtoul(v, NULL, 10);
            if ((size_t)(end - body) < bl + 1) break;
            nul = body + bl;
        } else {
            if (!(nul = memchr(body, 0, end - body))) break;
            bl = nul - body;
        }
        stomp_frame(c, p, cl, hs, hl, body, bl);
        if (c->state == S_CLOSED) return;
        c->in.off = (uint8_t *)nul + 1 - c->in.d;
    }
    if (!buf_used(&c->in)) c->in.off = c->in.len = 0;
}

/* ------------------------------------------------------------------------- */
/* AMQP client: a fixed sequence of requests, one per reply */

static void amqp_confirm(conn_t *c, uint64_t tag, int multiple, int nack) {
    if (!c->conf_seen) c->conf_seen = calloc(C.count + 2, 1);
    if (tag > (uint64_t)C.count) return;
    uint64_t from = multiple ? c->conf_low : tag;
    for (uint64_t t = from; t <= tag; t++)
        if (!c->conf_seen[t]) {
            c->conf_seen[t] = 1;
            c->confirmed++;
            G.confirmed++;
            if (nack) G.nacked++;
        }
    while (c->conf_low <= (uint64_t)C.count && c->conf_seen[c->conf_low]) c->conf_low++;
    G.t_last_conf = now_s();
}

/* the next setup request after the reply `got` (0 when the protocol header was just sent) */
static void amqp_setup(conn_t *c, uint32_t got, const uint8_t *a, size_t al) {
    ARGS(x);
    switch (got) {
    case M(10, 10): { /* start: PLAIN */
        char resp[256];
        int n = snprintf(resp, sizeof resp, "%c%s%c%s", 0, C.user, 0, C.pass);
        put32(&x, 0);
        putss(&x, "PLAIN");
        putls(&x, resp, n);
        putss(&x, "en_US");
        amqp_method(&c->out, 0, 10, 11, &x);
        break;
    }
    case M(10, 30): /* tune: take the server's limits, no heartbeats */
        if (al < 8) break;
        put16(&x, get16(a));
        put32(&x, get32(a + 2));
        put16(&x, 0);
        amqp_method(&c->out, 0, 10, 31, &x);
        x.len = 0;
        putss(&x, "/");
        putss(&x, "");
        put8(&x, 0);
        amqp_method(&c->out, 0, 10, 40, &x);
        break;
    case M(10, 41): /* open-ok */
        putss(&x, "");
        amqp_method(&c->out, 1, 20, 10, &x);
        break;
    case M(20, 11): /* channel open: publishers declare their queue (or none) and select confirms */
        if (c->role == R_PUB && C.topic) goto pub_declared;
        put16(&x, 0);
        if (c->role == R_SUB && C.topic) { /* a server-named exclusive queue per consumer */
            putss(&x, "");
            put8(&x, 0x04 | 0x08);
        } else {
            putss(&x, C.dest);
            put8(&x, C.durable ? 0x02 : 0);
        }
        put32(&x, 0);
        amqp_method(&c->out, 1, 50, 10, &x);
        break;
    case M(50, 11): /* declare-ok */
        if (c->role == R_PUB) goto pub_declared;
        if (al < 1 || a[0] + 1u > al) break;
        memcpy(c->queue, a + 1, a[0]);
        c->queue[a[0]] = 0;
        if (C.topic) {
            put16(&x, 0);
            putss(&x, c->queue);
            putss(&x, "amq.topic");
            putss(&x, C.dest);
            put8(&x, 0);
            put32(&x, 0);
            amqp_method(&c->out, 1, 50, 20, &x);
            break;
        }
        /* fall through */
    case M(50, 21): /* bind-ok */
        put32(&x, 0);
        put16(&x, C.prefetch);
        put8(&x, 0);
        amqp_method(&c->out, 1, 60, 10, &x);
        break;
    case M(60, 11): /* qos-ok */
        put16(&x, 0);
        putss(&x, c->queue);
        putss(&x, "");
        put8(&x, C.ack ? 0 : 0x02);
        put32(&x, 0);
        amqp_method(&c->out, 1, 60, 20, &x);
        break;
    case M(60, 21): /* consume-ok */
        c->state = S_READY;
        break;
    pub_declared:
        if (!C.confirms) {
            c->state = S_READY;
            break;
        }
        put8(&x, 0);
        amqp_method(&c->out, 1, 85, 10, &x);
        break;
    case M(85, 11): /* select-ok */
        c->conf_low = 1;
        c->state = S_READY;
        break;
    }
    free(x.d);
}

static void amqp_input(conn_t *c) {
    while (buf_used(&c->in) >= 8) {
        const uint8_t *p = c->in.d + c->in.off;
        uint32_t size = get32(p + 3);
        if (buf_used(&c->in) < 8 + (size_t)size) break;
        const uint8_t *pl = p + 7;
        if (pl[size] != FRAME_END) {
            conn_fail(c, "bad frame end");
            return;
        }
        if (p[0] == A_METHOD && size >= 4) {
            uint32_t m = M(get16(pl), get16(pl + 2));
            const uint8_t *a = pl + 4;
            size_t al = size - 4;
            if (m == M(60, 60) && al >= 1 + a[0] + 8u) { /* deliver: consumer tag, delivery tag */
                uint64_t tag = get64(a + 1 + a[0]);
                c->rx++;
                G.rx++;
                G.t_last_rx = now_s();
                if (C.ack) {
                    ARGS(x);
                    put64(&x, tag);
                    put8(&x, 0);
                    amqp_method(&c->out, 1, 60, 80, &x);
                    free(x.d);
                }
            } else if ((m == M(60, 80) || m == M(60, 120)) && al >= 9) {
                amqp_confirm(c, get64(a), a[8] & 1, m == M(60, 120));
            } else if (m == M(10, 50) || m == M(20, 40)) {
                int n = al >= 3 ? a[2] : 0;
                fprintf(stderr, "mqload: %s.close %u %.*s\n", m == M(10, 50) ? "connection" : "channel",
                        al >= 2 ? get16(a) : 0, al >= 3u + n ? n : 0, (const char *)a + 3);
                conn_fail(c, "closed by the broker");
                return;
            } else if (c->state == S_SETUP) {
                amqp_setup(c, m, a, al);
            }
        }
        c->in.off += 8 + size;
    }
    if (!buf_used(&c->in)) c->in.off = c->in.len = 0;
}

/* ------------------------------------------------------------------------- */
/* event loop */

static void on_event(conn_t *c, uint32_t ev) {
    if (c->state == S_CLOSED) return;
    if (c->state == S_TCP) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) die("connect to %s:%d: %s", C.host, C.port, strerror(err));
        if (!(ev & EPOLLOUT)) return;
        c->state = S_SETUP;
        if (C.stomp)
            stomp_greet(c);
        else
            buf_put(&c->out, "AMQP\0\0\x09\x01", 8);
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        for (int i = 0; i < 4; i++) {
            buf_reserve(&c->in, 262144);
            ssize_t r = read(c->fd, c->in.d + c->in.len, c->in.cap - c->in.len);
            if (r == 0) {
                conn_fail(c, "closed by the broker");
                return;
            }
            if (r < 0) {
                if (errno != EAGAIN && errno != EINTR) conn_fail(c, strerror(errno));
                break;
            }
            c->in.len += r;
            if (C.stomp)
                stomp_input(c);
            else
                amqp_input(c);
            if (c->state == S_CLOSED) return;
            if ((size_t)r < 262144) break;
        }
    }
    if (c->role == R_PUB) pub_fill(c);
    conn_flush(c);
    update_interest(c);
}

static void loop_once(int timeout_ms) {
    struct epoll_event ev[512];
    int n = epoll_wait(G.ep, ev, 512, timeout_ms);
    for (int i = 0; i < n; i++) on_event(ev[i].data.ptr, ev[i].events);
    /* deliveries may have opened the window of a publisher that was not woken */
    for (int i = 0; i < G.n; i++)
        if (G.conns[i]->role == R_PUB) update_interest(G.conns[i]);
}

static int all_ready(int role) {
    for (int i = 0; i < G.n; i++)
        if (G.conns[i]->role == role && G.conns[i]->state != S_READY) return 0;
    return 1;
}

static void open_role(int role, int k) {
    for (int i = 0; i < k; i++) {
        conn_t *c = calloc(1, sizeof *c);
        c->role = role;
        G.conns = realloc(G.conns, (G.n + 1) * sizeof *G.conns);
        G.conns[G.n++] = c;
        conn_open(c);
    }
    double end = now_s() + C.setup_timeout;
    while (!all_ready(role)) {
        if (now_s() > end || G.errors) die("%s setup failed or timed out", role == R_PUB ? "publisher" : "consumer");
        loop_once(10);
    }
}

static int run_client(void) {
    G.ep = epoll_create1(EPOLL_CLOEXEC);
    build_templates();
    if (!C.no_sub) open_role(R_SUB, C.subs);
    open_role(R_PUB, C.pubs);
    double cpu0 = self_cpu(), bcpu0 = proc_cpu(C.broker_pid);
    G.t0 = now_s();
    G.publishing = 1;
    for (int i = 0; i < G.n; i++) update_interest(G.conns[i]);
    long long fan = C.no_sub ? 0 : C.subs, last_rx = -1;
    double t_idle = now_s();
    for (;;) {
        loop_once(5);
        double t = now_s();
        if (G.publishing && (G.sent >= C.count || t - G.t0 > C.duration)) {
            G.publishing = 0;
            if (!G.t_pub_done) G.t_pub_done = t;
        }
        if (G.errors) break;
        if (G.publishing) continue;
        int done_rx = G.rx >= G.sent * fan, done_conf = !C.confirms || G.confirmed >= G.sent;
        if (done_rx && done_conf) break;
        if (G.rx + G.confirmed != last_rx) {
            last_rx = G.rx + G.confirmed;
            t_idle = t;
        }
        if (t - G.t_pub_done > C.drain || t - t_idle > C.drain_idle) break;
    }
    double cpu = self_cpu() - cpu0, bcpu = proc_cpu(C.broker_pid);
    double t_end = now_s();
    if (bcpu >= 0 && bcpu0 >= 0) bcpu -= bcpu0;
    double pub_s = (G.t_pub_done ? G.t_pub_done : t_end) - G.t0;
    double rx_s = (G.t_last_rx ? G.t_last_rx : t_end) - G.t0, conf_s = (G.t_last_conf ? G.t_last_conf : t_end) - G.t0;
    double wall = t_end - G.t0;
    long long expected = G.sent * fan, work = fan ? G.rx : G.confirmed;
    double rx_rate = rx_s > 0 ? G.rx / rx_s : 0, conf_rate = conf_s > 0 ? G.confirmed / conf_s : 0;
    printf("{\"proto\":\"%s\",\"mode\":\"%s\",\"broker\":\"%s\",\"pubs\":%d,\"subs\":%lld,\"sent\":%lld,"
           "\"received\":%lld,\"expected\":%lld,\"confirmed\":%lld,\"nacked\":%lld,\"errors\":%lld,"
           "\"pub_rate\":%.1f,\"rx_rate\":%.1f,\"confirm_rate\":%.1f,\"rate\":%.1f,\"loss_pct\":%.4f,"
           "\"gen_cpu_pct\":%.1f,\"broker_cpu_pct\":%.1f,\"broker_us_per_msg\":%.2f,\"wall_s\":%.3f}\n",
           C.stomp ? "stomp" : "amqp", C.mode, C.label, C.pubs, fan, G.sent, G.rx, expected, G.confirmed, G.nacked,
           G.errors, pub_s > 0 ? G.sent / pub_s : 0, rx_rate, conf_rate, fan ? rx_rate : conf_rate,
           expected ? 100.0 * (expected - G.rx) / expected : 0, 100 * cpu / wall, bcpu >= 0 ? 100 * bcpu / wall : -1,
           bcpu >= 0 && work ? 1e6 * bcpu / work : -1, wall);
    fprintf(stderr, "%s %s %s: sent %lld (%.0f/s), received %lld of %lld (%.0f/s), confirmed %lld (%.0f/s), gen cpu %.0f%%\n",
            C.label, C.stomp ? "stomp" : "amqp", C.mode, G.sent, pub_s > 0 ? G.sent / pub_s : 0, G.rx, expected, rx_rate,
            G.confirmed, conf_rate, 100 * cpu / wall);
    return G.errors || G.rx < expected || (C.confirms && G.confirmed < G.sent) ? 1 : 0;
}

/* ------------------------------------------------------------------------- */
/* the sink: speaks just enough of both protocols for a publisher, acknowledges at once */

typedef struct {
    int fd, amqp, dead;
    uint32_t ev;
    buf_t in, out;
    uint64_t tag;  /* AMQP: publishes counted on the channel */
    int confirming;
} sconn_t;

static long long s_msgs;

static void sink_stomp(sconn_t *s) {
    for (;;) {
        char *p = (char *)s->in.d + s->in.off, *end = (char *)s->in.d + s->in.len;
        while (p < end && (*p == '\n' || *p == '\r')) p++;
        s->in.off = (uint8_t *)p - s->in.d;
        char *hend = p < end ? memmem(p, end - p, "\n\n", 2) : NULL;
        if (!hend) break;
        char *eol = memchr(p, '\n', end - p), *body = hend + 2, *nul;
        const char *hs = eol + 1;
        size_t hl = hend + 1 - hs, vl;
        const char *v = stomp_header(hs, hl, "content-length", &vl);
        if (v) {
            size_t bl = strtoul(v, NULL, 10);
            if ((size_t)(end - body) < bl + 1) break;
            nul = body + bl;
        } else if (!(nul = memchr(body, 0, end - body)))
            break;
        if (!strncmp(p, "CONNECT", 7) || !strncmp(p, "STOMP", 5))
            buf_put(&s->out, "CONNECTED\nversion:1.2\n\n", 24);
        else if (!strncmp(p, "SEND", 4))
            s_msgs++;
        if ((v = stomp_header(hs, hl, "receipt", &vl))) {
            buf_put(&s->out, "RECEIPT\nreceipt-id:", 19);
            buf_put(&s->out, v, vl);
            buf_put(&s->out, "\n\n", 3);
        }
        s->in.off = (uint8_t *)nul + 1 - s->in.d;
    }
}

static void sink_amqp(sconn_t *s) {
    if (!s->amqp) { /* the protocol header */
        if (buf_used(&s->in) < 8) return;
        s->in.off += 8;
        s->amqp = 1;
        ARGS(x);
        put8(&x, 0);
        put8(&x, 9);
        put32(&x, 0);
        putls(&x, "PLAIN", 5);
        putls(&x, "en_US", 5);
        amqp_method(&s->out, 0, 10, 10, &x);
        free(x.d);
    }
    while (buf_used(&s->in) >= 8) {
        const uint8_t *p = s->in.d + s->in.off;
        uint32_t size = get32(p + 3);
        if (buf_used(&s->in) < 8 + (size_t)size) break;
        uint16_t ch = get16(p + 1);
        if (p[0] == A_METHOD && size >= 4) {
            uint32_t m = M(get16(p + 7), get16(p + 9));
            const uint8_t *a = p + 11;
            ARGS(x);
            switch (m) {
            case M(10, 11): put16(&x, 2047); put32(&x, 131072); put16(&x, 0); amqp_method(&s->out, 0, 10, 30, &x); break;
            case M(10, 40): putss(&x, ""); amqp_method(&s->out, 0, 10, 41, &x); break;
            case M(20, 10): put32(&x, 0); amqp_method(&s->out, ch, 20, 11, &x); break;
            case M(85, 10): s->confirming = 1; amqp_method(&s->out, ch, 85, 11, NULL); break;
            case M(50, 10): /* declare-ok with the requested name */
                buf_put(&x, a + 2, 1 + a[2]); put32(&x, 0); put32(&x, 0);
                amqp_method(&s->out, ch, 50, 11, &x);
                break;
            case M(60, 40):
                s_msgs++;
                if (s->confirming) { put64(&x, ++s->tag); put8(&x, 0); amqp_method(&s->out, ch, 60, 80, &x); }
                break;
            case M(10, 50): amqp_method(&s->out, 0, 10, 51, NULL); break;
            }
            free(x.d);
        }
        s->in.off += 8 + size;
    }
}

static int run_sink(void) {
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(C.port)};
    inet_pton(AF_INET, C.host, &sa.sin_addr);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind: %s", strerror(errno));
    listen(ls, 1024);
    socklen_t sl = sizeof sa;
    getsockname(ls, (struct sockaddr *)&sa, &sl);
    fprintf(stderr, "sink: listening on %d\n", ntohs(sa.sin_port)); /* --port 0 picks one */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &e);
    double end = now_s() + C.duration;
    struct epoll_event ev[256];
    while (now_s() < end) {
        int n = epoll_wait(ep, ev, 256, 100);
        for (int i = 0; i < n; i++) {
            sconn_t *s = ev[i].data.ptr;
            if (!s) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    s = calloc(1, sizeof *s);
                    s->fd = fd;
                    s->ev = EPOLLIN;
                    struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = s};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e2);
                }
                continue;
            }
            if (s->dead) continue;
            for (int it = 0; it < 4; it++) {
                buf_reserve(&s->in, 262144);
                ssize_t r = read(s->fd, s->in.d + s->in.len, s->in.cap - s->in.len);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) { s->dead = 1; break; }
                if (r < 0) break;
                s->in.len += r;
                if (s->amqp || (s->in.len >= 4 && !memcmp(s->in.d + s->in.off, "AMQP", 4)))
                    sink_amqp(s);
                else
                    sink_stomp(s);
                if (!buf_used(&s->in)) s->in.off = s->in.len = 0;
                if ((size_t)r < 262144) break;
            }
            while (!s->dead && buf_used(&s->out)) {
                ssize_t w = write(s->fd, s->out.d + s->out.off, buf_used(&s->out));
                if (w < 0) { if (errno != EAGAIN && errno != EINTR) s->dead = 1; break; }
                s->out.off += w;
            }
            if (!buf_used(&s->out)) s->out.off = s->out.len = 0;
            uint32_t want = EPOLLIN | (buf_used(&s->out) ? EPOLLOUT : 0);
            if (s->dead) {
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                close(s->fd);
            } else if (want != s->ev) {
                struct epoll_event e3 = {.events = want, .data.ptr = s};
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &e3);
                s->ev = want;
            }
        }
    }
    fprintf(stderr, "sink: %lld messages\n", s_msgs);
    return 0;
}

/* ------------------------------------------------------------------------- */

static void usage(void) {
    fprintf(stderr,
            "usage: mqload stomp|amqp [options]   or   mqload sink [--port P] [--duration S]\n"
            "  --host H --port P        broker (127.0.0.1, 61613)\n"
            "  --pubs N --subs N        publishers (1) and consumers (1)\n"
            "  --dest NAME              queue name, or topic / routing key with --topic (bench)\n"
            "  --topic                  STOMP /topic/NAME, AMQP amq.topic with a server-named queue per consumer\n"
            "  --count N --payload B    messages in all (200000), body bytes (64)\n"
            "  --duration S             stop publishing after S seconds (8); --drain S (10), --drain-idle S (2)\n"
            "  --window W               published but not yet delivered to every consumer, at most (1000)\n"
            "  --confirms K             ask a RECEIPT / confirm for every message, at most K awaited (0: none)\n"
            "  --persistent --durable   persistent messages; AMQP: a durable queue\n"
            "  --ack --prefetch P       consumers acknowledge each message (client-individual / basic.ack), prefetch (100)\n"
            "  --no-sub                 no consumers (with --confirms: the confirmed rate)\n"
            "  --user U --pass P --label NAME --mode NAME --broker-pid PID --setup-timeout S\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    int sink = !strcmp(argv[1], "sink");
    if (!sink && strcmp(argv[1], "stomp") && strcmp(argv[1], "amqp")) usage();
    C.stomp = !strcmp(argv[1], "stomp");
    if (sink) C.duration = 60;
    static struct option opts[] = {
        {"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {"pubs", 1, 0, 'P'}, {"subs", 1, 0, 'S'}, {"dest", 1, 0, 'd'},
        {"topic", 0, 0, 't'}, {"count", 1, 0, 'n'}, {"payload", 1, 0, 'b'}, {"duration", 1, 0, 'D'},
        {"drain", 1, 0, 'r'}, {"drain-idle", 1, 0, 'I'}, {"window", 1, 0, 'w'}, {"confirms", 1, 0, 'c'},
        {"persistent", 0, 0, 'e'}, {"durable", 0, 0, 'u'}, {"ack", 0, 0, 'a'}, {"prefetch", 1, 0, 'f'},
        {"no-sub", 0, 0, 'N'}, {"user", 1, 0, 'U'}, {"pass", 1, 0, 'W'}, {"label", 1, 0, 'l'}, {"mode", 1, 0, 'm'},
        {"broker-pid", 1, 0, 'x'}, {"setup-timeout", 1, 0, 's'}, {0, 0, 0, 0}};
    int o;
    optind = 2;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': C.host = optarg; break;
        case 'p': C.port = atoi(optarg); break;
        case 'P': C.pubs = atoi(optarg); break;
        case 'S': C.subs = atoi(optarg); break;
        case 'd': C.dest = optarg; break;
        case 't': C.topic = 1; break;
        case 'n': C.count = atoll(optarg); break;
        case 'b': C.payload = atoi(optarg); break;
        case 'D': C.duration = atof(optarg); break;
        case 'r': C.drain = atof(optarg); break;
        case 'I': C.drain_idle = atof(optarg); break;
        case 'w': C.window = atoi(optarg); break;
        case 'c': C.confirms = atoi(optarg); break;
        case 'e': C.persistent = 1; break;
        case 'u': C.durable = 1; break;
        case 'a': C.ack = 1; break;
        case 'f': C.prefetch = atoi(optarg); break;
        case 'N': C.no_sub = 1; break;
        case 'U': C.user = optarg; break;
        case 'W': C.pass = optarg; break;
        case 'l': C.label = optarg; break;
        case 'm': C.mode = optarg; break;
        case 'x': C.broker_pid = atoi(optarg); break;
        case 's': C.setup_timeout = atof(optarg); break;
        default: usage();
        }
    }
    if (C.pubs < 1 || C.subs < 1 || C.window < 1 || C.count < 1 || C.payload < 0 || C.payload > (1 << 20) ||
        C.confirms < 0 || C.prefetch < 0 || C.prefetch > 65535 || strlen(C.dest) > 200)
        usage();
    if (C.duration > 3600 || C.drain > 3600) die("durations are capped at 3600 s");
    signal(SIGPIPE, SIG_IGN);
    return sink ? run_sink() : run_client();
}
