/* C test suite for the mailq ABI: every exported function, every bad-argument path.
 * Built and run by .ci/run under -fsanitize=address,undefined and under valgrind. */
#define _GNU_SOURCE
#include "mailq.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/un.h>

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        checks++;                                                                     \
        if (!(cond)) {                                                                \
            failures++;                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__,  \
                    __LINE__, #cond, mailq_last_error_message());                     \
        }                                                                             \
    } while (0)

#define EXPECT(call, status) CHECK((call) == (status))

static char dir[256];

static void rmrf(const char *d) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    if (system(cmd) != 0) fprintf(stderr, "cleanup of %s failed\n", d);
}

static mailq *open_queue(void) {
    mailq_options o;
    EXPECT(mailq_options_init(&o, sizeof o), MAILQ_OK);
    o.min_backoff_secs = 1;
    o.max_backoff_secs = 1;
    mailq *q = NULL;
    EXPECT(mailq_open(dir, &o, &q), MAILQ_OK);
    CHECK(q != NULL);
    return q;
}

static uint64_t enqueue1(mailq *q, const char *rcpt, const char *body) {
    const char *r[1] = {rcpt};
    uint64_t id = 0;
    EXPECT(mailq_enqueue(q, "sender@example.org", r, NULL, 1, (const uint8_t *)"m", 1,
                         (const uint8_t *)body, strlen(body), &id),
           MAILQ_OK);
    CHECK(id != 0);
    return id;
}

static void test_library(void) {
    CHECK(strlen(mailq_version()) > 0);
    for (int s = MAILQ_OK; s <= MAILQ_ERR_PANIC; s++) CHECK(strlen(mailq_strerror((mailq_status)s)) > 0);
    EXPECT(mailq_options_init(NULL, sizeof(mailq_options)), MAILQ_ERR_NULL);
    CHECK(strstr(mailq_last_error_message(), "NULL") != NULL);
    CHECK(strcmp(mailq_strerror(-1), "unknown status") == 0);
    CHECK(strcmp(mailq_strerror(999), "unknown status") == 0);
    /* An older caller with a smaller struct: init writes only what it has. */
    struct { uint32_t size; uint32_t allow; uint64_t segment_size; uint64_t canary; } old;
    old.canary = 0xfeedface;
    EXPECT(mailq_options_init((mailq_options *)&old, 16), MAILQ_OK);
    CHECK(old.size == 16 && old.canary == 0xfeedface && old.segment_size == 64u << 20);
    mailq_options tiny;
    EXPECT(mailq_options_init(&tiny, 4), MAILQ_ERR_INVALID_ARGUMENT);
    mailq_options o;
    EXPECT(mailq_options_init(&o, sizeof o), MAILQ_OK);
    CHECK(o.size == sizeof(mailq_options));
    CHECK(o.preallocate_segments == 1); /* files made ahead by default */
    CHECK(o.batch_recipients == 50 && o.min_backoff_secs == 300 && o.max_backoff_secs == 4000);
    CHECK(strlen(mailq_last_error_message()) == 0);
}

static void test_open_errors(void) {
    mailq *q = (mailq *)1;
    EXPECT(mailq_open(NULL, NULL, &q), MAILQ_ERR_NULL);
    CHECK(q == NULL);
    EXPECT(mailq_open(dir, NULL, NULL), MAILQ_ERR_NULL);
    EXPECT(mailq_open("\xff\xfe", NULL, &q), MAILQ_ERR_UTF8);
    mailq_options bad;
    memset(&bad, 0, sizeof bad);
    EXPECT(mailq_open(dir, &bad, &q), MAILQ_ERR_INVALID_ARGUMENT);
    mailq_options o;
    mailq_options_init(&o, sizeof o);
    o.concurrency_limit = 0;
    EXPECT(mailq_open(dir, &o, &q), MAILQ_ERR_INVALID_ARGUMENT);
    /* An older caller with a smaller struct: only the fields it knows are read. */
    mailq_options_init(&o, sizeof o);
    o.size = 8;
    o.segment_size = 1; /* beyond size: ignored */
    EXPECT(mailq_open(dir, &o, &q), MAILQ_OK);
    mailq *q2 = NULL;
    EXPECT(mailq_open(dir, NULL, &q2), MAILQ_ERR_LOCKED);
    CHECK(q2 == NULL);
    CHECK(strstr(mailq_last_error_message(), "locked") != NULL);
    EXPECT(mailq_close(q), MAILQ_OK);
    EXPECT(mailq_close(q), MAILQ_ERR_INVALID_HANDLE); /* closed twice */
    EXPECT(mailq_sync(q), MAILQ_ERR_INVALID_HANDLE);  /* used after free */
    mailq_free(q);                                    /* harmless */
    mailq_free(NULL);
}

