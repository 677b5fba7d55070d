/* A small queue manager in the shape of a C MTA, on top of libmailq:
 * accept a batch of messages (one-call and streaming enqueue), then run a
 * delivery loop driven by the pollable fd and the next wake-up time, with
 * simulated SMTP outcomes, DSN handling, and final stats.
 *
 *   make && ./mta [queue-dir]
 */
#define _GNU_SOURCE
#include <mailq.h>

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DIE(what, st)                                                                  \
    do {                                                                               \
        fprintf(stderr, "%s: %s (%s)\n", what, mailq_strerror(st), mailq_last_error_message()); \
        exit(1);                                                                       \
    } while (0)

static unsigned seed = 12345;
static int rnd(int n) { return (int)(rand_r(&seed) % (unsigned)n); }

static int dsns;
static void on_bounce(void *userdata, const mailq_bounce *b) {
    mailq *q = userdata;
    /* A real MTA would enqueue a DSN to b->sender here (unless it is the null sender). */
    if (dsns < 3)
        printf("  DSN to <%s>: %s %s: %s\n", b->sender, b->recipient, b->expired ? "expired" : "failed", b->reason);
    dsns++;
    mailq_status st = mailq_ack_bounce(q, b->id, b->index);
    if (st != MAILQ_OK) DIE("ack_bounce", st);
}

static int print_bucket(void *userdata, const mailq_bucket_stats *b) {
    int *left = userdata;
    printf("  %-22s ready %4llu deferred %4llu inflight %3llu sessions %2llu window %2llu%s\n", b->key,
           (unsigned long long)b->ready, (unsigned long long)b->deferred, (unsigned long long)b->inflight,
           (unsigned long long)b->sessions, (unsigned long long)b->window, b->dead_until ? "  (dead)" : "");
    return --*left > 0;
}

int main(int argc, char **argv) {
    char tmp[] = "/tmp/mailq-c-example-XXXXXX";
    const char *dir = argc > 1 ? argv[1] : mkdtemp(tmp);
    if (!dir) return 1;

    mailq_options o;
    mailq_options_init(&o, sizeof o);
    o.min_backoff_secs = 1; /* compressed time so retries happen during the demo */
    o.max_backoff_secs = 2;
    mailq *q;
    mailq_status st = mailq_open(dir, &o, &q);
    if (st != MAILQ_OK) DIE("open", st);
    printf("mailq %s, queue in %s\n", mailq_version(), dir);

    /* Accept 2000 messages for 40 domains; every tenth arrives through the streaming API. */
    char addr[3][64], body[1024];
    memset(body, 'x', sizeof body);
    for (int i = 0; i < 2000; i++) {
        int n = 1 + rnd(3);
        const char *rcpts[3];
        for (int k = 0; k < n; k++) {
            int dom = rnd(3) ? 0 : 1 + rnd(39);
            snprintf(addr[k], sizeof addr[k], "user%d.%d@%s%d.example", i, k, dom ? "d" : "big", dom);
            rcpts[k] = addr[k];
        }
        uint64_t id;
        if (i % 10 == 0) {
            mailq_message *m;
            if ((st = mailq_message_begin(q, "list@sender.example", &m)) != MAILQ_OK) DIE("begin", st);
            for (int k = 0; k < n; k++)
                if ((st = mailq_message_add_recipient(m, rcpts[k], NULL)) != MAILQ_OK) DIE("rcpt", st);
            for (int c = 0; c < 4; c++)
                if ((st = mailq_message_append(m, (const uint8_t *)body, 256)) != MAILQ_OK) DIE("append", st);
            st = mailq_message_commit(m, &id);
        } else {
            st = mailq_enqueue(q, "list@sender.example", rcpts, NULL, (size_t)n, NULL, 0, (const uint8_t *)body,
                               sizeof body, &id);
        }
        if (st != MAILQ_OK) DIE("enqueue", st);
    }
    printf("accepted 2000 messages (each durable before the call returned)\n");

    /* The delivery loop: wait on the fd, or until the next scheduled wake-up. */
    int fd = mailq_poll_fd(q);
    time_t start = time(NULL);
    long deliveries = 0, site_failures = 0;
    while (time(NULL) - start < 5) {
        uint64_t when;
        mailq_next_wakeup(q, &when);
        long timeout = 1000;
        if (when) {
            long ms = ((long)when - (long)time(NULL)) * 1000;
            timeout = ms < 0 ? 0 : (ms < 1000 ? ms : 1000);
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, (int)timeout);
        mailq_ack_poll(q);
        mailq_tick(q, NULL);

        mailq_session *s;
        while ((st = mailq_next_session(q, &s)) == MAILQ_OK && s) {
            const char *key = mailq_session_routing_key(s);
            if (strcmp(key, "d13.example") == 0) { /* this destination is down */
                mailq_session_site_failure(s, "connect to d13.example: Connection refused");
                site_failures++;
                continue;
            }
            mailq_delivery *d;
            while (mailq_session_next_delivery(s, &d) == MAILQ_OK && d) {
                const uint8_t *data;
                size_t len;
                mailq_delivery_body(d, &data, &len); /* would be written to the SMTP socket */
                for (size_t i = 0; i < mailq_delivery_recipient_count(d); i++) {
                    int r = rnd(100);
                    if (r < 90)
                        mailq_delivery_set_outcome(d, i, MAILQ_DELIVERED, NULL, 0);
                    else if (r < 98)
                        mailq_delivery_set_outcome(d, i, MAILQ_TEMPFAIL, "451 4.7.1 Greylisted", 0);
                    else
                        mailq_delivery_set_outcome(d, i, MAILQ_PERMFAIL, "550 5.1.1 User unknown", 0);
                }
                if ((st = mailq_delivery_complete(d)) != MAILQ_OK) DIE("complete", st);
                deliveries++;
            }
            mailq_session_free(s);
        }
        if (st != MAILQ_OK) DIE("next_session", st);
        if ((st = mailq_take_bounces(q, 1000, on_bounce, q, NULL)) != MAILQ_OK) DIE("bounces", st);
    }

    mailq_stats stats;
    stats.size = sizeof stats;
    mailq_stats_get(q, &stats);
    printf("\n%ld deliveries, %ld site failures, %d DSNs; delivered %llu recipients, %llu temporary failures\n",
           deliveries, site_failures, dsns, (unsigned long long)stats.delivered,
           (unsigned long long)stats.deferred_total);
    printf("still queued: %llu messages (ready %llu, deferred %llu); %llu fsyncs for %llu messages\n",
           (unsigned long long)stats.messages, (unsigned long long)stats.ready, (unsigned long long)stats.deferred,
           (unsigned long long)stats.fsyncs, (unsigned long long)stats.accepted);
    int left = 5;
    printf("deepest destinations:\n");
    mailq_walk_buckets(q, print_bucket, &left);
    if ((st = mailq_close(q)) != MAILQ_OK) DIE("close", st);
    if (argc <= 1) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) return 1;
    }
    return 0;
}
