#define _GNU_SOURCE
#include "CLMDBGuard.h"
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stddef.h>

static __thread sigjmp_buf *recovery;
/* A write transaction a guarded call jumped out of: its pages may be half updated, so it may
   only be aborted. */
static __thread MDB_txn *poisoned;

static void on_assert(MDB_env *env, const char *message) {
    (void)env;
    (void)message;
    if (recovery) siglongjmp(*recovery, 1);
    /* Outside a guarded call LMDB goes on to abort, as it would without this callback. */
}

/*
 * A damaged page can also send LMDB through a wild pointer (SIGSEGV) or past the end of the
 * file (SIGBUS). Inside a guarded call the fault jumps back like an assertion; anywhere else
 * it goes to the handler that was installed before, or kills the process as it would have.
 */
static struct sigaction previous_segv, previous_bus;

static void on_fault(int signal_number, siginfo_t *info, void *context) {
    /* Only faults the call itself raised (si_code > 0), not signals sent by another process. */
    if (recovery && info && info->si_code > 0) {
        sigset_t unblock;
        sigemptyset(&unblock);
        sigaddset(&unblock, signal_number);
        pthread_sigmask(SIG_UNBLOCK, &unblock, NULL);  /* the jump skips the handler's return */
        siglongjmp(*recovery, 2);
    }
    struct sigaction *previous = signal_number == SIGBUS ? &previous_bus : &previous_segv;
    if (previous->sa_flags & SA_SIGINFO) {
        previous->sa_sigaction(signal_number, info, context);
    } else if (previous->sa_handler != SIG_DFL && previous->sa_handler != SIG_IGN) {
        previous->sa_handler(signal_number);
    } else {
        signal(signal_number, SIG_DFL);
        raise(signal_number);
    }
}

static void install_fault_handlers(void) {
    struct sigaction action;
    action.sa_sigaction = on_fault;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &action, &previous_segv);
    sigaction(SIGBUS, &action, &previous_bus);
}

static pthread_once_t fault_handlers_once = PTHREAD_ONCE_INIT;

int clmdb_install_assert(MDB_env *env) {
    pthread_once(&fault_handlers_once, install_fault_handlers);
    return mdb_env_set_assert(env, on_assert);
}

/* `outer` is not modified between sigsetjmp and a jump back, so it keeps its value. After a
   jump the transaction `txn` (NULL for none) is marked: committing it is refused. */
#define GUARDED_TXN(txn, call)                 \
    sigjmp_buf here;                           \
    sigjmp_buf *outer = recovery;              \
    if (sigsetjmp(here, 0)) {                  \
        recovery = outer;                      \
        poisoned = (txn);                      \
        return MDB_CORRUPTED;                  \
    }                                          \
    recovery = &here;                          \
    int rc = (call);                           \
    recovery = outer;                          \
    return rc;
#define GUARDED(call) GUARDED_TXN(NULL, call)

int clmdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data) { GUARDED(mdb_get(txn, dbi, key, data)) }
int clmdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, unsigned int flags) {
    GUARDED_TXN(txn, mdb_put(txn, dbi, key, data, flags))
}
int clmdb_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data) { GUARDED_TXN(txn, mdb_del(txn, dbi, key, data)) }
int clmdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, MDB_cursor_op op) {
    GUARDED(mdb_cursor_get(cursor, key, data, op))
}
int clmdb_cursor_put(MDB_cursor *cursor, MDB_val *key, MDB_val *data, unsigned int flags) {
    GUARDED_TXN(mdb_cursor_txn(cursor), mdb_cursor_put(cursor, key, data, flags))
}
int clmdb_cursor_del(MDB_cursor *cursor, unsigned int flags) { GUARDED_TXN(mdb_cursor_txn(cursor), mdb_cursor_del(cursor, flags)) }
int clmdb_dbi_open(MDB_txn *txn, const char *name, unsigned int flags, MDB_dbi *dbi) {
    GUARDED(mdb_dbi_open(txn, name, flags, dbi))
}
int clmdb_stat(MDB_txn *txn, MDB_dbi dbi, MDB_stat *stat) { GUARDED(mdb_stat(txn, dbi, stat)) }
int clmdb_drop(MDB_txn *txn, MDB_dbi dbi, int del) { GUARDED_TXN(txn, mdb_drop(txn, dbi, del)) }

/* A commit LMDB would end itself: on success or on its own error it frees the transaction.
   A poisoned transaction, or one a fault jumped out of mid-commit, is aborted here instead,
   which also releases the writer lock (other writers would otherwise wait for ever). */
int clmdb_txn_commit(MDB_txn *txn) {
    if (txn == poisoned) {
        poisoned = NULL;
        mdb_txn_abort(txn);
        return MDB_CORRUPTED;
    }
    sigjmp_buf here;
    sigjmp_buf *outer = recovery;
    if (sigsetjmp(here, 0)) {
        recovery = outer;
        mdb_txn_abort(txn);
        return MDB_CORRUPTED;
    }
    recovery = &here;
    int rc = mdb_txn_commit(txn);
    recovery = outer;
    return rc;
}

void clmdb_txn_ended(MDB_txn *txn) {
    if (txn == poisoned) poisoned = NULL;
}