static void test_enqueue_errors(mailq *q) {
    uint64_t id = 0;
    const char *ok[1] = {"a@example.com"};
    const char *noat[1] = {"nobody"};
    const char *nul_rcpt[1] = {NULL};
    const char *utf8[1] = {"\xc3\x28@example.com"};
    char longdom[4200];
    memset(longdom, 'a', sizeof longdom);
    memcpy(longdom, "u@", 2);
    longdom[sizeof longdom - 1] = 0;
    const char *huge[1] = {longdom};
    const char *badroute[1] = {"bad route\001"};

    EXPECT(mailq_enqueue(NULL, "", ok, NULL, 1, NULL, 0, NULL, 0, &id), MAILQ_ERR_INVALID_HANDLE);
    EXPECT(mailq_enqueue(q, NULL, ok, NULL, 1, NULL, 0, NULL, 0, &id), MAILQ_ERR_NULL);
    EXPECT(mailq_enqueue(q, "", ok, NULL, 1, NULL, 0, NULL, 0, NULL), MAILQ_ERR_NULL);
    EXPECT(mailq_enqueue(q, "", NULL, NULL, 1, NULL, 0, NULL, 0, &id), MAILQ_ERR_NULL);
    EXPECT(mailq_enqueue(q, "", ok, NULL, 0, NULL, 0, NULL, 0, &id), MAILQ_ERR_NO_RECIPIENTS);
    EXPECT(mailq_enqueue(q, "", noat, NULL, 1, NULL, 0, NULL, 0, &id), MAILQ_ERR_INVALID_ADDRESS);
    CHECK(strstr(mailq_last_error_message(), "nobody") != NULL);
    EXPECT(mailq_enqueue(q, "", nul_rcpt, NULL, 1, NULL, 0, NULL, 0, &id), MAILQ_ERR_NULL);
    EXPECT(mailq_enqueue(q, "", utf8, NULL, 1, NULL, 0, NULL, 0, &id), MAILQ_ERR_UTF8);
    EXPECT(mailq_enqueue(q, "", huge, NULL, 1, NULL, 0, NULL, 0, &id), MAILQ_ERR_INVALID_ADDRESS);
    EXPECT(mailq_enqueue(q, "not an address", ok, NULL, 1, NULL, 0, NULL, 0, &id), MAILQ_ERR_INVALID_ADDRESS);
    EXPECT(mailq_enqueue(q, "", ok, badroute, 1, NULL, 0, NULL, 0, &id), MAILQ_ERR_INVALID_ROUTE);
    EXPECT(mailq_enqueue(q, "", ok, NULL, 1, NULL, 0, NULL, 5, &id), MAILQ_ERR_NULL);
    EXPECT(mailq_enqueue(q, "", ok, NULL, 1, NULL, 5, (const uint8_t *)"x", 1, &id), MAILQ_ERR_NULL);
    mailq_stats st;
    st.size = sizeof st;
    EXPECT(mailq_stats_get(q, &st), MAILQ_OK);
    CHECK(st.messages == 0 && st.accepted == 0); /* nothing was queued */
}

static void test_streaming(mailq *q) {
    mailq_message *m = NULL;
    EXPECT(mailq_message_begin(q, "bad sender", &m), MAILQ_ERR_INVALID_ADDRESS);
    CHECK(m == NULL);
    EXPECT(mailq_message_begin(q, "s@example.org", NULL), MAILQ_ERR_NULL);
    EXPECT(mailq_message_begin(NULL, "s@example.org", &m), MAILQ_ERR_INVALID_HANDLE);
    EXPECT(mailq_message_begin(q, "s@example.org", &m), MAILQ_OK);
    EXPECT(mailq_message_add_recipient(m, "nobody", NULL), MAILQ_ERR_INVALID_ADDRESS);
    EXPECT(mailq_message_add_recipient(m, NULL, NULL), MAILQ_ERR_NULL);
    EXPECT(mailq_message_add_recipient(m, "x@stream.example", NULL), MAILQ_OK);
    EXPECT(mailq_message_add_recipient(m, "y@stream.example", "relay.internal"), MAILQ_OK);
    EXPECT(mailq_message_set_meta(m, (const uint8_t *)"meta", 4), MAILQ_OK);
    EXPECT(mailq_message_set_meta(m, NULL, 3), MAILQ_ERR_NULL);
    EXPECT(mailq_message_append(m, (const uint8_t *)"Subject: s\r\n", 12), MAILQ_OK);
    EXPECT(mailq_message_append(m, (const uint8_t *)"\r\nbody\r\n", 8), MAILQ_OK);
    EXPECT(mailq_message_append(m, NULL, 0), MAILQ_OK);
    EXPECT(mailq_message_append(m, NULL, 1), MAILQ_ERR_NULL);
    uint64_t id = 0;
    EXPECT(mailq_message_commit(m, &id), MAILQ_OK);
    CHECK(id != 0);
    EXPECT(mailq_message_commit(m, &id), MAILQ_ERR_INVALID_HANDLE); /* committed twice */
    EXPECT(mailq_message_append(m, (const uint8_t *)"x", 1), MAILQ_ERR_INVALID_HANDLE);

    /* A message without recipients fails at commit, and the handle is gone. */
    EXPECT(mailq_message_begin(q, "", &m), MAILQ_OK);
    EXPECT(mailq_message_commit(m, &id), MAILQ_ERR_NO_RECIPIENTS);
    mailq_message_abort(m); /* already freed: harmless */
    EXPECT(mailq_message_begin(q, "", &m), MAILQ_OK);
    EXPECT(mailq_message_add_recipient(m, "z@stream.example", NULL), MAILQ_OK);
    mailq_message_abort(m);
    EXPECT(mailq_message_add_recipient(m, "z@stream.example", NULL), MAILQ_ERR_INVALID_HANDLE);

    /* Deliver the streamed message: two routing keys. */
    int seen = 0;
    mailq_session *s = NULL;
    while (mailq_next_session(q, &s) == MAILQ_OK && s) {
        const char *key = mailq_session_routing_key(s);
        CHECK(key && (strcmp(key, "stream.example") == 0 || strcmp(key, "relay.internal") == 0));
        mailq_delivery *d = NULL;
        while (mailq_session_next_delivery(s, &d) == MAILQ_OK && d) {
            const uint8_t *p;
            size_t n;
            EXPECT(mailq_delivery_body(d, &p, &n), MAILQ_OK);
            CHECK(n == 20 && memcmp(p, "Subject: s\r\n\r\nbody\r\n", 20) == 0);
            EXPECT(mailq_delivery_meta(d, &p, &n), MAILQ_OK);
            CHECK(n == 4 && memcmp(p, "meta", 4) == 0);
            CHECK(mailq_delivery_id(d) == id);
            EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_DELIVERED, NULL, 0), MAILQ_OK);
            EXPECT(mailq_delivery_complete(d), MAILQ_OK);
            seen++;
        }
        mailq_session_free(s);
    }
    CHECK(seen == 2);
}

struct ins_t { int calls; char err[64]; char state[16]; uint32_t attempts; };
static void inspect_cb(void *u, const mailq_message_info *m, const mailq_recipient_info *r) {
    struct ins_t *i = u;
    i->calls++;
    (void)m;
    snprintf(i->err, sizeof i->err, "%s", r->last_error);
    snprintf(i->state, sizeof i->state, "%s", r->state);
    i->attempts = r->attempts;
}

