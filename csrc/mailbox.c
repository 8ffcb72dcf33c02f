/* Mailbox words for the pool's same-machine transport (cxlsim/pool/mailbox.py).
 *
 * A host and the pool server share a window (a file both map). One side posts a message by
 * writing it, then its length, then its sequence number; the other side watches the sequence
 * number. Either side may go to sleep on its socket after first raising its "sleeping" word, and
 * a poster rings the socket only when it finds that word raised. Every access here is
 * sequentially consistent, so "post, then read the peer's sleeping word" and "raise my sleeping
 * word, then read the sequence number" cannot both miss: no wake-up is lost. Python cannot order
 * memory accesses itself, hence these few functions in C. */
#include <time.h>
#include "internal.h"

uint64_t cxl_mbox_load(const uint64_t *word)
{
    return __atomic_load_n(word, __ATOMIC_SEQ_CST);
}

void cxl_mbox_store(uint64_t *word, uint64_t value)
{
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
}

uint64_t cxl_mbox_post(uint64_t *len_word, uint64_t len, uint64_t *seq_word, uint64_t seq,
                       const uint64_t *peer_sleeping)
{
    __atomic_store_n(len_word, len, __ATOMIC_SEQ_CST);
    __atomic_store_n(seq_word, seq, __ATOMIC_SEQ_CST);
    return __atomic_load_n(peer_sleeping, __ATOMIC_SEQ_CST);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int seen(const uint64_t *word, uint64_t value, int at_least)
{
    uint64_t now = __atomic_load_n(word, __ATOMIC_SEQ_CST);
    return at_least ? now >= value : now == value;
}

static int wait_for(const uint64_t *word, uint64_t value, double spin_s, int at_least)
{
    if (seen(word, value, at_least))
        return 1;
    if (!(spin_s > 0))
        return 0;
    double until = now_s() + spin_s;
    for (;;) {
        for (int i = 0; i < 64; i++) {     /* the clock is read once per 64 looks */
            if (seen(word, value, at_least))
                return 1;
            relax();
        }
        if (now_s() >= until)
            return 0;
    }
}

int cxl_mbox_wait(const uint64_t *word, uint64_t value, double spin_s)
{
    return wait_for(word, value, spin_s, 0);
}

int cxl_mbox_wait_reach(const uint64_t *word, uint64_t value, double spin_s)
{
    return wait_for(word, value, spin_s, 1);
}

int64_t cxl_mbox_changed(uint64_t *const *words, const uint64_t *seen, int64_t from, int64_t n)
{
    for (int64_t i = from; i < n; i++)
        if (__atomic_load_n(words[i], __ATOMIC_SEQ_CST) != seen[i])
            return i;
    return -1;
}