static void test_delivery_paths(mailq *q) {
    uint64_t id = enqueue1(q, "one@deliver.example", "hello world");
    mailq_session *s = NULL;
    EXPECT(mailq_next_session(NULL, &s), MAILQ_ERR_INVALID_HANDLE);
    EXPECT(mailq_next_session(q, NULL), MAILQ_ERR_NULL);
    EXPECT(mailq_session_for(q, "nothing.example", &s), MAILQ_OK);
    CHECK(s == NULL);
    EXPECT(mailq_session_for(q, NULL, &s), MAILQ_ERR_NULL);
    EXPECT(mailq_session_for(q, "deliver.example", &s), MAILQ_OK);
    CHECK(s != NULL);
    CHECK(strcmp(mailq_session_routing_key(s), "deliver.example") == 0);
    CHECK(mailq_session_fence(s) > 0);
    CHECK(mailq_session_fence(NULL) == 0);
    CHECK(mailq_session_routing_key(NULL) == NULL);

    mailq_delivery *d = NULL, *d2 = NULL;
    EXPECT(mailq_session_next_delivery(s, NULL), MAILQ_ERR_NULL);
    EXPECT(mailq_session_next_delivery(NULL, &d), MAILQ_ERR_INVALID_HANDLE);
    EXPECT(mailq_session_next_delivery(s, &d), MAILQ_OK);
    CHECK(d != NULL);
    EXPECT(mailq_session_next_delivery(s, &d2), MAILQ_ERR_BUSY);
    CHECK(mailq_delivery_id(d) == id);
    CHECK(strcmp(mailq_delivery_sender(d), "sender@example.org") == 0);
    CHECK(mailq_delivery_recipient_count(d) == 1);
    CHECK(strcmp(mailq_delivery_recipient(d, 0), "one@deliver.example") == 0);
    CHECK(mailq_delivery_recipient(d, 1) == NULL);
    uint32_t idx = 9, att = 9;
    EXPECT(mailq_delivery_recipient_info(d, 0, &idx, &att), MAILQ_OK);
    CHECK(idx == 0 && att == 0);
    EXPECT(mailq_delivery_recipient_info(d, 5, &idx, &att), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_delivery_recipient_info(d, 0, NULL, &att), MAILQ_ERR_NULL);

    const uint8_t *p = NULL;
    size_t n = 0;
    EXPECT(mailq_delivery_body(d, NULL, &n), MAILQ_ERR_NULL);
    EXPECT(mailq_delivery_body(d, &p, &n), MAILQ_OK);
    CHECK(n == 11 && memcmp(p, "hello world", 11) == 0);
    int fd = -1;
    uint64_t off = 0;
    size_t flen = 0;
    EXPECT(mailq_delivery_body_fd(d, &fd, &off, &flen), MAILQ_OK);
    char buf[32] = {0};
    CHECK(fd >= 0 && flen == 11 && pread(fd, buf, flen, (off_t)off) == 11);
    CHECK(memcmp(buf, "hello world", 11) == 0);
    CHECK(fd < 0 || close(fd) == 0); /* the descriptor is ours to close */
    EXPECT(mailq_delivery_body_fd(d, NULL, &off, &flen), MAILQ_ERR_NULL);

    /* Complete without outcomes: refused, delivery stays open. */
    EXPECT(mailq_delivery_complete(d), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_delivery_set_outcome(d, 3, MAILQ_DELIVERED, NULL, 0), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_delivery_set_outcome(d, 0, 42, NULL, 0), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_TEMPFAIL, "\xff", 0), MAILQ_OK); /* replies need not be UTF-8 */
    EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_TEMPFAIL, "451 4.7.1 later", 0), MAILQ_OK);
    EXPECT(mailq_delivery_complete(d), MAILQ_OK);
    EXPECT(mailq_delivery_complete(d), MAILQ_ERR_INVALID_HANDLE); /* completed twice */
    EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_DELIVERED, NULL, 0), MAILQ_ERR_INVALID_HANDLE);
    EXPECT(mailq_delivery_body(d, &p, &n), MAILQ_ERR_INVALID_HANDLE);
    CHECK(mailq_delivery_recipient_count(d) == 0);
    CHECK(mailq_delivery_id(d) == 0);
    CHECK(mailq_delivery_sender(d) == NULL);
    mailq_delivery_free(d); /* harmless */
    mailq_session_free(s);
    mailq_session_free(s); /* harmless */
    EXPECT(mailq_session_next_delivery(s, &d), MAILQ_ERR_INVALID_HANDLE);

    /* Inspect shows the deferral. */
    struct ins_t ins = {0};
    EXPECT(mailq_inspect(q, id, NULL, NULL), MAILQ_ERR_NULL);
    EXPECT(mailq_inspect(q, 12345, (mailq_inspect_fn)1, NULL), MAILQ_ERR_NOT_FOUND);
    EXPECT(mailq_inspect(q, id, inspect_cb, &ins), MAILQ_OK);
    CHECK(ins.calls == 1 && strcmp(ins.state, "deferred") == 0 && ins.attempts == 1);
    CHECK(strcmp(ins.err, "451 4.7.1 later") == 0);

    /* A dropped delivery returns its recipients; flush makes the deferred one ready. */
    size_t changed = 0;
    EXPECT(mailq_flush(q, &changed), MAILQ_OK);
    CHECK(changed == 1);
    EXPECT(mailq_next_session(q, &s), MAILQ_OK);
    CHECK(s != NULL);
    EXPECT(mailq_session_next_delivery(s, &d), MAILQ_OK);
    mailq_delivery_free(d);
    mailq_stats st;
    st.size = sizeof st;
    EXPECT(mailq_stats_get(q, &st), MAILQ_OK);
    CHECK(st.ready == 1 && st.inflight == 0);
    /* Freeing a session with an open delivery returns it too. */
    EXPECT(mailq_session_next_delivery(s, &d), MAILQ_OK);
    CHECK(d != NULL);
    mailq_session_free(s);
    EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_DELIVERED, NULL, 0), MAILQ_ERR_INVALID_HANDLE);
    EXPECT(mailq_stats_get(q, &st), MAILQ_OK);
    CHECK(st.ready == 1 && st.inflight == 0);

    /* Site failure on a delivery defers it and ends the session. */
    EXPECT(mailq_next_session(q, &s), MAILQ_OK);
    EXPECT(mailq_session_next_delivery(s, &d), MAILQ_OK);
    EXPECT(mailq_delivery_site_failure(d, "connect: Connection refused"), MAILQ_OK);
    EXPECT(mailq_delivery_site_failure(d, NULL), MAILQ_ERR_INVALID_HANDLE);
    EXPECT(mailq_session_next_delivery(s, &d), MAILQ_OK);
    CHECK(d == NULL); /* the session ended */
    mailq_session_free(s);
    EXPECT(mailq_stats_get(q, &st), MAILQ_OK);
    CHECK(st.deferred == 1 && st.site_failures == 1);

    /* Session-level site failure. */
    EXPECT(mailq_flush(q, NULL), MAILQ_OK);
    EXPECT(mailq_next_session(q, &s), MAILQ_OK);
    CHECK(s != NULL);
    EXPECT(mailq_session_site_failure(s, "421 \xff\xfe not UTF-8"), MAILQ_OK); /* any bytes */
    EXPECT(mailq_session_site_failure(s, NULL), MAILQ_ERR_INVALID_HANDLE);

    /* Finally deliver it. */
    EXPECT(mailq_next_session(q, &s), MAILQ_OK);
    CHECK(s != NULL);
    EXPECT(mailq_session_next_delivery(s, &d), MAILQ_OK);
    EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_DELIVERED, NULL, 0), MAILQ_OK);
    EXPECT(mailq_delivery_complete(d), MAILQ_OK);
    mailq_session_free(s);
    EXPECT(mailq_stats_get(q, &st), MAILQ_OK);
    CHECK(st.messages == 0 && st.delivered == 3);
}

/* mailq_delivery_body_fd hands out a new descriptor that the caller owns and
 * closes. Closing it must leave the queue's own log descriptor alone: when the
 * library handed out the log's descriptor, the enqueues after the close failed
 * (EBADF, then a poisoned queue) or wrote into whatever reused the number. */
static void test_body_fd_ownership(mailq *q) {
    const char *body = "Subject: fd\r\n\r\nsent with sendfile\r\n";
    size_t blen = strlen(body);
    enqueue1(q, "fd@bodyfd.example", body);
    mailq_session *s = NULL;
    mailq_delivery *d = NULL;
    EXPECT(mailq_next_session(q, &s), MAILQ_OK);
    CHECK(s != NULL);
    EXPECT(mailq_session_next_delivery(s, &d), MAILQ_OK);
    CHECK(d != NULL);
    int fd = -1, fd2 = -1;
    uint64_t off = 0;
    size_t len = 0;
    EXPECT(mailq_delivery_body_fd(d, &fd, &off, &len), MAILQ_OK);
    CHECK(fd >= 0 && len == blen);

    /* sendfile(2) into a pipe, as an MTA would into its socket. */
    char buf[128] = {0};
    int p[2];
    CHECK(pipe(p) == 0);
    off_t o = (off_t)off;
    CHECK(sendfile(p[1], fd, &o, len) == (ssize_t)len);
    CHECK(read(p[0], buf, sizeof buf) == (ssize_t)len && memcmp(buf, body, len) == 0);
    close(p[0]);
    close(p[1]);
    CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);

    /* Every call hands out another descriptor. */
    EXPECT(mailq_delivery_body_fd(d, &fd2, &off, &len), MAILQ_OK);
    CHECK(fd2 >= 0 && fd2 != fd);
    CHECK(fd2 < 0 || close(fd2) == 0);
    EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_DELIVERED, NULL, 0), MAILQ_OK);
    EXPECT(mailq_delivery_complete(d), MAILQ_OK);
    mailq_session_free(s);

    /* Still readable after the delivery ended; then the caller closes it. */
    memset(buf, 0, sizeof buf);
    CHECK(pread(fd, buf, len, (off_t)off) == (ssize_t)len && memcmp(buf, body, len) == 0);
    CHECK(close(fd) == 0);

    /* The queue still appends and syncs: enqueue and complete more mail. */
    for (int i = 0; i < 5; i++) {
        char rcpt[64];
        snprintf(rcpt, sizeof rcpt, "r%d@bodyfd.example", i);
        enqueue1(q, rcpt, "after the close");
        s = NULL;
        d = NULL;
        EXPECT(mailq_next_session(q, &s), MAILQ_OK);
        CHECK(s != NULL);
        EXPECT(mailq_session_next_delivery(s, &d), MAILQ_OK);
        CHECK(d != NULL);
        EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_DELIVERED, NULL, 0), MAILQ_OK);
        EXPECT(mailq_delivery_complete(d), MAILQ_OK);
        mailq_session_free(s);
    }
    EXPECT(mailq_sync(q), MAILQ_OK);
    mailq_stats st;
    st.size = sizeof st;
    EXPECT(mailq_stats_get(q, &st), MAILQ_OK);
    CHECK(st.poisoned == 0 && st.messages == 0 && st.ready == 0);
}

static int bounces_seen;
static uint64_t bounce_id;
static void bounce_cb(void *u, const mailq_bounce *b) {
    (void)u;
    bounces_seen++;
    bounce_id = b->id;
    CHECK(strcmp(b->recipient, "gone@perm.example") == 0);
    CHECK(strcmp(b->sender, "sender@example.org") == 0);
    CHECK(strstr(b->reason, "550") != NULL && b->expired == 0);
}

static void test_bounces(mailq *q) {
    uint64_t id = enqueue1(q, "gone@perm.example", "x");
    mailq_session *s = NULL;
    mailq_delivery *d = NULL;
    EXPECT(mailq_next_session(q, &s), MAILQ_OK);
    EXPECT(mailq_session_next_delivery(s, &d), MAILQ_OK);
    EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_PERMFAIL, "550 5.1.1 no such user", 0), MAILQ_OK);
    EXPECT(mailq_delivery_complete(d), MAILQ_OK);
    mailq_session_free(s);
    size_t count = 0;
    EXPECT(mailq_take_bounces(q, 10, NULL, NULL, &count), MAILQ_ERR_NULL);
    EXPECT(mailq_take_bounces(q, 10, bounce_cb, NULL, &count), MAILQ_OK);
    CHECK(count == 1 && bounces_seen == 1 && bounce_id == id);
    EXPECT(mailq_ack_bounce(q, id, 0), MAILQ_OK);
    EXPECT(mailq_ack_bounce(q, id, 0), MAILQ_ERR_NOT_FOUND);
    EXPECT(mailq_ack_bounce(NULL, id, 0), MAILQ_ERR_INVALID_HANDLE);
}

static int walked;
static int walk_cb(void *u, const mailq_message_info *m) {
    (void)u;
    walked++;
    CHECK(m->recipients >= 1);
    return 1;
}
static int buckets_seen;
static int bucket_cb(void *u, const mailq_bucket_stats *b) {
    (void)u;
    buckets_seen++;
    CHECK(strlen(b->key) > 0 && b->limit >= 1 && b->window <= b->limit);
    return 1;
}

static void test_operator(mailq *q) {
    uint64_t a = enqueue1(q, "a@ops.example", "A");
    uint64_t b = enqueue1(q, "b@ops.example", "B");
    size_t changed = 99;
    EXPECT(mailq_hold(q, a, &changed), MAILQ_OK);
    CHECK(changed == 1);
    EXPECT(mailq_hold(q, 777, &changed), MAILQ_ERR_NOT_FOUND);
    EXPECT(mailq_release(q, a, &changed), MAILQ_OK);
    CHECK(changed == 1);
    EXPECT(mailq_hold_bucket(q, "ops.example", &changed), MAILQ_OK);
    CHECK(changed == 2);
    EXPECT(mailq_hold_bucket(q, NULL, &changed), MAILQ_ERR_NULL);
    EXPECT(mailq_release_bucket(q, "OPS.example.", &changed), MAILQ_OK);
    CHECK(changed == 2);
    EXPECT(mailq_flush_bucket(q, "ops.example", &changed), MAILQ_OK);
    CHECK(changed == 0);
    EXPECT(mailq_suspend(q, "ops.example"), MAILQ_OK);
    mailq_session *s = NULL;
    EXPECT(mailq_next_session(q, &s), MAILQ_OK);
    CHECK(s == NULL);
    EXPECT(mailq_resume(q, "ops.example"), MAILQ_OK);
    EXPECT(mailq_suspend(q, NULL), MAILQ_ERR_NULL);
    EXPECT(mailq_resume(q, "bad\001key"), MAILQ_ERR_INVALID_ROUTE);
    EXPECT(mailq_set_concurrency_limit(q, "ops.example", 0), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_set_concurrency_limit(q, "ops.example", 2), MAILQ_OK);
    EXPECT(mailq_set_rate_limit(q, "ops.example", 0, 600, 0, 0), MAILQ_OK);
    EXPECT(mailq_set_rate_limit(q, "ops.example", 0, 0, 0, 0), MAILQ_OK); /* removed */
    EXPECT(mailq_set_rate_limit(q, NULL, 1, 0, 0, 0), MAILQ_ERR_NULL);
    EXPECT(mailq_add_reply_rule(q, "\\[TSS04\\]", MAILQ_RULE_SUSPEND, 600), MAILQ_OK);
    EXPECT(mailq_add_reply_rule(q, "^452 4\\.2\\.2", MAILQ_RULE_PERMANENT, 0), MAILQ_OK);
    EXPECT(mailq_add_reply_rule(q, "([unclosed", MAILQ_RULE_PERMANENT, 0), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_add_reply_rule(q, "x", MAILQ_RULE_SUSPEND, 0), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_add_reply_rule(q, "x", 9, 1), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_add_reply_throttle(q, "Server busy", 300, 1, 0, 3, 0, 0), MAILQ_OK);
    EXPECT(mailq_add_reply_throttle(q, "x", 300, 0, 0, 0, 0, 0), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_add_reply_throttle(q, NULL, 300, 1, 0, 0, 0, 0), MAILQ_ERR_NULL);
    EXPECT(mailq_add_reply_rule(q, NULL, MAILQ_RULE_PERMANENT, 0), MAILQ_ERR_NULL);
    EXPECT(mailq_clear_reply_rules(q), MAILQ_OK);
    EXPECT(mailq_clear_reply_rules(NULL), MAILQ_ERR_INVALID_HANDLE);
    EXPECT(mailq_set_rate_limit(q, "bad key\001", 1, 0, 0, 0), MAILQ_ERR_INVALID_ROUTE);
    EXPECT(mailq_reroute(q, "ops.example", "[192.0.2.7]", &changed), MAILQ_OK);
    CHECK(changed == 2);
    EXPECT(mailq_reroute(q, NULL, "x", &changed), MAILQ_ERR_NULL);
    EXPECT(mailq_reroute_recipient(q, b, 0, "ops.example"), MAILQ_OK);
    EXPECT(mailq_reroute_recipient(q, b, 0, "ops.example"), MAILQ_ERR_NOT_FOUND);
    EXPECT(mailq_reroute_recipient(q, b, 7, "x.example"), MAILQ_ERR_NOT_FOUND);
    walked = 0;
    EXPECT(mailq_walk(q, walk_cb, NULL), MAILQ_OK);
    CHECK(walked == 2);
    EXPECT(mailq_walk(q, NULL, NULL), MAILQ_ERR_NULL);
    buckets_seen = 0;
    EXPECT(mailq_walk_buckets(q, bucket_cb, NULL), MAILQ_OK);
    CHECK(buckets_seen == 2);
    EXPECT(mailq_walk_buckets(q, NULL, NULL), MAILQ_ERR_NULL);
    size_t bad = 9;
    EXPECT(mailq_verify(q, &bad), MAILQ_OK);
    CHECK(bad == 0);
    EXPECT(mailq_delete(q, a, &changed), MAILQ_OK);
    CHECK(changed == 1);
    EXPECT(mailq_delete(q, a, &changed), MAILQ_ERR_NOT_FOUND);
    EXPECT(mailq_delete(q, b, NULL), MAILQ_OK);

    char *text = NULL;
    size_t len = 0;
    EXPECT(mailq_prometheus(q, &text, &len), MAILQ_OK);
    CHECK(text && len == strlen(text) && strstr(text, "mailq_recipients{state=\"ready\"}"));
    mailq_string_free(text);
    mailq_string_free(NULL);
    EXPECT(mailq_prometheus(q, NULL, &len), MAILQ_ERR_NULL);

    mailq_stats st;
    st.size = 0;
    EXPECT(mailq_stats_get(q, &st), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_stats_get(q, NULL), MAILQ_ERR_NULL);
    /* An older caller with a smaller stats struct gets only what fits. */
    struct { uint32_t size; uint32_t poisoned; uint64_t messages; uint64_t canary; } small;
    small.size = 16;
    small.canary = 0xdeadbeef;
    EXPECT(mailq_stats_get(q, (mailq_stats *)&small), MAILQ_OK);
    CHECK(small.canary == 0xdeadbeef && small.messages == 0);
    EXPECT(mailq_sync(q), MAILQ_OK);
    EXPECT(mailq_checkpoint(q), MAILQ_OK);
}

static void test_poll(mailq *q) {
    int fd = mailq_poll_fd(q);
    CHECK(fd >= 0);
    CHECK(mailq_poll_fd(NULL) == -1);
    EXPECT(mailq_ack_poll(q), MAILQ_OK);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK(poll(&p, 1, 0) == 0);
    enqueue1(q, "p@poll.example", "x");
    CHECK(poll(&p, 1, 0) == 1);
    EXPECT(mailq_ack_poll(q), MAILQ_OK);
    uint64_t when = 1;
    EXPECT(mailq_next_wakeup(q, &when), MAILQ_OK);
    EXPECT(mailq_next_wakeup(q, NULL), MAILQ_ERR_NULL);
    int64_t ms = -2;
    EXPECT(mailq_next_timeout(q, &ms), MAILQ_OK);
    CHECK(ms == 0); /* ready work: due now */
    EXPECT(mailq_next_timeout(q, NULL), MAILQ_ERR_NULL);
    int ready = -1;
    EXPECT(mailq_tick(q, &ready), MAILQ_OK);
    CHECK(ready == 1);
    EXPECT(mailq_tick(q, NULL), MAILQ_OK);
    EXPECT(mailq_ack_poll(NULL), MAILQ_ERR_INVALID_HANDLE);
}

/* Sends one request to the admin socket; the caller serves it. Returns the fd. */
static int admin_request(const char *path, const char *req) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    CHECK(connect(s, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(write(s, req, strlen(req)) == (ssize_t)strlen(req));
    return s;
}

static void read_all(int s, char *buf, size_t cap) {
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(s, buf + n, cap - 1 - n)) > 0) n += (size_t)r;
    buf[n] = 0;
    close(s);
}

static void test_admin(mailq *q) {
    char path[300];
    snprintf(path, sizeof path, "%s/admin.sock", dir);
    mailq_admin *a = NULL;
    EXPECT(mailq_admin_open(NULL, NULL, NULL, NULL, &a), MAILQ_ERR_INVALID_HANDLE);
    EXPECT(mailq_admin_open(q, NULL, "not an address", NULL, &a), MAILQ_ERR_INVALID_ARGUMENT);
    CHECK(a == NULL);
    EXPECT(mailq_admin_open(q, NULL, NULL, NULL, &a), MAILQ_OK);
    CHECK(a != NULL);
    CHECK(access(path, F_OK) == 0);
    /* Served from this loop: poll the fd, then serve what is ready. */
    int fd = mailq_admin_fd(a);
    CHECK(fd >= 0);
    int s = admin_request(path, "GET /v1/stats HTTP/1.1\r\n\r\n");
    size_t answered = 0;
    for (int i = 0; i < 50 && answered == 0; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        CHECK(poll(&p, 1, 1000) >= 0);
        EXPECT(mailq_admin_serve_ready(a, &answered), MAILQ_OK);
    }
    CHECK(answered == 1);
    char buf[8192];
    read_all(s, buf, sizeof buf);
    CHECK(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    CHECK(strstr(buf, "\"messages\"") != NULL);
    EXPECT(mailq_admin_serve_ready(a, NULL), MAILQ_OK);
    /* Moved to its own thread: requests are answered without us. */
    EXPECT(mailq_admin_spawn_thread(a), MAILQ_OK);
    EXPECT(mailq_admin_spawn_thread(a), MAILQ_OK);
    CHECK(mailq_admin_fd(a) == -1);
    s = admin_request(path, "GET /nowhere HTTP/1.1\r\n\r\n");
    read_all(s, buf, sizeof buf);
    CHECK(strncmp(buf, "HTTP/1.1 404", 12) == 0);
    EXPECT(mailq_admin_free(a), MAILQ_OK);
    CHECK(access(path, F_OK) != 0);
    EXPECT(mailq_admin_free(a), MAILQ_ERR_INVALID_HANDLE);
    CHECK(mailq_admin_fd(NULL) == -1);
    EXPECT(mailq_admin_serve_ready(NULL, NULL), MAILQ_ERR_INVALID_HANDLE);
}

/* Backpressure: over the queued-recipients limit, enqueue refuses with
 * MAILQ_ERR_TRY_LATER (answer 452 4.3.1) and queues nothing. */
static void test_backpressure(void) {
    char d[sizeof dir + 8];
    snprintf(d, sizeof d, "%s/bp", dir);
    mailq_options o;
    EXPECT(mailq_options_init(&o, sizeof o), MAILQ_OK);
    CHECK(o.max_queued_recipients == 0 && o.min_free_disk == 128u << 20);
    o.max_queued_recipients = 1;
    mailq *q = NULL;
    EXPECT(mailq_open(d, &o, &q), MAILQ_OK);
    enqueue1(q, "a@example.com", "first");
    const char *r[1] = {"b@example.com"};
    uint64_t id = 0;
    EXPECT(mailq_enqueue(q, "s@example.org", r, NULL, 1, NULL, 0, (const uint8_t *)"x", 1, &id),
           MAILQ_ERR_TRY_LATER);
    CHECK(strstr(mailq_last_error_message(), "452 4.3.1") != NULL);
    CHECK(strstr(mailq_strerror(MAILQ_ERR_TRY_LATER), "try later") != NULL);
    /* A DSN is not refused: its bounce's acknowledgement frees a recipient. */
    mailq_message *dsn = NULL;
    EXPECT(mailq_message_begin_dsn(q, &dsn), MAILQ_OK);
    EXPECT(mailq_message_add_recipient(dsn, "s@example.org", NULL), MAILQ_OK);
    EXPECT(mailq_message_append(dsn, (const uint8_t *)"report", 6), MAILQ_OK);
    EXPECT(mailq_message_commit(dsn, &id), MAILQ_OK);
    mailq_stats st;
    st.size = sizeof st;
    EXPECT(mailq_stats_get(q, &st), MAILQ_OK);
    CHECK(st.messages == 2);
    EXPECT(mailq_close(q), MAILQ_OK);
    rmrf(d);
}

static int delayed_seen;
static uint64_t delayed_id;
static void delayed_cb(void *u, const mailq_bounce *b) {
    (void)u;
    delayed_seen++;
    delayed_id = b->id;
    CHECK(b->delayed == 1 && b->expired == 0);
    CHECK(strcmp(b->recipient, "w@slow.example") == 0);
}
static int slow_suspended, slow_limit;
static int slow_cb(void *u, const mailq_bucket_stats *b) {
    (void)u;
    if (strcmp(b->key, "slow.example") == 0) {
        slow_suspended = (int)b->suspended;
        slow_limit = (int)b->limit;
    }
    return 1;
}

/* A delay warning comes through mailq_take_bounces with `delayed` set and is
 * acknowledged once; suspensions and limits survive a reopen. */
static void test_warnings_and_settings(void) {
    char d[sizeof dir + 8];
    snprintf(d, sizeof d, "%s/dw", dir);
    mailq_options o;
    EXPECT(mailq_options_init(&o, sizeof o), MAILQ_OK);
    CHECK(o.delay_warning_secs == 0);
    o.delay_warning_secs = 1;
    mailq *q = NULL;
    EXPECT(mailq_open(d, &o, &q), MAILQ_OK);
    EXPECT(mailq_suspend(q, "slow.example"), MAILQ_OK);
    EXPECT(mailq_set_concurrency_limit(q, "slow.example", 3), MAILQ_OK);
    uint64_t id = enqueue1(q, "w@slow.example", "late");
    struct timespec ts = {1, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    int ready = 0;
    EXPECT(mailq_tick(q, &ready), MAILQ_OK);
    size_t count = 0;
    EXPECT(mailq_take_bounces(q, 10, delayed_cb, NULL, &count), MAILQ_OK);
    CHECK(count == 1 && delayed_seen == 1 && delayed_id == id);
    EXPECT(mailq_ack_bounce(q, id, 0), MAILQ_ERR_NOT_FOUND); /* not a bounce */
    EXPECT(mailq_ack_delay_warning(q, id, 0), MAILQ_OK);
    EXPECT(mailq_ack_delay_warning(q, id, 0), MAILQ_ERR_NOT_FOUND);
    EXPECT(mailq_ack_delay_warning(NULL, id, 0), MAILQ_ERR_INVALID_HANDLE);
    EXPECT(mailq_close(q), MAILQ_OK);
    EXPECT(mailq_open(d, &o, &q), MAILQ_OK);
    EXPECT(mailq_walk_buckets(q, slow_cb, NULL), MAILQ_OK);
    CHECK(slow_suspended == 1 && slow_limit == 3);
    EXPECT(mailq_tick(q, &ready), MAILQ_OK);
    EXPECT(mailq_take_bounces(q, 10, delayed_cb, NULL, &count), MAILQ_OK);
    CHECK(count == 0 && delayed_seen == 1); /* warned once */
    EXPECT(mailq_close(q), MAILQ_OK);
    o.delay_warning_secs = o.lifetime_secs; /* not below the lifetime */
    EXPECT(mailq_open(d, &o, &q), MAILQ_ERR_INVALID_ARGUMENT);
    rmrf(d);
}

/* Egress sources: a pool, per-source limits, a warm-up cap; the session
 * reports its source. */
static void test_sources(mailq *q) {
    const char *pool[2] = {"ip-1", "ip-2"};
    EXPECT(mailq_set_sources(q, "src.example", pool, 2), MAILQ_OK);
    EXPECT(mailq_set_source_limits(q, "src.example", 1, 0, 0, 0, 0), MAILQ_OK);
    uint32_t days[2] = {1, 2}, caps[2] = {1, 10};
    EXPECT(mailq_set_warmup(q, "ip-2", days, caps, 2), MAILQ_OK);
    for (int i = 0; i < 3; i++) enqueue1(q, "x@src.example", "src");
    mailq_session *s1 = NULL, *s2 = NULL, *s3 = NULL;
    EXPECT(mailq_session_for(q, "src.example", &s1), MAILQ_OK);
    EXPECT(mailq_session_for(q, "src.example", &s2), MAILQ_OK);
    CHECK(s1 != NULL && s2 != NULL);
    const char *a = mailq_session_source(s1), *b = mailq_session_source(s2);
    CHECK(a && b && strcmp(a, b) != 0); /* spread: one session per source */
    EXPECT(mailq_session_for(q, "src.example", &s3), MAILQ_OK);
    CHECK(s3 == NULL); /* each source at its limit of one session */
    /* ip-2 may send one message today. */
    mailq_session *warm = strcmp(a, "ip-2") == 0 ? s1 : s2;
    mailq_delivery *d = NULL;
    EXPECT(mailq_session_next_delivery(warm, &d), MAILQ_OK);
    CHECK(d != NULL);
    EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_DELIVERED, NULL, 0), MAILQ_OK);
    EXPECT(mailq_delivery_complete(d), MAILQ_OK);
    EXPECT(mailq_session_next_delivery(warm, &d), MAILQ_OK);
    CHECK(d == NULL); /* its day is used up */
    mailq_session_free(s1);
    mailq_session_free(s2);
    CHECK(mailq_session_source(NULL) == NULL);
    EXPECT(mailq_set_sources(q, NULL, NULL, 0), MAILQ_OK); /* empty default pool */
    const char *bad[1] = {"has space"};
    EXPECT(mailq_set_sources(q, NULL, bad, 1), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_set_sources(q, NULL, NULL, 1), MAILQ_ERR_NULL);
    uint32_t down[2] = {2, 1};
    EXPECT(mailq_set_warmup(q, "ip-2", down, caps, 2), MAILQ_ERR_INVALID_ARGUMENT);
    EXPECT(mailq_set_warmup(q, "ip-2", NULL, caps, 2), MAILQ_ERR_NULL);
    EXPECT(mailq_set_source_limits(q, NULL, 1, 0, 0, 0, 0), MAILQ_ERR_NULL);
    EXPECT(mailq_set_sources(NULL, NULL, NULL, 0), MAILQ_ERR_INVALID_HANDLE);
    /* The pool goes: sessions have no source any more. */
    EXPECT(mailq_set_sources(q, "src.example", NULL, 0), MAILQ_OK);
    EXPECT(mailq_session_for(q, "src.example", &s3), MAILQ_OK);
    CHECK(s3 != NULL && mailq_session_source(s3) == NULL);
    while (1) {
        EXPECT(mailq_session_next_delivery(s3, &d), MAILQ_OK);
        if (!d) break;
        EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_DELIVERED, NULL, 0), MAILQ_OK);
        EXPECT(mailq_delivery_complete(d), MAILQ_OK);
    }
    mailq_session_free(s3);

    /* A reply rule that suspends the session's source only: the other
       source of the pool goes on. */
    EXPECT(mailq_add_reply_rule(q, "\\[TSS04\\]", MAILQ_RULE_SUSPEND_SOURCE, 600), MAILQ_OK);
    EXPECT(mailq_add_reply_rule(q, "x", MAILQ_RULE_SUSPEND_SOURCE, 0), MAILQ_ERR_INVALID_ARGUMENT);
    const char *pair[2] = {"ip-3", "ip-4"};
    EXPECT(mailq_set_sources(q, "rule.example", pair, 2), MAILQ_OK);
    EXPECT(mailq_set_source_limits(q, "rule.example", 1, 0, 0, 0, 0), MAILQ_OK);
    uint64_t ids[3];
    for (int i = 0; i < 3; i++) ids[i] = enqueue1(q, "x@rule.example", "rule");
    EXPECT(mailq_session_for(q, "rule.example", &s1), MAILQ_OK);
    CHECK(s1 != NULL);
    char first[8] = "";
    snprintf(first, sizeof first, "%s", mailq_session_source(s1) ? mailq_session_source(s1) : "");
    EXPECT(mailq_session_next_delivery(s1, &d), MAILQ_OK);
    CHECK(d != NULL);
    const char *tss04 = "421 4.7.0 [TSS04] Messages temporarily deferred 5b1f0bcb4fasm2218311a12 - gsmtp";
    EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_TEMPFAIL, tss04, 0), MAILQ_OK);
    EXPECT(mailq_delivery_complete(d), MAILQ_OK);
    EXPECT(mailq_session_next_delivery(s1, &d), MAILQ_OK);
    CHECK(d == NULL); /* its path is suspended */
    mailq_session_free(s1);
    EXPECT(mailq_session_for(q, "rule.example", &s2), MAILQ_OK);
    CHECK(s2 != NULL && mailq_session_source(s2) && strcmp(mailq_session_source(s2), first) != 0);
    int sent = 0;
    while (s2) {
        EXPECT(mailq_session_next_delivery(s2, &d), MAILQ_OK);
        if (!d) break;
        EXPECT(mailq_delivery_set_outcome(d, 0, MAILQ_DELIVERED, NULL, 0), MAILQ_OK);
        EXPECT(mailq_delivery_complete(d), MAILQ_OK);
        sent++;
    }
    CHECK(sent == 2);
    mailq_session_free(s2);
    EXPECT(mailq_session_for(q, "rule.example", &s3), MAILQ_OK);
    CHECK(s3 == NULL); /* only the deferred one is left, and its source is out */
    EXPECT(mailq_clear_reply_rules(q), MAILQ_OK);
    size_t gone = 0, changed = 0;
    for (int i = 0; i < 3; i++)
        if (mailq_delete(q, ids[i], &changed) == MAILQ_OK) gone += changed;
    CHECK(gone == 1); /* the deferred one; the rest were delivered */
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/mailq-ctest-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_library();
    test_open_errors();
    test_backpressure();
    test_warnings_and_settings();
    mailq *q = open_queue();
    test_enqueue_errors(q);
    test_streaming(q);
    test_delivery_paths(q);
    test_body_fd_ownership(q);
    test_bounces(q);
    test_operator(q);
    test_poll(q);
    test_admin(q);
    test_sources(q);
    EXPECT(mailq_close(q), MAILQ_OK);
    /* Reopen: the poll test's message survived. */
    q = open_queue();
    mailq_stats st;
    st.size = sizeof st;
    EXPECT(mailq_stats_get(q, &st), MAILQ_OK);
    CHECK(st.messages == 1 && st.ready == 1);
    mailq_free(q);
    rmrf(dir);
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
